"""End-to-end fixtures: a real ``bridge-server`` process on a real socket.

The server is the installed console script, started with ``--listen 127.0.0.1:0`` (the
kernel picks a free port; the SERVING log line tells which) and stopped with SIGTERM.
Every stop checks that no worker process outlived the server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
BRIDGE_SERVER = str(Path(sys.executable).with_name("bridge-server"))
_SERVING = re.compile(r"SERVING on (\S+) \(.*?pids ([\d ]+)\)")


@pytest.fixture(scope="session", autouse=True)
def _sandbox_may_write_test_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Workers run sandboxed (level standard) and may write only their scratch dir; the
    tests hand them marker paths under pytest's temp dir, so that is allowed too (through
    the environment, as an operator could)."""
    os.environ["SNAKEBRIDGE_SANDBOX_WRITE_PATHS"] = str(tmp_path_factory.getbasetemp())
    # The tests read worker pids from Describe (to kill or watch them); without a token a
    # server shows them only when told to (issue #12).
    os.environ["SNAKEBRIDGE_DESCRIBE_PIDS"] = "1"


@pytest.fixture
def anyio_backend() -> Any:
    return ("asyncio", {"use_uvloop": True})


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids_of(server_pid: int) -> set[int]:
    """Live processes whose parent is ``server_pid`` (the workers)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == server_pid and fields[0] != "Z":
            pids.add(int(entry))
    return pids


class ServerProcess:
    """One ``bridge-server`` run. ``address`` is what the SDK connects to."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = {**os.environ, "PYTHONPATH": str(HERE), **(env or {})}
        self.lines: list[str] = []
        self.address = ""
        self.worker_pids: set[int] = set()
        self.proc: subprocess.Popen[str] | None = None
        self._serving = threading.Event()

    def start(self, timeout: float = 30.0) -> ServerProcess:
        argv = [BRIDGE_SERVER, *self.args]
        if not any(a.startswith(("--listen", "--uds")) for a in self.args):
            argv += ["--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._serving.wait(timeout):
            self.stop()
            raise RuntimeError("bridge-server did not serve:\n" + self.log)
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            match = _SERVING.search(line)
            if match and not self._serving.is_set():
                self.address = match.group(1)
                self.worker_pids = {int(p) for p in match.group(2).split()}
                self._serving.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stop the server; returns its exit code. Fails if a worker outlives it."""
        assert self.proc is not None
        workers = worker_pids_of(self.proc.pid) | self.worker_pids
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"bridge-server ignored signal {sig}:\n{self.log}") from None
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(pid_alive(p) for p in workers):
            time.sleep(0.05)
        orphans = [p for p in workers if pid_alive(p)]
        for p in orphans:
            os.kill(p, signal.SIGKILL)
        assert not orphans, f"worker processes outlived the server: {orphans}"
        return self.proc.returncode


def run_bridge_server(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``bridge-server ARGS`` to its end: a start that must fail, or ``check``."""
    return subprocess.run(
        [BRIDGE_SERVER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The shared server: 2 workers, test helpers registered."""
    srv = ServerProcess("--workers", "2", "--helpers", "remote_helpers").start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def make_server() -> Iterator[Any]:
    """Start a dedicated server with extra flags; stopped (and checked) at teardown."""
    started: list[ServerProcess] = []

    def make(*args: str, **kwargs: Any) -> ServerProcess:
        srv = ServerProcess(*args, **kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
