"""Starting a worker child: its command line, and the probe that checks an interpreter
can run the worker runtime of this server's version.

Runs in the server process. The child is ``python -m snakebridge_server.worker`` (see
``snakebridge_server.worker.main.WorkerArgs`` for the other end of the argv).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Final

from snakebridge import __version__

from ..refids import WorkerKey
from ..sandbox import SandboxSpec

#: The module the server runs as each worker child.
WORKER_MODULE: Final = "snakebridge_server.worker"


class WorkerStartError(Exception):
    """A worker process failed to start or to complete its READY handshake."""


_NO_SANDBOX = SandboxSpec()


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What every worker of a pool is started with."""

    python: str
    boot: str
    max_refs: int
    max_frame: int
    max_result: int
    start_timeout: float
    cancel_grace: float
    helpers: tuple[str, ...] = ()
    helper_allow: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    sandbox: SandboxSpec = _NO_SANDBOX  # per-worker fields (scratch, uid) are filled in
    min_sandbox: str = "none"
    sandbox_uid: int = 0  # configured: -1 auto, 0 never, else the base uid
    uid_offset: int = 0  # workers of earlier pools: every worker gets its own uid
    scratch_root: str = ""  # where worker scratch dirs go (the server's own directory)
    log_level: str = "info"  # the root level of ``logging`` in the worker
    output_rate: int = 1000  # output lines per second logged per worker; 0: all
    concurrency: int = 1  # user-code requests one worker runs at once
    threads: bool = False  # sync functions run in a thread pool of ``concurrency``


def worker_argv(
    spec: WorkerSpec, key: WorkerKey, sandbox: SandboxSpec, *, fd: int, ctrl_fd: int
) -> list[str]:
    """The command line of worker ``key``: ``fd`` is its channel, ``ctrl_fd`` its
    cancellation channel (both inherited), ``sandbox`` its own spec (scratch dir, uid)."""
    return [
        spec.python,
        "-m",
        WORKER_MODULE,
        f"--fd={fd}",
        f"--ctrl-fd={ctrl_fd}",
        f"--ref-prefix={key.ref_prefix(spec.boot)}",
        f"--pool={key.pool}",
        f"--max-refs={spec.max_refs}",
        f"--max-frame={spec.max_frame}",
        f"--max-result={spec.max_result}",
        f"--helpers={json.dumps(spec.helpers)}",
        f"--helper-allow={json.dumps(spec.helper_allow)}",
        f"--preload={','.join(spec.preload)}",
        f"--sandbox={sandbox.to_json()}",
        f"--log-level={spec.log_level}",
        *([f"--concurrency={spec.concurrency}"] if spec.concurrency > 1 else []),
        *(["--threads"] if spec.threads and spec.concurrency > 1 else []),
    ]


_RUNTIME_PROBE: Final = (
    "import os, sys, msgpack, snakebridge, snakebridge_server.worker.main\n"
    "print(snakebridge.__version__)\n"
    "print(os.path.realpath(sys.executable))\n"
    "print(os.path.dirname(os.__file__))\n"
    "for m in (msgpack, snakebridge, snakebridge_server): print(os.path.dirname(m.__file__))\n"
    "for p in os.environ.get('PYTHONPATH', '').split(os.pathsep): p and print(p)\n"
)
_runtime_paths_cache: dict[tuple[str, str], list[str]] = {}


async def check_runtime(python: str, env: dict[str, str]) -> list[str]:
    """What a worker of ``python`` must be able to read (interpreter, stdlib, the worker
    runtime's packages, PYTHONPATH), asked of that interpreter once. Raises
    ``WorkerStartError`` saying what to install where when it cannot run the worker
    runtime of this server's version."""
    key = (python, env.get("PYTHONPATH", ""))
    cached = _runtime_paths_cache.get(key)
    if cached is not None:
        return cached
    install = (
        f"install snakebridge {__version__} into that environment "
        f"({python} -m pip install snakebridge=={__version__}, or this project's checkout)"
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            python,
            "-c",
            _RUNTIME_PROBE,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd="/",  # as a worker in its scratch dir: nothing importable from our cwd
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    except (OSError, TimeoutError) as exc:
        raise WorkerStartError(f"cannot run the interpreter {python!r}: {exc}") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        why = lines[-1][:300] if lines else f"exit status {proc.returncode}"
        raise WorkerStartError(
            f"the interpreter {python!r} cannot import the worker runtime ({why}); {install}"
        )
    version, *paths = out.decode().split()
    if version != __version__:
        raise WorkerStartError(
            f"the interpreter {python!r} has snakebridge {version}, this server is "
            f"{__version__}; {install}"
        )
    _runtime_paths_cache[key] = paths
    return paths


_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def read_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` from ``/proc/<pid>/stat``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None
