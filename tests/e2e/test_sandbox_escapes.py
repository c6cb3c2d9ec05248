"""Escape probes against real workers (issue #4).

Every probe in ``sandbox_probes.py`` runs twice: in a server at the default level
(``standard``), where the sandbox must stop it with a specific error, and in a server at
level ``none``, where the same probe must get through (proving that it works and that the
sandbox is what stopped it). Call-policy probes (names a client sends) run against
``standard``, ``strict`` and ``none``; ctypes probes against ``strict`` and ``none``.

Nothing gets through at ``standard``. Two routes around ``strict``'s ctypes block still
do (the kernel layers hold them like any other code): they are ``xfail(strict=True)``
with the reason, so when one is closed its test fails as XPASS and the mark must go.

The targets live outside the worker: sockets the test process listens on, a fresh
directory under /var/tmp (in no sandbox rule; not pytest's temp dir, which the e2e
conftest lets workers write), a decoy process to trace and signal, and the server itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakebridge
import snakebridge_server
from snakebridge import errors
from snakebridge_server.sandbox import landlock, seccomp
from snakebridge_server.sandbox.spawn import unreadable_by_others

from .conftest import HERE, ServerProcess, run_bridge_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

P = "sandbox_probes"
MiB = 1024 * 1024
GiB = 1024 * MiB
CPU_BUDGET = 0.5  # --max-call-cpu of the servers; the soft limit is rounded up to seconds
SECRET = f"probe-secret-{os.getpid()}"
SECRET_VARS = ("SNAKEBRIDGE_TEST_SECRET", "AWS_SECRET_ACCESS_KEY")
SHM_TEXT = b"shm-secret-of-the-test-process"
DEBIAN_PYTHON = "/usr/bin/python3.11"

LANDLOCK_ABI = landlock.abi_version() if sys.platform.startswith("linux") else 0
SECCOMP = sys.platform.startswith("linux") and seccomp.supported()
IS_ROOT = os.geteuid() == 0

# errno in the remote message: which layer said no
EPERM = r"\[Errno 1\]"  # the seccomp filter (or a dropped capability)
EACCES = r"\[Errno 13\]"  # Landlock
EITHER = r"\[Errno (1|13)\]"  # either: it depends on whether the worker owns the target
CPU_PAST_LIMIT = 15.0  # CPU seconds the budget-dodging probes burn past it at a sandboxed level

# -- targets ---------------------------------------------------------------------------------


@dataclass
class Env:
    """What the probes aim at, all outside the sandbox."""

    outside: Path  # 0777, under /var/tmp, in no sandbox rule
    secret: Path  # 0644 in ``outside``
    read_only: Path  # given to the servers as --sandbox-read-paths
    ro_file: Path  # 0644 in ``read_only``
    writable: Path  # under pytest's basetemp: the sandbox may write there
    server_cwd: Path  # 0777, the servers' working directory
    tcp: socket.socket
    udp: socket.socket
    unix_stream: socket.socket
    unix_stream_path: str
    abstract_stream: socket.socket
    abstract_stream_name: str
    unix_dgram: socket.socket
    unix_dgram_path: str
    abstract_dgram: socket.socket
    abstract_dgram_name: str
    decoy: subprocess.Popen[bytes]
    shmid: int
    mq_name: str

    def fresh(self, stem: str, directory: Path | None = None) -> str:
        """A path that does not exist yet."""
        return str((directory or self.writable) / f"{stem}-{time.monotonic_ns()}")


def _listening(family: int, kind: int, address: Any) -> socket.socket:
    s = socket.socket(family, kind)
    s.bind(address)
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    s.settimeout(5)
    return s


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _make_shm() -> int:
    """A 0600 System V shared memory segment of this (root) process, holding SHM_TEXT."""
    libc = _libc()
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    shmid = libc.shmget(0, ctypes.c_size_t(4096), 0o1000 | 0o600)  # IPC_PRIVATE, CREAT|0600
    if shmid < 0:
        pytest.skip(f"shmget: {os.strerror(ctypes.get_errno())}")
    addr = libc.shmat(shmid, None, 0)
    ctypes.memmove(addr, SHM_TEXT + b"\0", len(SHM_TEXT) + 1)
    libc.shmdt(ctypes.c_void_p(addr))
    return int(shmid)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="snakebridge-probes-", dir="/var/tmp"))
        root.chmod(0o755)  # a dedicated worker uid may look in: only its rules keep it out
        stack.callback(shutil.rmtree, root, True)
        outside, read_only, server_cwd = root / "outside", root / "read-only", root / "cwd"
        for d in (outside, read_only, server_cwd):
            d.mkdir()
        outside.chmod(0o777)
        server_cwd.chmod(0o777)
        secret = outside / "secret.txt"
        secret.write_text("the secret\n")
        secret.chmod(0o644)
        ro_file = read_only / "readable.txt"
        ro_file.write_text("read me, do not write me\n")
        ro_file.chmod(0o644)

        def sock(family: int, kind: int, address: Any) -> socket.socket:
            return stack.enter_context(_listening(family, kind, address))

        tag = f"snakebridge-probe-{os.getpid()}"
        decoy = subprocess.Popen(["sleep", "300"])
        stack.callback(decoy.wait)
        stack.callback(decoy.kill)
        shmid = _make_shm()
        stack.callback(_libc().shmctl, shmid, 0, None)  # IPC_RMID
        mq_name = f"/{tag}"
        mqd = _libc().mq_open(mq_name.encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
        if mqd >= 0:
            _libc().mq_close(mqd)
            stack.callback(_libc().mq_unlink, mq_name.encode())
        yield Env(
            outside=outside,
            secret=secret,
            read_only=read_only,
            ro_file=ro_file,
            writable=tmp_path_factory.mktemp("probes"),
            server_cwd=server_cwd,
            tcp=sock(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0)),
            udp=sock(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0)),
            unix_stream=sock(socket.AF_UNIX, socket.SOCK_STREAM, str(outside / "stream.sock")),
            unix_stream_path=str(outside / "stream.sock"),
            abstract_stream=sock(socket.AF_UNIX, socket.SOCK_STREAM, f"\0{tag}-stream"),
            abstract_stream_name=f"@{tag}-stream",
            unix_dgram=sock(socket.AF_UNIX, socket.SOCK_DGRAM, str(outside / "dgram.sock")),
            unix_dgram_path=str(outside / "dgram.sock"),
            abstract_dgram=sock(socket.AF_UNIX, socket.SOCK_DGRAM, f"\0{tag}-dgram"),
            abstract_dgram_name=f"@{tag}-dgram",
            decoy=decoy,
            shmid=shmid,
            mq_name=mq_name,
        )


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def servers(env: Env) -> Iterator[dict[str, ServerProcess]]:
    """One single-worker server per level, started together, run from ``server_cwd``,
    with secrets in their environment."""
    common = [
        "--workers", "1",
        "--max-call-cpu", str(CPU_BUDGET),
        "--cancel-grace", "0.5",  # so the CPU backstop ends a runaway call sooner
        "--max-file-size", str(MiB),
        "--sandbox-read-paths", str(env.read_only),
    ]  # fmt: skip
    secrets = dict.fromkeys(SECRET_VARS, SECRET)
    made = {
        "standard": ServerProcess(*common, env=secrets),
        "none": ServerProcess(*common, "--sandbox", "none", env=secrets),
        "strict": ServerProcess(
            *common, "--sandbox", "strict", "--sandbox-allow-modules", P, env=secrets
        ),
    }
    with _cwd(env.server_cwd), ThreadPoolExecutor(len(made)) as pool:
        started = list(pool.map(_try_start, made.values()))
    failed = [f"{level}: {exc}" for level, exc in zip(made, started, strict=True) if exc]
    if failed:
        for srv, exc in zip(made.values(), started, strict=True):
            if exc is None:
                srv.stop()
        raise RuntimeError("; ".join(failed))
    yield made
    for srv in made.values():
        assert srv.stop() == 0


def _try_start(srv: ServerProcess) -> BaseException | None:
    try:
        srv.start()
    except BaseException as exc:
        return exc
    return None


def _port(srv: ServerProcess) -> int:
    return int(srv.address.rsplit(":", 1)[1])


def _readable_address(pid: int) -> int:
    """The start of the first readable mapping of ``pid``."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            if perms.startswith("r"):
                return int(span.split("-")[0], 16)
    raise AssertionError(f"no readable mapping in /proc/{pid}/maps")


