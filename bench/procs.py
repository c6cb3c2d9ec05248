"""Server subprocesses for the benchmarks: free ports, readiness, and guaranteed clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent


# Process groups of servers not yet stopped: the last-resort clean-up in kill_leftovers().
_LIVE_GROUPS: set[int] = set()


class ServerFailed(RuntimeError):
    """The server process exited or never reported that it was ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def kill_leftovers() -> None:
    """SIGKILL the group of every server still running (after a crash or Ctrl-C)."""
    for pgid in list(_LIVE_GROUPS):
        ServerProcess._kill_group(pgid)
        _LIVE_GROUPS.discard(pgid)


def repo_on_pythonpath() -> dict[str, str]:
    """`PYTHONPATH` with the repo root first: a bridge-server's workers (which inherit
    PYTHONPATH even when sandboxed, and read what is on their sys.path) can then import
    `bench.remote_funcs`. An absolute path, since sandboxed workers run in a scratch cwd."""
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *([current] if current else [])])}


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` (VmRSS in /proc/<pid>/status), or None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            return int(value) * 1024 if unit == "kB" else None
    return None


def busy_ticks() -> int | None:
    """CPU ticks spent busy (all but idle and iowait) on all CPUs since boot (/proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    return sum(values) - values[3] - values[4]


def tree_ticks(roots: set[int]) -> int:
    """CPU ticks (user + system) used so far by the live processes in `roots`, their
    children (a bridge-server's workers run in sessions of their own, but are its
    children) and this process's group."""
    own = os.getpgrp()
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        ppid, pgid = int(fields[1]), int(fields[2])
        if int(entry.name) in roots or ppid in roots or pgid == own:
            total += int(fields[11]) + int(fields[12])
    return total


class OtherLoad:
    """CPUs used by processes other than `roots`, their children and this process group,
    between `start()` and `stop()`: the other load on the machine during a measurement."""

    def __init__(self, roots: set[int]) -> None:
        self.roots = roots
        self._start: tuple[float, int | None, int] | None = None

    def start(self) -> None:
        self._start = (time.perf_counter(), busy_ticks(), tree_ticks(self.roots))

    def stop(self) -> float | None:
        assert self._start is not None
        begun, busy, ours = self._start
        now, busy_now = time.perf_counter(), busy_ticks()
        if busy is None or busy_now is None:
            return None
        other = (busy_now - busy) - (tree_ticks(self.roots) - ours)
        return max(0.0, other / os.sysconf("SC_CLK_TCK") / (now - begun))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class ServerProcess:
    """`async with ServerProcess(...)`: start, wait for a ready line, always stop on exit.

    The child runs in its own session, so anything it spawns shares its process group
    unless it starts a session of its own (bridge-server's workers do, and die with the
    server by their parent-death signal); on exit the leader gets SIGTERM, and after
    `stop_timeout` seconds, or if it left children in its group, the group gets SIGKILL.

    `env` is added to the inherited environment. `spawned_at` and `ready_at` are
    `time.perf_counter()` readings: just before the exec, and when the ready line was read.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        ready_marker: str,
        *,
        ready_timeout: float = 20.0,
        stop_timeout: float = 10.0,
        cwd: Path = REPO_ROOT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.ready_marker = ready_marker
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.cwd = cwd
        self.env = dict(env or {})
        self.spawned_at: float | None = None
        self.ready_at: float | None = None
        self.output: deque[str] = deque(maxlen=40)
        self.ready_line: str | None = None
        self.returncode: int | None = None
        self.killed = False
        self.left_children = False
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start and wait until ready; on any failure the process is stopped before raising."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def tail(self, lines: int = 5) -> str:
        return " | ".join(list(self.output)[-lines:]) or "(no output)"

    async def _start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.spawned_at = time.perf_counter()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=env,
            start_new_session=True,
        )
        _LIVE_GROUPS.add(self._proc.pid)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self._proc.stdout)),
            asyncio.create_task(self._read(self._proc.stderr)),
        ]
        ready = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self._proc.wait())
        try:
            await asyncio.wait(
                [ready, exited], timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            exited.cancel()
        if self._ready.is_set():
            return
        if self._proc.returncode is not None:
            raise ServerFailed(
                f"{self.name} exited with code {self._proc.returncode}: {self.tail()}"
            )
        raise ServerFailed(
            f"{self.name} printed no {self.ready_marker!r} within {self.ready_timeout:g}s: "
            f"{self.tail()}"
        )

    async def _read(self, stream: asyncio.StreamReader) -> None:
        """Drain a pipe for the child's whole life, so it can never block on a full pipe."""
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if not self._ready.is_set() and self.ready_marker in line:
                self.ready_at = time.perf_counter()
                self.ready_line = line
                self._ready.set()

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                self.killed = True
                self._kill_group(proc.pid)
                await proc.wait()
        self.returncode = proc.returncode
        if _group_alive(proc.pid):
            self.left_children = True
            self._kill_group(proc.pid)
        _LIVE_GROUPS.discard(proc.pid)
        await self._finish_readers()
        self._proc = None

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    async def _finish_readers(self) -> None:
        if not self._readers:
            return
        _, pending = await asyncio.wait(self._readers, timeout=2.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers = []
