"""Server side of the sandbox: the environment, scratch directory and uid a worker is
started with. ``worker_env`` and ``unreadable_by_others`` are pure."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from typing import Final

# Variables a sandboxed worker inherits from the server; everything else (tokens, cloud
# credentials, the server's own settings) stays behind.
ENV_ALLOW: Final = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "PYTHONPATH",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONWARNINGS",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONFAULTHANDLER",
    }
)
ENV_ALLOW_PREFIXES: Final = ("LC_",)

# BLAS/OpenMP pools default to one thread per worker: the pool is the parallelism.
THREAD_LIMITS: Final = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)

SANDBOX_UID_BASE: Final = 61000


def worker_env(
    server_env: Mapping[str, str], *, level: str, scratch: str, extra: Mapping[str, str]
) -> dict[str, str]:
    """The environment of a worker: at level ``none`` the server's own, otherwise only
    the allowlist, with HOME and TMPDIR pointing into the scratch directory."""
    if level == "none":
        env = dict(server_env)
    else:
        env = {
            k: v
            for k, v in server_env.items()
            if k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES) or k in THREAD_LIMITS
        }
        env["HOME"] = env["TMPDIR"] = scratch
    for name in THREAD_LIMITS:
        env.setdefault(name, "1")
    env.update(extra)
    return env


def sandbox_uid(configured: int, slot: int, euid: int) -> int:
    """The uid a worker runs as: 0 means "do not switch" (not root, or turned off)."""
    if euid != 0 or configured == 0:
        return 0
    return (SANDBOX_UID_BASE if configured == -1 else configured) + slot


def unreadable_by_others(paths: Iterable[str]) -> str | None:
    """Why a uid that is neither owner nor group member cannot reach ``paths`` (every
    directory on the way searchable, the path itself readable), or None if it can."""
    for path in paths:
        path = os.path.realpath(path)
        parts = path.split(os.sep)
        for i in range(2, len(parts) + 1):
            current = os.sep.join(parts[:i]) or os.sep
            try:
                mode = os.stat(current).st_mode
            except OSError:
                break  # missing: nothing to read there, nothing to refuse
            last = i == len(parts)
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                return f"{current} is mode {stat.S_IMODE(mode):04o} (not searchable by others)"
            if last and not mode & stat.S_IROTH:
                return f"{current} is mode {stat.S_IMODE(mode):04o} (not readable by others)"
    return None


_SCRATCH_ROOT = re.compile(r"^snakebridge-srv(\d+)-")


def make_scratch_root() -> str:
    """A directory for this server's worker scratch dirs, under the temp dir. Roots left
    by servers that are gone (SIGKILLed: no chance to clean up) are removed first."""
    base = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            match = _SCRATCH_ROOT.match(name)
            if match and not _pid_alive(int(match.group(1))):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    root = tempfile.mkdtemp(prefix=f"snakebridge-srv{os.getpid()}-")
    os.chmod(root, 0o711)  # a worker with its own uid must reach its own (0700) dir
    return root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