def _new_outside_file(env: Env) -> str:
    path = env.fresh("victim", env.outside)
    Path(path).write_text("remove me\n")
    return path


def _same_fs(env: Env) -> list[Any]:
    if env.secret.stat().st_dev != env.writable.stat().st_dev:
        pytest.skip("pytest's temp dir and /var/tmp are on different file systems")
    return [str(env.secret), str(env.writable)]


def _with_mq(env: Env) -> list[Any]:
    if not Path("/dev/mqueue").exists() and _libc().mq_open(env.mq_name.encode(), 0) < 0:
        pytest.skip("no POSIX message queues here")
    return [env.mq_name]


def _has_syscall(nr: int) -> bool:
    """Whether this kernel knows system call ``nr`` (called with a bad fd: EBADF or so)."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    bad_fd, zero = ctypes.c_long(-1), ctypes.c_long(0)
    failed = libc.syscall(ctypes.c_long(nr), bad_fd, None, zero, None, None, zero) < 0
    return not (failed and ctypes.get_errno() == errno.ENOSYS)


def _with_syscall(nr: int, args: list[Any]) -> list[Any]:
    """``args``, or a skip if this kernel does not have system call ``nr``."""
    if not _has_syscall(nr):
        pytest.skip(f"this kernel has no system call {nr}")
    return args


def _inode_flags_target(env: Env) -> list[Any]:
    import fcntl

    with open(env.ro_file, "rb") as f:
        try:
            fcntl.ioctl(f.fileno(), 0x80086601, b"\0" * 8)  # FS_IOC_GETFLAGS
        except OSError as exc:
            pytest.skip(f"{env.ro_file}'s file system has no inode flags ({exc})")
    return [str(env.ro_file)]


# -- proofs that an escape at level none really happened ------------------------------------


def _accepted(listener: socket.socket, payload: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5)
        assert conn.recv(len(payload)) == payload


def _received(sock: socket.socket, payload: bytes) -> None:
    assert sock.recv(100) == payload


def _exists(path: str) -> None:
    assert os.path.exists(path), path


def _gone(path: str) -> None:
    assert not os.path.exists(path), path


# -- the probes --------------------------------------------------------------------------------

Args = Callable[[Env, ServerProcess], list[Any]]


@dataclass(frozen=True)
class Probe:
    id: str
    func: str  # in sandbox_probes
    args: Args
    blocked: type[BaseException]  # what the standard level must raise...
    match: str | None  # ...with a message matching this
    needs: str = ""  # kernel layer the block relies on: seccomp | landlock
    root: bool = False  # escaping at level none needs root
    proof: Callable[[Env, list[Any], Any], None] | None = None  # checked at level none
    timeout: float = 10.0


def _no_args(env: Env, srv: ServerProcess) -> list[Any]:
    return []


def _level(srv: ServerProcess) -> str:
    """The --sandbox level ``srv`` was started with."""
    return srv.args[srv.args.index("--sandbox") + 1] if "--sandbox" in srv.args else "standard"


def _past_cpu_limit(env: Env, srv: ServerProcess) -> list[Any]:
    """CPU seconds to burn past the soft RLIMIT_CPU: at a sandboxed level more than the
    server's backstop allows (budget + cancel grace + 1 CPU seconds, checked about once a
    second), so only the backstop can end the call; at level none (no budget) a moment."""
    return [0.2 if _level(srv) == "none" else CPU_PAST_LIMIT]


def _env_probe(name: str) -> Probe:
    """The server has ``name`` set to SECRET; the worker must not see it."""
    return Probe(
        f"env-{name.lower().replace('_', '-')}",
        "env_var",
        lambda e, s: [name],
        LookupError,
        "not in the worker's environment",
        proof=lambda e, a, r: _equal(r, SECRET),
    )


PROBES: list[Probe] = [
    # -- network: no socket(2) at all; Landlock denies TCP and scopes abstract sockets --------
    Probe(
        "tcp-connect-loopback", "tcp_connect",
        lambda e, s: [e.tcp.getsockname()[1]], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _accepted(e.tcp, b"probe"),
    ),
    Probe(
        "tcp-connect-own-grpc-port", "tcp_connect",
        lambda e, s: [_port(s)], PermissionError, EPERM, "seccomp",
    ),
    Probe("tcp-listen", "tcp_listen", _no_args, PermissionError, EPERM, "seccomp"),
    Probe(
        "udp-send-loopback", "udp_send",
        lambda e, s: [e.udp.getsockname()[1], "udp-probe"], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _received(e.udp, b"udp-probe"),
    ),
    Probe(
        "abstract-unix-connect", "unix_connect",
        lambda e, s: [e.abstract_stream_name, "abstract"], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _accepted(e.abstract_stream, b"abstract"),
    ),
    Probe(
        "pathname-unix-connect", "unix_connect",
        lambda e, s: [e.unix_stream_path, "pathname"], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _accepted(e.unix_stream, b"pathname"),
    ),
    # A datagram socket sendto()s any named socket without socket(2) or connect(2), and
    # Landlock (ABI <= 7) does not govern sending to a pathname one: the filter refuses
    # datagram socketpairs (stream and seqpacket pairs stay: see the legitimate work).
    Probe(
        "abstract-unix-dgram-via-socketpair", "unix_dgram_sendto",
        lambda e, s: [e.abstract_dgram_name, "abstract-dgram"], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _received(e.abstract_dgram, b"abstract-dgram"),
    ),
    Probe(
        "pathname-unix-dgram-via-socketpair", "unix_dgram_sendto",
        lambda e, s: [e.unix_dgram_path, "pathname-dgram"], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _received(e.unix_dgram, b"pathname-dgram"),
    ),
    Probe(
        "socketpair-dgram", "socketpair_roundtrip",
        lambda e, s: ["dgram"], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _equal(r, "ping"),
    ),
    Probe("netlink-socket", "netlink_route", _no_args, PermissionError, EPERM, "seccomp"),
    # -- files: Landlock's read-only and read-write trees ----------------------------------------
    Probe(
        "read-0644-file-outside", "read_file",
        lambda e, s: [str(e.secret)], PermissionError, EACCES, "landlock",
    ),
    Probe(
        "read-etc-shadow", "read_file",
        lambda e, s: ["/etc/shadow"], PermissionError, EACCES, "landlock", root=True,
    ),
    Probe(
        "read-server-proc-environ", "read_environ_of",
        lambda e, s: [s.pid, SECRET_VARS[0]], PermissionError, EACCES, "landlock",
        proof=lambda e, a, r: _equal(r, SECRET),
    ),
    Probe(
        "read-via-proc-self-root", "read_via_proc_root",
        lambda e, s: [str(e.secret)], PermissionError, EACCES, "landlock",
    ),
    Probe(
        "list-root-home", "list_dir", lambda e, s: ["/root"], PermissionError, EACCES,
        "landlock", root=True,
    ),
    Probe(
        "write-new-file-outside", "write_new_file",
        lambda e, s: [str(e.outside)], PermissionError, EACCES, "landlock",
    ),
    Probe(
        "write-into-server-cwd", "write_new_file",
        lambda e, s: [os.readlink(f"/proc/{s.pid}/cwd")], PermissionError, EACCES, "landlock",
    ),
    Probe(
        "append-to-read-only-path", "append_to",
        lambda e, s: [str(e.ro_file)], PermissionError, EACCES, "landlock",
    ),
    Probe(
        "remove-file-outside", "remove",
        lambda e, s: [_new_outside_file(e)], PermissionError, EACCES, "landlock",
        proof=lambda e, a, r: _gone(a[0]),
    ),
    Probe(
        "symlink-to-outside", "symlink_and_read",
        lambda e, s: [str(e.secret), str(e.writable)], PermissionError, EACCES, "landlock",
    ),
    Probe(
        # Landlock answers a link across its rules with EXDEV (no REFER right); a
        # dedicated uid may not even reach pytest's 0700 temp dir (EACCES)
        "hardlink-to-outside", "hardlink_and_read",
        lambda e, s: _same_fs(e), OSError, r"\[Errno (18|13)\]", "landlock",
    ),
    # Landlock does not govern a file's mode, owner, times, xattrs or inode flags: a worker
    # that shares the server's uid (owner of the file) is refused them by the filter, one
    # with a uid of its own by the kernel (the file is not its own: EPERM, or EACCES for
    # a user.* xattr).
    Probe(
        "chmod-file-outside", "chmod",
        lambda e, s: [str(e.secret)], PermissionError, EPERM, "seccomp",
    ),
    Probe(
        "setxattrat-file-outside", "setxattrat",
        lambda e, s: _with_syscall(463, [str(e.secret)]), PermissionError, EITHER, "seccomp",
    ),
    Probe(
        "file-setattr-file-outside", "file_setattr",
        lambda e, s: _with_syscall(469, [str(e.secret)]), PermissionError, EPERM, "seccomp",
    ),
    Probe(
        "mknod-char-device", "make_device",
        lambda e, s: [str(e.writable)], PermissionError, EPERM, "seccomp", root=True,
    ),
    Probe(
        "open-by-handle-shocker", "open_by_handle",
        lambda e, s: [str(e.secret)], PermissionError, EPERM, "seccomp", root=True,
    ),
    Probe(
        "inode-flags-of-read-only-file", "set_inode_flags",
        lambda e, s: _inode_flags_target(e), PermissionError, EPERM, "seccomp",
    ),
    Probe(
        # into the worker's cwd: its scratch dir (at level none, the servers' cwd)
        "file-over-max-file-size", "write_big_file",
        lambda e, s: [".", 2 * MiB], OSError, r"\[Errno 27\] File too large",
    ),
    # -- processes: no fork/exec, signals and tracing only within the worker ------------------
    Probe("fork", "fork_once", _no_args, PermissionError, EPERM, "seccomp"),
    Probe("subprocess-run-true", "run_true", _no_args, PermissionError, EPERM, "seccomp"),
    Probe(
        "os-system-touch", "os_system",
        lambda e, s: [e.fresh("system-marker")], ChildProcessError, "was not created", "seccomp",
        proof=lambda e, a, r: _exists(a[0]),
    ),
    Probe(
        "execve-shell", "exec_shell",
        lambda e, s: [e.fresh("exec-marker")], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _exists(a[0]),
    ),
    Probe(
        "signal-0-to-server", "send_signal",
        lambda e, s: [s.pid, 0], PermissionError, EPERM, "seccomp",
    ),
    Probe(
        "signal-0-to-pid-1", "send_signal",
        lambda e, s: [1, 0], PermissionError, EPERM, "seccomp", root=True,
    ),
    Probe(
        "signal-0-to-server-process-group", "send_signal",
        lambda e, s: [-os.getpgid(s.pid), 0], PermissionError, EPERM, "seccomp",
    ),
    Probe(
        "tgkill-server", "tgkill", lambda e, s: [s.pid], PermissionError, EPERM, "seccomp",
    ),
    Probe(
        "ptrace-attach-decoy", "ptrace_attach",
        lambda e, s: [e.decoy.pid], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _running(e.decoy.pid),
    ),
    Probe(
        "process-vm-readv-server", "read_memory_of",
        lambda e, s: [s.pid, _readable_address(s.pid)], PermissionError, EPERM, "seccomp",
    ),
    Probe(
        "pidfd-getfd-server", "steal_fd_of",
        lambda e, s: [s.pid], PermissionError, EPERM, "seccomp",
    ),
    Probe(
        "prlimit-server", "prlimit_of",
        lambda e, s: [s.pid], PermissionError, EPERM, "seccomp",
    ),
    Probe(
        "renice-server", "renice", lambda e, s: [s.pid], PermissionError, EPERM, root=True,
    ),
    Probe(
        "sched-setaffinity-server", "set_affinity_of",
        lambda e, s: [s.pid], PermissionError, EPERM, root=True,
    ),
    Probe(
        "syslog-read-kernel-log", "read_kernel_log", _no_args, PermissionError, EPERM,
        root=True,
    ),
    Probe(
        # found by number, not by path: Landlock does not see System V IPC; the filter
        # denies all of it
        "sysv-shm-of-another-process", "sysv_shm_read",
        lambda e, s: [e.shmid], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _equal(r, SHM_TEXT.decode()),
    ),
    Probe(
        "posix-mqueue-of-another-process", "posix_mq_open",
        lambda e, s: _with_mq(e), PermissionError, EACCES, "landlock",
    ),
    # -- namespaces and kernel interfaces: seccomp, EPERM -------------------------------------
    Probe(
        "unshare-newuser", "unshare_user", _no_args, PermissionError, EPERM, "seccomp",
        root=True,
    ),
    Probe(
        "clone-newuser", "clone_new_user", _no_args, PermissionError, EPERM, "seccomp",
        root=True,
    ),
    Probe(
        "mount-tmpfs", "mount_tmpfs",
        lambda e, s: [str(e.writable)], PermissionError, EPERM, "seccomp", root=True,
    ),
    Probe(
        "chroot", "chroot",
        lambda e, s: [str(e.writable)], PermissionError, EPERM, "seccomp", root=True,
    ),
    Probe(
        "setns-server-uts", "setns_uts",
        lambda e, s: [s.pid], PermissionError, EPERM, "seccomp", root=True,
    ),
    Probe("bpf-map-create", "bpf_map", _no_args, PermissionError, EPERM, "seccomp", root=True),
    Probe(
        "perf-event-open", "perf_event", _no_args, PermissionError, EPERM, "seccomp", root=True,
    ),
    Probe("keyctl", "keyctl", _no_args, PermissionError, EPERM, "seccomp"),
    Probe(
        "userfaultfd", "userfaultfd", _no_args, PermissionError, EPERM, "seccomp", root=True,
    ),
    Probe("io-uring-setup", "io_uring", _no_args, PermissionError, EPERM, "seccomp"),
    # Landlock does not cover watches: one on a directory names what others open in it
    Probe(
        "inotify-watch-outside-directory", "inotify_watch",
        lambda e, s: [str(e.outside), str(e.secret)], PermissionError, EPERM, "seccomp",
        proof=lambda e, a, r: _equal(r, f"saw opened: {e.secret.name}"),
    ),
    # -- resources: rlimits, the per-call CPU budget, no privilege to raise them -------------
    Probe(
        # --max-memory (2 GiB of address space by default) makes calloc fail
        "allocate-2-gib", "allocate", lambda e, s: [2 * GiB], MemoryError, None,
    ),
    Probe(
        "open-5000-files", "open_many",
        lambda e, s: [5000], OSError, r"\[Errno 24\] Too many open files",
    ),
    Probe(
        # the worker's own budget (SIGXCPU at the soft RLIMIT_CPU) interrupts the call
        "cpu-busy-loop", "burn_cpu",
        lambda e, s: [CPU_BUDGET + 1.1], errors.LimitExceeded, r"CPU seconds$",
    ),
    Probe(
        "raise-rlimit-as-then-allocate", "raise_memory_limit_and_allocate",
        lambda e, s: [2 * GiB], ValueError, "not allowed to raise maximum limit",
    ),
    Probe(
        "raise-rlimit-nofile-then-open", "raise_file_limit_and_open",
        lambda e, s: [5000], ValueError, "not allowed to raise maximum limit",
    ),
    # A call that raises its own soft limit or swallows the interruption gets past the
    # worker's budget; the server's backstop (it reads the worker's CPU time) kills the
    # worker a few seconds later, and the pool replaces it.
    Probe(
        "lift-cpu-budget-then-loop", "lift_cpu_limit_and_burn",
        _past_cpu_limit, errors.LimitExceeded, "CPU seconds; its worker was killed",
        timeout=CPU_PAST_LIMIT,
    ),
    Probe(
        "swallow-cpu-budget-interrupt", "ignore_cpu_limit_and_burn",
        _past_cpu_limit, errors.LimitExceeded, "CPU seconds; its worker was killed",
        timeout=CPU_PAST_LIMIT,
    ),
    # -- environment: an allowlist, secrets stay with the server ------------------------------
    *(_env_probe(name) for name in SECRET_VARS),
]  # fmt: skip


def _equal(actual: Any, expected: Any) -> None:
    assert actual == expected


def _running(pid: int) -> None:
    """``pid`` is alive and not left stopped by a tracer."""
    with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(") ", 1)[1].split()[0]
    assert state in ("R", "S", "D"), state


def _skip_reason(needs: str) -> str | None:
    if needs == "seccomp" and not SECCOMP:
        return "the seccomp layer is x86_64-only"
    if needs == "landlock" and LANDLOCK_ABI < 1:
        return "Landlock is not available in this kernel"
    return None


def _standard_params() -> list[Any]:
    params = []
    for p in PROBES:
        reason = _skip_reason(p.needs)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(p, id=p.id, marks=marks))
    return params


def _none_params() -> list[Any]:
    marks = [pytest.mark.skipif(not IS_ROOT, reason="escaping this needs root")]
    return [pytest.param(p, id=p.id, marks=marks if p.root else []) for p in PROBES]


@pytest.mark.parametrize("probe", _standard_params())
async def test_probe_is_blocked_at_standard(
    probe: Probe, env: Env, servers: dict[str, ServerProcess]
) -> None:
    srv = servers["standard"]
    args = probe.args(env, srv)
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(probe.blocked, match=probe.match):
            escaped = await client.call(P, probe.func, args, timeout=probe.timeout)
            print(f"{probe.id} escaped: {escaped!r}")
        assert await client.call("math", "sqrt", [4]) == 2.0  # the worker is fine


@pytest.mark.parametrize("probe", _none_params())
async def test_probe_escapes_at_none(
    probe: Probe, env: Env, servers: dict[str, ServerProcess]
) -> None:
    srv = servers["none"]
    args = probe.args(env, srv)
    async with snakebridge.Client(srv.address) as client:
        result = await client.call(P, probe.func, args, timeout=probe.timeout)
    assert isinstance(result, str) and result
    if probe.proof is not None:
        probe.proof(env, args, result)


# -- SIGIO through F_SETOWN: the probe cannot tell, the decoy can ---------------------------


@pytest.fixture
def decoy() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.skipif(LANDLOCK_ABI < 6, reason=f"Landlock ABI {LANDLOCK_ABI} < 6: no signal scope")
async def test_sigio_to_an_outside_process_is_dropped_at_standard(
    servers: dict[str, ServerProcess], decoy: subprocess.Popen[bytes]
) -> None:
    async with snakebridge.Client(servers["standard"].address) as client:
        await client.call(P, "sigio_to", [decoy.pid])
    await anyio.sleep(0.2)
    assert decoy.poll() is None, "SIGIO reached the decoy"


async def test_sigio_to_an_outside_process_kills_it_at_none(
    servers: dict[str, ServerProcess], decoy: subprocess.Popen[bytes]
) -> None:
    async with snakebridge.Client(servers["none"].address) as client:
        await client.call(P, "sigio_to", [decoy.pid])
    assert decoy.wait(5) == -signal.SIGIO  # its default action terminates


# -- ctypes at level strict ------------------------------------------------------------------


# At strict the worker forgets every ctypes module and class its sandbox code used (no
# loaded module holds ctypes, so none of its ready-made function pointers is reachable),
# and an audit hook refuses the import, every audited ctypes operation, the gc walks that
# would find the hook, and replacing a function's __code__ (which would disarm it).
CTYPES_ROUTES = [
    pytest.param(
        "ctypes_getpid", ImportError, "import of 'ctypes' is blocked by the strict sandbox",
        id="import-ctypes",
    ),
    pytest.param(
        "ctypes_from_loaded_modules", ImportError, "no loaded module holds ctypes",
        id="ctypes-held-by-a-loaded-module",
    ),
    pytest.param(
        "ctypes_held_function_pointer", ImportError, "no loaded module holds ctypes",
        id="function-pointer-made-before-the-block",
    ),
    pytest.param(
        "ctypes_after_disarming_the_audit_hook", PermissionError,
        "gc.get_objects is blocked by the strict sandbox",
        id="audit-hook-disarmed-from-python",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("func", "blocked", "what"), CTYPES_ROUTES)
async def test_ctypes_is_blocked_at_strict(
    func: str, blocked: type[BaseException], what: str, servers: dict[str, ServerProcess]
) -> None:
    async with snakebridge.Client(servers["strict"].address) as client:
        with pytest.raises(blocked, match=what):
            escaped = await client.call(P, func)
            print(f"{func} escaped: {escaped!r}")


@pytest.mark.parametrize("func", [p.values[0] for p in CTYPES_ROUTES])
async def test_ctypes_works_at_none(func: str, servers: dict[str, ServerProcess]) -> None:
    async with snakebridge.Client(servers["none"].address) as client:
        assert "ctypes" in await client.call(P, func)


# -- the call policy: names a client sends -----------------------------------------------------

Act = Callable[[snakebridge.Client, Env, str], Awaitable[Any]]  # client, env, marker path


@dataclass(frozen=True)
class Reach:
    id: str
    act: Act
    marks: bool = False  # at level none it creates the marker file
    why: str | None = None  # the refusal at level standard matches this (strict: any)


async def _dunder_attr(client: snakebridge.Client, env: Env, marker: str) -> Any:
    ref = await client.call_class("collections", "OrderedDict")
    return await client.get_attr(ref, "__class__")


def _touch(marker: str, _unused: Any) -> str:
    """Shipped to the worker as bare bytecode by ``_own_bytecode``."""
    with open(marker, "w"):
        pass
    return marker


def _own_bytecode(module: str, prefix: str = "") -> Act:
    """A client-built function: ``module.{prefix}CodeType`` from the fields of ``_touch``'s
    code (tuples made with call_class, which always returns refs), ``FunctionType`` around
    it, and functools.reduce to call it. No helper, no eval/exec/compile."""

    async def act(client: snakebridge.Client, env: Env, marker: str) -> Any:
        code = _touch.__code__

        async def tup(items: tuple[Any, ...]) -> Any:
            return await client.call_class("builtins", "tuple", [list(items)])

        fields = [
            code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_nlocals,
            code.co_stacksize, code.co_flags, code.co_code, await tup(code.co_consts),
            await tup(code.co_names), await tup(code.co_varnames), code.co_filename,
            code.co_name, code.co_qualname, code.co_firstlineno, code.co_linetable,
            code.co_exceptiontable, await tup(code.co_freevars), await tup(code.co_cellvars),
        ]  # fmt: skip
        remote_code = await client.call_class(module, f"{prefix}CodeType", fields)
        globals_ref = await client.call_class("builtins", "dict")
        fn = await client.call_class(module, f"{prefix}FunctionType", [remote_code, globals_ref])
        return await client.call("functools", "reduce", [fn, [marker, None]])

    return act


async def _logging_globals_field(client: snakebridge.Client, field: str, *, ref: bool) -> Any:
    """``string.Formatter().get_field("0.__globals__" + field, [logging.info])``: a format
    field walks dunder attributes that no name may spell, so this reaches objects the
    policy denies. It returns an (object, key) pair: as one ref (``ref``; call_class
    always returns one) or by value, the object in it a ref the worker did not vet (it
    vets the top level of a result), but vets whenever the ref is used."""
    formatter = await client.call_class("string", "Formatter")
    info = await client.get_module_attr("logging", "info")
    args = [f"0.__globals__{field}", [info], {}]
    if ref:
        return await client.call_class("string", "Formatter.get_field", [formatter, *args])
    return await client.call_method(formatter, "get_field", args)


async def _os_module_as_a_result(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """``operator.getitem`` returns the os module found in logging's globals: a call
    result that is denied (the worker vets what a call returns, not only names)."""
    pair = await _logging_globals_field(client, "[os]", ref=True)
    os_module = await client.call("operator", "getitem", [pair, 0])
    return await client.call_method(os_module, "system", [f"touch {marker}"])


async def _denied_ref_to_map(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """A ref to posix.system, got without naming it, given to map() (which would call it):
    a ref passed as an argument is vetted."""
    system, _ = await _logging_globals_field(client, "[os].system", ref=False)
    mapped = await client.call_class("builtins", "map", [system, [f"touch {marker}"]])
    return await client.call("builtins", "list", [mapped])


async def _escaped_if(got: Awaitable[Any], marker: str) -> Any:
    """Awaits ``got``; getting a value at all is the escape, so the client itself marks it."""
    value = await got
    Path(marker).touch()
    return value


async def _nested_denied_function(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """A library function returns os.system inside a list: the ref made for the item is
    vetted (not only when it is used later)."""
    _, system = await _escaped_if(client.call(P, "denied_in_a_list"), marker)
    mapped = await client.call_class("builtins", "map", [system, [f"touch {marker}"]])
    return await client.call("builtins", "list", [mapped])


async def _denied_stream_items(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """A generator yields os.system, alone and in a list, through a batched stream: the
    refs made for stream items are vetted like a call's result."""
    items = [x async for x in client.stream(P, "denied_items")]
    Path(marker).touch()
    mapped = await client.call_class("builtins", "map", [items[1], [f"touch {marker}"]])
    return await client.call("builtins", "list", [mapped])


