"""Worker side: apply the sandbox layers to this process, in order, before any user code
(helpers and preloads included) is imported. Each layer reports what it did; a layer the
host lacks is reported as unavailable and the level reached drops to ``none``, which a
``--min-sandbox`` on the server turns into a refusal to start.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from . import SandboxSpec, landlock, seccomp

# Read-only beside the interpreter's own paths: shared libraries, time zones, and the few
# /proc and /sys files that numeric libraries read to size themselves.
SYSTEM_READ: Final = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/local/lib",
    "/usr/share/zoneinfo",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/sys/devices/system/cpu",
)
SYSTEM_WRITE: Final = ("/dev/null",)

_INTROSPECTION: Final = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents"})

# Imported by nothing a computation needs, and the way around every Python-level rule.
STRICT_BLOCKED_IMPORTS: Final = frozenset({"ctypes", "_ctypes", "cffi", "_cffi_backend"})


def read_paths(spec: SandboxSpec) -> list[str]:
    paths = {p for p in sys.path if p and os.path.isabs(p)}
    paths |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths |= set(SYSTEM_READ)
    paths.add(os.path.realpath("/proc/self"))  # this process's /proc entry only
    paths |= set(spec.read_paths)
    return sorted(paths)


def write_paths(spec: SandboxSpec) -> list[str]:
    return sorted({spec.scratch, *SYSTEM_WRITE, *spec.write_paths} - {""})


def apply(spec: SandboxSpec) -> tuple[str, list[str]]:
    """Apply ``spec``; returns (level reached, one line per layer)."""
    if spec.level == "none":
        return "none", ["sandbox: off (level none)"]
    layers: list[str] = []
    complete = True
    if spec.scratch:
        os.chdir(spec.scratch)
    layers.append("hygiene: allowlisted env, own session, parent-death signal, scratch cwd")
    layers.append("rlimits: " + set_rlimits(spec))
    if spec.uid:
        switch_uid(spec.uid)
    try:
        drop_capabilities()
        layers.append("capabilities: all dropped")
    except OSError as exc:
        complete = False
        layers.append(f"capabilities: could not drop ({exc})")
    if spec.uid:
        layers.append(f"uid: {spec.uid}")
    layers.extend(spec.notes or (() if spec.uid else ("uid: unchanged",)))
    try:
        abi, enforced = landlock.restrict(read_paths(spec), write_paths(spec))
        layers.append(f"landlock: ABI {abi} ({', '.join(enforced)})")
    except OSError as exc:
        complete = False
        layers.append(f"landlock: unavailable ({exc})")
    if seccomp.supported():
        try:
            # Without a uid of its own the worker owns the server user's files: no chmod,
            # chown, utime or xattrs.
            shared_uid = not spec.uid
            seccomp.install(seccomp.build_filter(os.getpid(), deny_file_owner_ops=shared_uid))
            layers.append("seccomp: on")
        except OSError as exc:
            complete = False
            layers.append(f"seccomp: unavailable ({exc})")
    else:
        complete = False
        layers.append("seccomp: unavailable (filter is built for x86_64 only)")
    if spec.level == "strict":
        forget_ctypes()
        block_imports(STRICT_BLOCKED_IMPORTS)
        layers.append("imports: " + ", ".join(sorted(STRICT_BLOCKED_IMPORTS)) + " blocked")
    return (spec.level if complete else "none"), layers


_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_SYS_CAPSET: Final = 126  # x86_64 and the generic table differ: only called after a check
_PR_SET_PDEATHSIG: Final = 1
_PR_CAPBSET_DROP: Final = 24
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4


def drop_capabilities() -> None:
    """Empty every capability set, so a worker left running as root (no dedicated uid)
    cannot raise its rlimits, renice or signal others by privilege, or bypass file modes."""
    import ctypes

    if not sys.platform.startswith("linux") or not seccomp.supported():
        raise OSError("capability dropping is implemented for x86_64 Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    if os.geteuid() == 0:  # the bounding set needs CAP_SETPCAP, which only root has
        for cap in range(last + 1):
            libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all empty
    if libc.syscall(_SYS_CAPSET, header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def switch_uid(uid: int) -> None:
    """Become ``uid`` (gid ``uid``, no supplementary groups) for good: real, effective
    and saved ids all change, so there is no way back to root."""
    import ctypes

    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # A credential change clears the parent-death signal: arm it again.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the server died in between
        os._exit(70)


def _lower(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def set_rlimits(spec: SandboxSpec) -> str:
    done = ["core=0"]
    _lower(resource.RLIMIT_CORE, 0)
    if spec.max_memory:
        _lower(resource.RLIMIT_AS, spec.max_memory)
        done.append(f"as={spec.max_memory}")
    if spec.max_open_files:
        _lower(resource.RLIMIT_NOFILE, spec.max_open_files)
        done.append(f"nofile={spec.max_open_files}")
    if spec.max_file_size:
        # Past the limit write() fails with EFBIG (an OSError) instead of killing us.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _lower(resource.RLIMIT_FSIZE, spec.max_file_size)
        done.append(f"fsize={spec.max_file_size}")
    if spec.uid and spec.max_threads:
        # Counts every process and thread of the uid: only meaningful for a dedicated one.
        _lower(resource.RLIMIT_NPROC, spec.max_threads)
        done.append(f"nproc={spec.max_threads}")
    if spec.max_call_cpu:
        done.append(f"cpu={spec.max_call_cpu:g}s per call")
    return " ".join(done)


class CpuBudget:
    """RLIMIT_CPU as a per-call budget: before each call the soft limit is moved to the
    CPU time used so far plus the budget; past it the kernel sends SIGXCPU, which the
    worker turns into an interruption of the call. The hard limit stays where it is, so
    the next call can move the soft limit again."""

    def __init__(self, seconds: float, on_exceeded: Callable[[], None]) -> None:
        self.seconds = seconds
        self._on_exceeded = on_exceeded
        signal.signal(signal.SIGXCPU, self._signal)

    def arm(self) -> None:
        used = time.process_time()
        resource.setrlimit(
            resource.RLIMIT_CPU,
            (math.ceil(used + self.seconds), resource.RLIM_INFINITY),
        )

    def _signal(self, signum: int, frame: Any) -> None:
        self._on_exceeded()


def forget_ctypes() -> None:
    """Drop every reference the worker runtime holds to ctypes (the kernel layers above
    used it), so that no ctypes module, and none of its ready-made function pointers
    (``memmove``, ``memset``...), is left for user code to find once imports are blocked."""
    import gc

    for module in (landlock, seccomp):
        for name in [n for n, v in vars(module).items() if _from_ctypes(v)]:
            delattr(module, name)
    for name in [n for n in sys.modules if n.split(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[name]
    gc.collect()


def _from_ctypes(value: Any) -> bool:
    if getattr(value, "__name__", None) == "ctypes":
        return True
    return isinstance(value, type) and any(
        getattr(base, "__module__", "").startswith(("ctypes", "_ctypes")) for base in value.__mro__
    )


def block_imports(names: frozenset[str]) -> None:
    """Make importing ``names`` and every ctypes operation fail from now on, for good: an
    audit hook cannot be removed."""
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            del sys.modules[name]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "import" and str(args[0]).split(".")[0] in names:
            raise ImportError(f"import of {args[0]!r} is blocked by the strict sandbox")
        if event.startswith("ctypes.") or event in _INTROSPECTION:
            # Anything ctypes would still do, and the ways to find this hook (gc) and
            # disarm it (a function's __code__ replaced).
            raise PermissionError(f"{event} is blocked by the strict sandbox")
        if event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__":
            raise PermissionError(
                "replacing a function's __code__ is blocked by the strict sandbox"
            )

    sys.addaudithook(hook)
