"""Worker side: say when an exception of user code was caused by the sandbox, and which
setting allows what was refused. The note travels with the error to the client
(``wire.remote``, an exception note). Runs in the worker child.

The worker cannot see the kernel's reasons, so each rule infers one from facts it knows
for certain, and says nothing when they do not fit:

- ``EACCES``/``EPERM`` naming a path outside the Landlock read allowlist (or inside it but
  outside the write allowlist): Landlock, ``--sandbox-read-paths``/``--sandbox-write-paths``.
- ``EPERM`` from creating a socket, or from ``subprocess``: seccomp, which no setting but
  the level relaxes.
- ``socket.gaierror``: name resolution needs ``/etc`` and sockets, which the sandbox denies.
- ``KeyError`` raised by ``os.environ[name]`` for a name the environment allowlist does
  not pass: the pool's ``env`` setting. (``os.environ.get`` and ``os.getenv`` return
  None instead; nothing is raised, so nothing can be noted.)
- ``MemoryError`` under an address-space limit: ``--max-memory``.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from .spawn import ENV_ALLOW, ENV_ALLOW_PREFIXES, THREAD_LIMITS

_REFUSED = (errno.EACCES, errno.EPERM)


@dataclass(frozen=True, slots=True)
class SandboxFacts:
    """What the worker's sandbox became: enough to tell a refusal from an OS fault."""

    pool: str
    level: str
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    landlock: bool = False
    seccomp: bool = False
    max_memory: int = 0

    @classmethod
    def of(
        cls,
        pool: str,
        level: str,
        layers: Sequence[str],
        read_paths: Sequence[str],
        write_paths: Sequence[str],
        max_memory: int,
    ) -> SandboxFacts:
        """From the layers ``sandbox.apply`` reported."""
        return cls(
            pool,
            level,
            tuple(os.path.realpath(p) for p in read_paths),
            tuple(os.path.realpath(p) for p in write_paths),
            any(line.startswith("landlock: ABI") for line in layers),
            "seccomp: on" in layers,
            max_memory,
        )

    def explain(self, exc: BaseException) -> str | None:
        """A note naming the layer that refused ``exc`` and the setting that allows it;
        None when the sandbox is not (provably) the cause."""
        if self.level == "none":
            return None
        if isinstance(exc, MemoryError) and self.max_memory:
            return (
                f"sandbox (rlimits): pool {self.pool!r} caps each worker's address space at "
                f"{_size(self.max_memory)} (--max-memory, pool setting max_memory); raise "
                "it, or 0 for no cap, for large data or libraries such as torch"
            )
        if isinstance(exc, socket.gaierror) and self.seccomp:
            return (
                f"sandbox (seccomp, Landlock): pool {self.pool!r} runs at sandbox level "
                f"{self.level!r}, where workers have no network: no new sockets and no "
                "/etc/hosts or /etc/resolv.conf, so names do not resolve. No setting opens "
                "the network at this level: make the request in your application, or "
                'call a pool at level none (--sandbox none, pool setting sandbox = "none")'
            )
        if isinstance(exc, OSError) and exc.errno in _REFUSED:
            return self._os_refusal(exc)
        if type(exc) is KeyError:
            return self._missing_env(exc)
        return None

    def _os_refusal(self, exc: OSError) -> str | None:
        filename = exc.filename
        if isinstance(filename, bytes):
            filename = os.fsdecode(filename)
        if isinstance(filename, str) and filename and self.landlock:
            return self._path_refusal(filename)
        where = _innermost_module(exc.__traceback__)
        if exc.errno == errno.EPERM and self.seccomp and where == "socket":
            return (
                f"sandbox (seccomp): pool {self.pool!r} runs at sandbox level {self.level!r}, "
                "where workers may not create sockets. No setting allows them at this "
                "level: make the connection in your application, or call a pool at level "
                'none (--sandbox none, pool setting sandbox = "none")'
            )
        if exc.errno == errno.EPERM and self.seccomp and where.startswith("subprocess"):
            return (
                f"sandbox (seccomp): pool {self.pool!r} runs at sandbox level {self.level!r}, "
                "where workers may not start processes (fork, exec). Run the program from "
                'your application, or call a pool at level none (pool setting sandbox = "none")'
            )
        return None

    def _path_refusal(self, filename: str) -> str | None:
        path = os.path.realpath(os.path.abspath(filename))
        if not _under(path, self.read_paths) and not _under(path, self.write_paths):
            return (
                f"sandbox (Landlock): {filename!r} is outside the paths pool {self.pool!r} "
                "lets its workers read; the operator can allow it with "
                f"--sandbox-read-paths {path} (or --sandbox-write-paths to write there; "
                "pool settings sandbox_read_paths, sandbox_write_paths)"
            )
        if not _under(path, self.write_paths):
            return (
                f"sandbox (Landlock): pool {self.pool!r} lets its workers read {filename!r} "
                "but not write it; if this call writes there, the operator can allow it "
                f"with --sandbox-write-paths {path} (pool setting sandbox_write_paths)"
            )
        return None  # the sandbox allows it: the file's own permissions refused

    def _missing_env(self, exc: KeyError) -> str | None:
        if len(exc.args) != 1 or not isinstance(exc.args[0], str):
            return None
        name = exc.args[0]
        if _innermost_frame(exc.__traceback__) != ("os", "__getitem__") or env_allowed(name):
            return None
        return (
            f"sandbox (environment): pool {self.pool!r} passes its workers only an "
            "allowlist of the server's environment (PATH, LANG, LC_*, TZ, PYTHONPATH, ...), "
            f"and {name!r} is not on it. Set it for the pool with its env setting in the "
            f'config file ([pools.{self.pool}] env = {{ {name} = "..." }})'
        )


def env_allowed(name: str) -> bool:
    """Whether the sandbox passes ``name`` from the server's environment to a worker."""
    return name in ENV_ALLOW or name.startswith(ENV_ALLOW_PREFIXES) or name in THREAD_LIMITS


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _innermost_frame(tb: TracebackType | None) -> tuple[str, str]:
    if tb is None:
        return "", ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return (module if isinstance(module, str) else ""), tb.tb_frame.f_code.co_name


def _innermost_module(tb: TracebackType | None) -> str:
    return _innermost_frame(tb)[0]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