async def _denied_stream_next_item(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """The same generator through StreamNext, one item per RPC."""
    it = await client.call(P, "denied_items")
    await client.stream_next(it)
    system = await client.stream_next(it)
    Path(marker).touch()
    mapped = await client.call_class("builtins", "map", [system, [f"touch {marker}"]])
    return await client.call("builtins", "list", [mapped])


def _if_secret(text: Any, marker: str) -> Any:
    if SECRET in str(text):  # the worker's os.environ (at level none it has the secret)
        Path(marker).touch()
    return text


async def _str_format_reads_environ(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """``str.format`` walks attributes named in its format string, dunders included."""
    info = await client.get_module_attr("logging", "info")
    text = await client.call("builtins", "str.format", ["{0.__globals__[os].environ}", info])
    return _if_secret(text, marker)


async def _formatter_vformat_reads_environ(
    client: snakebridge.Client, env: Env, marker: str
) -> Any:
    formatter = await client.call_class("string", "Formatter")
    info = await client.get_module_attr("logging", "info")
    text = await client.call_method(
        formatter, "vformat", ["{0.__globals__[os].environ}", [info], {}]
    )
    return _if_secret(text, marker)


async def _map_of_str_format(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """``str.format`` handed to ``map``: the worker never sees the format string as an
    argument of a call to a formatter."""
    fmt = await client.get_module_attr("builtins", "str.format")
    info = await client.get_module_attr("logging", "info")
    mapped = await client.call_class(
        "builtins", "map", [fmt, ["{0.__globals__[os].environ}"], [info]]
    )
    return _if_secret(await client.call("builtins", "list", [mapped]), marker)


async def _operator_call_of_a_dunder_method(
    client: snakebridge.Client, env: Env, marker: str
) -> Any:
    subclasses = await client.call(P, "a_dunder_method")
    found = await client.call("operator", "call", [subclasses])
    if len(found) > 10:
        Path(marker).touch()
    return len(found)


async def _type_hints_run_source(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """typing evaluates string annotations: Python source, run with eval."""
    source = f"__import__('os').system('touch {marker}')"
    namespace = {"__annotations__": {"x": source}, "__module__": "logging"}
    cls = await client.call_class("builtins", "type", ["Probe", (), namespace])
    return await client.call("typing", "get_type_hints", [cls])


async def _update_wrapper_poisons_a_module(
    client: snakebridge.Client, env: Env, marker: str
) -> Any:
    """``update_wrapper(wrapper, wrapped, assigned=names)`` is setattr(getattr()) for any
    names: here it replaces a module's function for every later caller."""
    module = await client.get_module_attr("xml", "dom.minidom")
    donor = await client.call_class("types", "SimpleNamespace", [], {"getDOMImplementation": 7})
    await client.call(
        "functools", "update_wrapper", [module, donor],
        {"assigned": ["getDOMImplementation"], "updated": []},
    )  # fmt: skip
    if await client.get_module_attr("xml", "dom.minidom.getDOMImplementation") == 7:
        Path(marker).touch()


def _probe_module(marker: str) -> str:
    return f"open({marker!r}, 'w').close()\n"


async def _write_in_cwd(client: snakebridge.Client, name: str, text: str) -> str:
    """Writes ``name`` into the worker's cwd (its scratch dir when sandboxed) with calls
    every level allows; returns the file's absolute path."""
    path = await client.call_class("pathlib", "Path", [name])
    await client.call_method(path, "write_text", [text])
    return str(await client.call("os.path", "abspath", [name]))


async def _pth_file_via_site(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """site.addsitedir runs the lines of a .pth file that start with "import"."""
    stem = f"sb_probe_{time.monotonic_ns()}"
    line = f"import os; open({marker!r}, 'w').close()\n"
    path = await _write_in_cwd(client, f"{stem}.pth", line)
    return await client.call("site", "addsitedir", [os.path.dirname(path)])


async def _unittest_discovery(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """Test discovery imports every matching file of a directory."""
    stem = f"test_sb_probe_{time.monotonic_ns()}"
    path = await _write_in_cwd(client, f"{stem}.py", _probe_module(marker))
    return await client.call(
        "unittest", "defaultTestLoader.discover", [os.path.dirname(path), f"{stem}.py"]
    )


async def _helper_loader(client: snakebridge.Client, env: Env, marker: str) -> Any:
    path = await _write_in_cwd(client, f"sb_probe_{time.monotonic_ns()}.py", _probe_module(marker))
    return await client.call("snakebridge_server.worker.helpers", "load_helpers", [[path]])


async def _policy_off_then_os_system(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """One set_attr on the policy class (a slots field replaced by a plain value) turns
    the worker's check off for every client; then a path the server lets through
    (logging.os.system) reaches posix.system."""
    cls = await client.get_module_attr("snakebridge_server.sandbox.policy", "CallPolicy")
    await client.set_attr(cls, "level", "none")
    return await client.call("logging", "os.system", [f"touch {marker}"])


async def _poison_a_module_function(client: snakebridge.Client, env: Env, marker: str) -> Any:
    """A module ref's function replaced: every later caller of minidom.parseString (any
    client of this worker) gets abs instead."""
    minidom = await client.get_module_attr("xml", "dom.minidom")
    original = await client.get_module_attr("xml.dom.minidom", "parseString")
    await client.set_attr(minidom, "parseString", await client.get_module_attr("builtins", "abs"))
    try:
        if await client.call("xml.dom.minidom", "parseString", [-3]) == 3:
            Path(marker).touch()
    finally:
        await client.set_attr(minidom, "parseString", original)


async def _poison_a_class(client: snakebridge.Client, env: Env, marker: str) -> Any:
    cls = await client.get_module_attr("fractions", "Fraction")
    await client.set_attr(cls, "probe_poison", 7)
    if await client.get_module_attr("fractions", "Fraction.probe_poison") == 7:
        Path(marker).touch()


async def _poison_a_function(client: snakebridge.Client, env: Env, marker: str) -> Any:
    fn = await client.get_module_attr("textwrap", "dedent")
    await client.set_attr(fn, "probe_poison", 7)
    if await client.get_module_attr("textwrap", "dedent.probe_poison") == 7:
        Path(marker).touch()


def _source_that_touches(marker: str) -> str:
    return f"open({marker!r}, 'w').close()"


class _Gadget:
    """Unpickling this runs os.system (the classic pickle gadget)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def _pickled_gadget(marker: str) -> bytes:
    import pickle

    return pickle.dumps(_Gadget(f"touch {marker}"))


REACHES: list[Reach] = [
    Reach("object-subclasses-walk", lambda c, e, m: c.call("builtins", "object.__subclasses__")),
    Reach("get-attr-dunder-class", _dunder_attr),
    Reach("builtins-eval", lambda c, e, m: c.call("builtins", "eval", ["6 * 7"])),
    Reach("builtins-exec", lambda c, e, m: c.call("builtins", "exec", ["x = 1"])),
    Reach("builtins-getattr", lambda c, e, m: c.call("builtins", "getattr", [1, "real"])),
    Reach("builtins-open", lambda c, e, m: c.call("builtins", "open", [str(e.secret)])),
    Reach(
        "logging-os-system",
        lambda c, e, m: c.call("logging", "os.system", [f"touch {m}"]),
        marks=True,
    ),
    Reach("os-environ", lambda c, e, m: c.get_module_attr("os", "environ")),
    Reach("os-module-via-an-allowed-module", lambda c, e, m: c.get_module_attr(P, "os")),
    Reach("posix-getpid-via-an-allowed-module", lambda c, e, m: c.call(P, "os.getpid")),
    Reach("importlib-import-os", lambda c, e, m: c.call("importlib", "import_module", ["os"])),
    Reach("subprocess-run", lambda c, e, m: c.call_dynamic("subprocess.run", [["true"]])),
    Reach(
        "pickle-loads-gadget",
        lambda c, e, m: c.call("pickle", "loads", [_pickled_gadget(m)]),
        marks=True,
    ),
    # code objects and functions built by the client, by name and by what a name resolves
    # to (dis.types.CodeType is builtins.code)
    Reach(
        "client-built-bytecode", _own_bytecode("types"), marks=True,
        why="'types.CodeType' is denied",
    ),
    Reach(
        "client-built-bytecode-via-dis", _own_bytecode("dis", "types."), marks=True,
        why="resolves to 'builtins.code'",
    ),
    # code given as a string to a module that runs it
    Reach(
        "timeit-runs-source",
        lambda c, e, m: c.call("timeit", "timeit", [_source_that_touches(m)], {"number": 1}),
        marks=True, why="'timeit' is denied",
    ),
    Reach(
        "pydoc-locate-os-system",
        lambda c, e, m: c.call("pydoc", "locate", ["os.system"]), why="'pydoc' is denied",
    ),
    # instances are vetted by their type's name: os.environ is an os._Environ
    Reach(
        "os-environ-via-logging",
        lambda c, e, m: c.get_module_attr("logging", "os.environ"),
        why="resolves to 'os._Environ'",
    ),
    # denied objects got without naming them: refused as a result and as an argument
    # (both got their ref from a format field walking __globals__, now refused itself)
    Reach(
        "os-module-as-a-call-result", _os_module_as_a_result, marks=True,
        why="format field '0.__globals__\\[os\\]' walks an attribute",
    ),
    Reach(
        "denied-ref-passed-to-map", _denied_ref_to_map, marks=True,
        why="format field '0.__globals__\\[os\\].system' walks an attribute",
    ),
    # -- issue #10: what a call hands out nested in a container is vetted too -----------------
    Reach(
        "denied-function-nested-in-a-result", _nested_denied_function, marks=True,
        why="resolves to 'posix.system'",
    ),
    Reach(
        "denied-function-as-a-stream-item", _denied_stream_items, marks=True,
        why="resolves to 'posix.system'",
    ),
    Reach(
        "denied-function-as-a-stream-next-item", _denied_stream_next_item, marks=True,
        why="resolves to 'posix.system'",
    ),
    Reach(
        "policy-class-nested-in-a-result",
        lambda c, e, m: _escaped_if(c.call(P, "runtime_in_a_dict"), m),
        marks=True, why="'snakebridge_server' is denied",
    ),
    # -- format strings and higher-order calls ----------------------------------------------
    Reach(
        "str-format-walks-attributes", _str_format_reads_environ, marks=True,
        why="format field '0.__globals__\\[os\\].environ' walks an attribute",
    ),
    Reach(
        "formatter-vformat-walks-attributes", _formatter_vformat_reads_environ, marks=True,
        why="walks an attribute",
    ),
    Reach(
        "str-format-given-to-map", _map_of_str_format, marks=True,
        why="formats with attribute access; it cannot be handed over as a ref",
    ),
    Reach(
        "dunder-method-given-to-operator-call", _operator_call_of_a_dunder_method, marks=True,
        why="private or dunder function",
    ),
    Reach(
        "typing-evaluates-a-string-annotation", _type_hints_run_source, marks=True,
        why="'typing.get_type_hints' is denied",
    ),
    Reach(
        "functools-update-wrapper-sets-any-attribute", _update_wrapper_poisons_a_module,
        marks=True, why="'functools.update_wrapper' is denied",
    ),
    # -- loaders that would execute a file the client wrote into its scratch dir -------------
    Reach(
        "site-addsitedir-runs-a-pth-file", _pth_file_via_site, marks=True,
        why="'site' is denied",
    ),
    Reach(
        "unittest-discovery-imports-a-file", _unittest_discovery, marks=True,
        why="'unittest' is denied",
    ),
    Reach(
        "helper-loader-runs-a-file", _helper_loader, marks=True,
        why="'snakebridge_server' is denied",
    ),
    # -- set_attr on what every caller shares -----------------------------------------------
    Reach(
        "set-attr-turns-the-worker-policy-off", _policy_off_then_os_system, marks=True,
        why="'snakebridge_server' is denied",
    ),
    Reach(
        "set-attr-replaces-a-module-function", _poison_a_module_function, marks=True,
        why="set_attr on module 'xml.dom.minidom' is not allowed",
    ),
    Reach(
        "set-attr-on-a-class", _poison_a_class, marks=True,
        why="set_attr on class 'fractions.Fraction' is not allowed",
    ),
    Reach(
        "set-attr-on-a-function", _poison_a_function, marks=True,
        why="set_attr on function 'textwrap.dedent' is not allowed",
    ),
]  # fmt: skip


def _policy_params() -> list[Any]:
    return [
        pytest.param(level, r, id=f"{level}-{r.id}")
        for level in ("standard", "strict")
        for r in REACHES
    ]


@pytest.mark.parametrize(("level", "reach"), _policy_params())
async def test_policy_refuses_the_name(
    level: str, reach: Reach, env: Env, servers: dict[str, ServerProcess]
) -> None:
    marker = env.fresh("policy-marker")
    why = reach.why if level == "standard" else None
    async with snakebridge.Client(servers[level].address) as client:
        with pytest.raises(errors.PolicyError, match=why):
            escaped = await reach.act(client, env, marker)
            print(f"{reach.id} escaped: {escaped!r}")
    assert not os.path.exists(marker)


@pytest.mark.parametrize("reach", [pytest.param(r, id=r.id) for r in REACHES])
async def test_policy_is_off_at_none(
    reach: Reach, env: Env, servers: dict[str, ServerProcess]
) -> None:
    marker = env.fresh("policy-marker")
    async with snakebridge.Client(servers["none"].address) as client:
        await reach.act(client, env, marker)
    assert os.path.exists(marker) == reach.marks


# -- the scratch dir is never on the import path ---------------------------------------------


async def _import_a_module_written_into_the_cwd(client: snakebridge.Client, marker: str) -> Any:
    """The worker's cwd (its scratch dir when sandboxed) was sys.path[0] (python -m): a
    module a client writes there would be importable by name."""
    stem = f"sb_probe_{time.monotonic_ns()}"
    await _write_in_cwd(client, f"{stem}.py", _probe_module(marker) + "def ping():\n return 1\n")
    return await client.call(stem, "ping")


async def test_a_module_written_into_the_scratch_dir_is_not_importable_at_standard(
    env: Env, servers: dict[str, ServerProcess]
) -> None:
    marker = env.fresh("scratch-import-marker")
    async with snakebridge.Client(servers["standard"].address) as client:
        with pytest.raises(ModuleNotFoundError, match="No module named 'sb_probe_"):
            await _import_a_module_written_into_the_cwd(client, marker)
        # Put back on sys.path by running code (as loaders do): still nothing found there.
        with pytest.raises(ModuleNotFoundError, match="No module named 'sb_cwd_probe_"):
            await client.call(P, "import_from_cwd_put_back_on_path", [marker])
        cwd, *path = await client.call(P, "import_path")
    assert not os.path.exists(marker)
    assert cwd not in path and all(os.path.isabs(p) for p in path), (cwd, path)


async def test_a_module_written_into_the_cwd_is_importable_at_none(
    env: Env, servers: dict[str, ServerProcess]
) -> None:
    marker = env.fresh("scratch-import-marker")
    async with snakebridge.Client(servers["none"].address) as client:
        assert await _import_a_module_written_into_the_cwd(client, marker) == 1
        assert os.path.exists(marker)
        os.unlink(marker)
        assert "imported" in await client.call(P, "import_from_cwd_put_back_on_path", [marker])
    assert os.path.exists(marker)


# -- what must keep working inside the sandbox -------------------------------------------------


@pytest.mark.parametrize("level", ["standard", "strict"])
async def test_legitimate_work_still_works(level: str, servers: dict[str, ServerProcess]) -> None:
    async with snakebridge.Client(servers[level].address) as client:
        for kind in ("stream", "seqpacket"):  # only datagram pairs are refused
            assert await client.call(P, "socketpair_roundtrip", [kind]) == "ping"
        assert await client.call(P, "numpy_sum", [10]) == 45.0
        cwd, home, tmpdir = await client.call(P, "scratch_roundtrip")
        assert cwd == home == tmpdir, (cwd, home, tmpdir)
        assert re.search(r"/default-0-\d+-[^/]+$", cwd), cwd  # pool default, slot 0
        assert await client.call(P, "threads", [8]) == 8
        assert await client.call(P, "event_loop") == 6
        assert await client.call(P, "stdlib_source") > 1000
        assert await client.call(P, "signal_self") == "ok"
        assert await client.call("math", "sqrt", [16]) == 4.0
        if level == "standard":
            assert await client.call("os.path", "join", ["a", "b"]) == "a/b"


# -- the level reached, as reported ------------------------------------------------------------


@pytest.mark.skipif(
    LANDLOCK_ABI < 1 or not SECCOMP, reason="needs Landlock and the x86_64 seccomp filter"
)
async def test_describe_and_log_report_the_level_reached(
    servers: dict[str, ServerProcess],
) -> None:
    for level, srv in servers.items():
        async with snakebridge.Client(srv.address) as client:
            (pool,) = (await client.describe()).pools
        layers = list(pool.sandbox_layers)
        assert pool.sandbox_level == level, layers
        srv.wait_for_log(rf"pool default: sandbox level {level} \(")
        if level == "none":
            assert layers == ["sandbox: off (level none)"]
            continue
        landlock_line = next(line for line in layers if line.startswith("landlock:"))
        assert landlock_line.startswith(f"landlock: ABI {LANDLOCK_ABI} (files"), layers
        assert ("scopes" in landlock_line) == (LANDLOCK_ABI >= 6), layers
        assert "seccomp: on" in layers, layers
        assert any(line.startswith("rlimits: core=0 as=") for line in layers), layers
        imports = [line for line in layers if line.startswith("imports:")]
        if level == "strict":
            assert imports and "ctypes" in imports[0], layers
        else:
            assert not imports, layers


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--min-sandbox", "strict", "--sandbox", "standard"], "'standard' is weaker than"),
        (["--min-sandbox", "standard", "--sandbox", "none"], "'none' is weaker than"),
    ],
    ids=["standard-below-strict", "none-below-standard"],
)
def test_a_level_below_min_sandbox_refuses_to_start(flags: list[str], message: str) -> None:
    done = run_bridge_server("--workers", "1", *flags)
    assert done.returncode == 2, done.stderr
    assert "invalid config sandbox:" in done.stderr and message in done.stderr, done.stderr


# -- a dedicated uid per worker (root only) -----------------------------------------------------


def _debian_worker_env() -> dict[str, str]:
    """PYTHONPATH that lets the Debian interpreter run the worker (and the server): this
    venv's site-packages, the sdk and server source trees, and tests/e2e."""
    if not IS_ROOT:
        pytest.skip("a dedicated worker uid needs a root server")
    if not os.access(DEBIAN_PYTHON, os.X_OK):
        pytest.skip(f"{DEBIAN_PYTHON} is not installed")
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the venv's compiled packages are for CPython 3.11")
    if LANDLOCK_ABI < 1:
        pytest.skip("Landlock is not available in this kernel")
    paths = [
        sysconfig.get_paths()["purelib"],
        str(Path(snakebridge.__file__).resolve().parents[1]),
        str(Path(snakebridge_server.__file__).resolve().parents[1]),
        str(HERE),
    ]
    stdlib = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    why = unreadable_by_others([DEBIAN_PYTHON, stdlib, *paths])
    if why is not None:
        pytest.skip(f"a dedicated uid could not run the worker: {why}")
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture
def uid_files() -> Iterator[Path]:
    """A read path (--sandbox-read-paths) with a 0644 and a 0600 root-owned file."""
    root = Path(tempfile.mkdtemp(prefix="snakebridge-uid-", dir="/var/tmp"))
    root.chmod(0o755)
    (root / "public.txt").write_text("public\n")
    (root / "public.txt").chmod(0o644)
    (root / "private.txt").write_text("root only\n")
    (root / "private.txt").chmod(0o600)
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def _check_dedicated_uid(srv: ServerProcess, files: Path, env: Env) -> None:
    async with snakebridge.Client(srv.address) as client:
        (pool,) = (await client.describe()).pools
        layers = list(pool.sandbox_layers)
        assert pool.sandbox_level == "standard", layers
        assert any(re.fullmatch(r"uid: 610\d\d", line) for line in layers), layers
        uid, euid, gid, egid = await client.call(P, "identity")
        assert uid == euid == gid == egid >= 61000
        assert "read 7 bytes" in await client.call(P, "read_file", [str(files / "public.txt")])
        # Landlock allows the directory; only the uid keeps the 0600 file out.
        with pytest.raises(PermissionError, match=EACCES):
            await client.call(P, "read_file", [str(files / "private.txt")])
        # Refused by the filter whatever the worker's uid.
        with pytest.raises(PermissionError, match=EPERM):
            await client.call(P, "prlimit_of", [srv.pid])
        with pytest.raises(PermissionError, match=EPERM):
            await client.call(P, "sysv_shm_read", [env.shmid])
        with pytest.raises(PermissionError, match=EPERM):
            await client.call(P, "set_inode_flags", [str(files / "public.txt")])
        # The filter lets a worker with a uid of its own change its own files' attributes;
        # on root's the kernel refuses (not the owner).
        with pytest.raises(PermissionError, match=EPERM):
            await client.call(P, "chmod", [str(files / "public.txt")])
        if _has_syscall(463):
            with pytest.raises(PermissionError, match=EITHER):
                await client.call(P, "setxattrat", [str(env.secret)])


async def test_a_root_server_runs_each_worker_under_its_own_uid(uid_files: Path, env: Env) -> None:
    worker_env = _debian_worker_env()
    srv = ServerProcess(
        "--workers", "1", "--python", DEBIAN_PYTHON, "--sandbox-read-paths", str(uid_files),
        env=worker_env,
    ).start()  # fmt: skip
    try:
        await _check_dedicated_uid(srv, uid_files, env)
    finally:
        assert srv.stop() == 0
