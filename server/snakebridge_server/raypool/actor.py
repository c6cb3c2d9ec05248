"""The Ray side of a Ray pool's worker: an actor that runs the worker runtime as its child
and moves the bytes of its channel.

Runs in a Ray worker process, on the node Ray placed the actor on. Nothing here imports
``ray``: the server wraps ``WorkerActor`` with ``ray.remote`` (``runtime.actor_class``).

The child is ``python -m snakebridge_server.worker``, the runtime a worker process runs,
with its sandbox applied by itself as always; only the uid switch is skipped (the node's
uids belong to Ray, not to this server). It dies with the actor (``PR_SET_PDEATHSIG``),
even in the middle of a call. The server moves frames with ``send`` (one batch of request
bytes at a time, in order) and ``recv`` (a long poll for reply bytes; ``b""`` once the
child has exited); ``interrupt`` is the process pool's CANCEL plus ``SIGUSR1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import replace
from typing import Any, Final

from ..channel import CANCEL
from ..sandbox import SandboxSpec
from ..sandbox.spawn import worker_env
from ..supervisor.spawn import WORKER_MODULE

#: Most bytes one ``recv`` returns: a batch of replies, bounded.
RELAY_CHUNK: Final = 1 << 20

#: Run as ``python -c``: die with the parent (the actor), then run the worker module.
_EXEC_WORKER: Final = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"  # PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv.pop(1)): os._exit(1)\n"  # the actor died already
    f"runpy.run_module({WORKER_MODULE!r}, run_name='__main__', alter_sys=True)\n"
)

UID_NOTE: Final = "uid: not switched (a Ray actor's node and uids are Ray's)"


def child_argv(python: str, parent: int, fd: int, ctrl_fd: int, tail: list[str]) -> list[str]:
    """The worker child's command line: ``tail`` is the server's ``worker_argv`` after the
    fds (``handle.worker_tail``)."""
    return [python, "-c", _EXEC_WORKER, str(parent), f"--fd={fd}", f"--ctrl-fd={ctrl_fd}", *tail]


class WorkerActor:
    """One worker of a Ray pool, as a Ray (async) actor: see the module docstring."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ctrl: socket.socket | None = None
        self._scratch = ""

    async def start(
        self, tail: list[str], sandbox_json: str, env: list[list[str]]
    ) -> dict[str, Any]:
        """Start the worker child; answers where it runs (node, host, pids)."""
        spec = SandboxSpec.from_json(sandbox_json)
        if spec.level != "none":
            self._scratch = tempfile.mkdtemp(prefix="snakebridge-ray-")
        spec = replace(spec, scratch=self._scratch, uid=0, notes=(*spec.notes, UID_NOTE))
        child_env = worker_env(
            os.environ,
            level=spec.level,
            scratch=self._scratch,
            extra={name: value for name, value in env},
        )
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ctrl, ctrl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = child_argv(
                sys.executable,
                os.getpid(),
                child.fileno(),
                ctrl_child.fileno(),
                [*tail, f"--sandbox={spec.to_json()}"],
            )
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(child.fileno(), ctrl_child.fileno()),
                start_new_session=True,
                env=child_env,
                cwd=self._scratch or None,
            )
        finally:
            child.close()
            ctrl_child.close()
        ctrl.setblocking(False)
        self._ctrl = ctrl
        self._reader, self._writer = await asyncio.open_unix_connection(
            sock=parent, limit=RELAY_CHUNK
        )
        return {
            "node_id": _node_id(),
            "host": socket.gethostname(),
            "actor_pid": os.getpid(),
            "pid": self._proc.pid,
        }

    async def send(self, data: bytes) -> bool:
        """Write request bytes to the worker; False once its channel is gone."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        writer.write(data)
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def recv(self) -> bytes:
        """The next reply bytes from the worker (a long poll); ``b""`` once it exited."""
        if self._reader is None:
            return b""
        try:
            data = await self._reader.read(RELAY_CHUNK)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            await self._reap()
        return data

    async def interrupt(self, call_id: int) -> None:
        """Stop ``call_id``: skipped if queued, interrupted if running (as a process pool)."""
        proc = self._proc
        if self._ctrl is None or proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(OSError):
            self._ctrl.send(CANCEL.pack(call_id))
            os.kill(proc.pid, signal.SIGUSR1)

    async def close(self) -> None:
        """EOF on the worker's channel: it finishes its call and exits."""
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(OSError):
                self._writer.write_eof()

    async def _reap(self) -> None:
        proc = self._proc
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await proc.wait()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = ""


def _node_id() -> str:
    try:
        import ray  # only inside a Ray worker, where it is installed

        # Outside a Ray worker, get_runtime_context() would start a Ray runtime.
        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""
    except Exception:  # not in Ray (a unit test): no node id to report
        return ""
