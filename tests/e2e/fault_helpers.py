"""Functions the sandbox and fault tests run inside workers (``test_sandbox_faults.py``).

The sandbox policy keeps ``os``, ``sys``, ``faulthandler``... out of reach by name, so
every process-level action a test needs is wrapped here.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any


def pid() -> int:
    return os.getpid()


def sleep_pid(seconds: float, marker_dir: str = "", token: str = "") -> int:
    """Sleep, return the pid. With ``marker_dir``, first leave ``<token>.<pid>`` there: a
    record that this call started running in this process."""
    if marker_dir:
        with open(os.path.join(marker_dir, f"{token}.{os.getpid()}"), "x"):
            pass
    time.sleep(seconds)
    return os.getpid()


# -- crashes ------------------------------------------------------------------------------


def segfault() -> None:
    import faulthandler

    faulthandler._sigsegv()  # type: ignore[attr-defined]  # CPython test hook


def hard_exit(code: int) -> None:
    os._exit(code)


def abort() -> None:
    os.abort()


# -- deadlines ----------------------------------------------------------------------------


def busy_forever() -> None:
    """Pure Python: the interpreter checks for signals between bytecodes."""
    while True:
        pass


def c_loop_forever() -> int:
    """One C call that never returns to the interpreter: Python signal handlers (the
    worker's cancellation) never get to run."""
    return sum(itertools.repeat(1, 10**15))


# -- rlimits ------------------------------------------------------------------------------


def burn_cpu(seconds: float) -> int:
    """Use ``seconds`` of CPU time in pure Python; returns the pid."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        for _ in range(10_000):
            pass
    return os.getpid()


def allocate(nbytes: int) -> int:
    """Allocate (and touch) ``nbytes``, drop them; returns the pid."""
    block = bytearray(nbytes)
    block[-1] = 1
    del block
    return os.getpid()


def write_file(name: str, nbytes: int) -> int:
    """Write ``nbytes`` to ``name`` (relative: in the worker's cwd); returns the size."""
    try:
        with open(name, "wb") as f:
            f.write(b"x" * nbytes)
        return os.path.getsize(name)
    finally:
        if os.path.exists(name):
            os.unlink(name)


def open_many(n: int) -> int:
    """Hold ``n`` files open at once; all are closed again whatever happens."""
    files = []
    try:
        for _ in range(n):
            files.append(open(os.devnull, "rb"))  # closed below
        return len(files)
    finally:
        for f in files:
            f.close()


# -- hygiene ------------------------------------------------------------------------------


def identity(settle: float = 0.0, probe: bool = True) -> dict[str, Any]:
    """What a worker sees of itself, after ``settle`` seconds (so that concurrent calls
    land on different workers). With ``probe``, writes and reads back a file in its cwd."""
    time.sleep(settle)
    cwd = os.getcwd()
    written = None
    if probe:
        path = os.path.join(cwd, "probe.txt")
        with open(path, "w") as f:
            f.write("written")
        with open(path) as f:
            written = f.read()
        os.unlink(path)
    return {
        "pid": os.getpid(),
        "cwd": cwd,
        "written": written,
        "home": os.environ.get("HOME"),
        "tmpdir": os.environ.get("TMPDIR"),
        "sid": os.getsid(0),
        "pgid": os.getpgrp(),
        "secret": os.environ.get("MY_SECRET_TOKEN"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
    }
