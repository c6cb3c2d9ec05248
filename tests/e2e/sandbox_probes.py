"""Sandbox escape probes, run inside a worker: ``client.call("sandbox_probes", NAME, ARGS)``.

Each probe *attempts* one escape. If it gets through it returns a short string saying what
it achieved; if the sandbox stops it, the error the sandbox caused propagates (an
``OSError`` subclass, ``MemoryError``, ``ImportError``...). Probes that would change the
worker for good (a new namespace, a chroot, a mount) run in a forked child when ``fork``
works (level ``none``) and in the worker itself otherwise (where the sandbox must refuse
them). Targets outside the worker (ports, paths, pids) come from the test.

Imported by workers only (tests/e2e is on their PYTHONPATH). ``ctypes`` is imported inside
the probes that need it: at level ``strict`` importing it fails, and that must not keep
this module from loading.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import CodeType, FunctionType, ModuleType
from typing import Any

# x86_64 system call numbers
SYS_CLONE = 56
SYS_SYSLOG = 103
SYS_TGKILL = 234
SYS_KEYCTL = 250
SYS_PERF_EVENT_OPEN = 298
SYS_NAME_TO_HANDLE_AT = 303
SYS_OPEN_BY_HANDLE_AT = 304
SYS_PROCESS_VM_READV = 310
SYS_BPF = 321
SYS_USERFAULTFD = 323
SYS_IO_URING_SETUP = 425
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
SYS_SETXATTRAT = 463
SYS_REMOVEXATTRAT = 466
SYS_FILE_GETATTR = 468
SYS_FILE_SETATTR = 469

SIGCHLD = 17
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
WALL = 0x40000000
SYSLOG_ACTION_READ_ALL = 3
KEYCTL_GET_KEYRING_ID = 0
KEY_SPEC_SESSION_KEYRING = -3
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2
PERF_TYPE_SOFTWARE = 1
SHM_RDONLY = 0o10000
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
AT_FDCWD = -100


def _libc() -> Any:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> int:
    if result < 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _syscall(nr: int, *args: Any) -> int:
    """syscall(2), every integer passed as a full long (a variadic int leaves the upper
    half of its register undefined)."""
    import ctypes

    longs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(_libc().syscall(ctypes.c_long(nr), *longs), f"syscall {nr}")


def _isolated(action: Callable[[], object]) -> str:
    """``action()`` in a forked child if this process may fork, else right here. The
    child's errno (or 0) is its exit code; a failure raises the matching OSError."""
    try:
        pid = os.fork()
    except PermissionError:
        action()
        return "in the worker itself"
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            action()
        except OSError as exc:
            code = exc.errno or 254
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise OSError(code, f"in a forked child: {os.strerror(code)}")
    return "in a forked child"


def _unique(directory: str, stem: str) -> str:
    return os.path.join(directory, f"{stem}-{os.getpid()}-{time.monotonic_ns()}")


# -- network -------------------------------------------------------------------------------


def tcp_connect(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"probe")
    return f"connected to 127.0.0.1:{port}"


def tcp_listen() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        return f"listening on {s.getsockname()}"


def udp_send(port: int, payload: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload.encode(), ("127.0.0.1", port))
    return f"sent a datagram to 127.0.0.1:{port}"


def unix_connect(address: str, payload: str) -> str:
    """A stream connection to an AF_UNIX socket; ``address`` starting with "@" is abstract."""
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(target)
        s.sendall(payload.encode())
    return f"connected to {address}"


def unix_dgram_sendto(address: str, payload: str) -> str:
    """A datagram to a named AF_UNIX socket, sent from one end of a socketpair (so
    socket(2) is never called); ``address`` starting with "@" is abstract."""
    target = "\0" + address[1:] if address.startswith("@") else address
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.sendto(payload.encode(), target)
    return f"sent a datagram to {address}"


def netlink_route() -> str:
    """A netlink socket: the kernel's network configuration."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:
        s.bind((0, 0))
    return "opened a NETLINK_ROUTE socket"


# -- files ---------------------------------------------------------------------------------


def read_file(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    return f"read {len(data)} bytes of {path}"


def read_environ_of(pid: int, name: str) -> str:
    """The value of ``name`` in another process's environment, through /proc."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        entries = f.read().split(b"\0")
    prefix = name.encode() + b"="
    for entry in entries:
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode()
    raise LookupError(f"{name} is not in /proc/{pid}/environ")


def read_via_proc_root(path: str) -> str:
    """The same file through /proc/self/root, a magic link to the file-system root."""
    return read_file("/proc/self/root" + path)


def list_dir(path: str) -> str:
    return f"{path} holds {len(os.listdir(path))} entries"


def write_new_file(directory: str) -> str:
    path = _unique(directory, "probe")
    with open(path, "x") as f:
        f.write("written by a sandbox probe\n")
    return f"created {path}"


def append_to(path: str) -> str:
    with open(path, "a") as f:
        f.write("appended by a sandbox probe\n")
    return f"appended to {path}"


def remove(path: str) -> str:
    os.unlink(path)
    return f"removed {path}"


def chmod(path: str) -> str:
    """chmod to the file's current mode (a no-op that proves any mode would do)."""
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode))
    return f"chmod {path}"


def symlink_and_read(target: str, directory: str) -> str:
    link = _unique(directory, "symlink")
    os.symlink(target, link)
    try:
        return read_file(link)
    finally:
        os.unlink(link)


def hardlink_and_read(target: str, directory: str) -> str:
    link = _unique(directory, "hardlink")
    os.link(target, link)
    try:
        return read_file(link)
    finally:
        os.unlink(link)


def make_device(directory: str) -> str:
    """A character device node (/dev/null's numbers): the door to raw devices."""
    path = _unique(directory, "dev")
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.unlink(path)
    return f"made a device node at {path}"


def write_big_file(directory: str, size: int) -> str:
    path = _unique(directory, "big")
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * size)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return f"wrote {size} bytes"


def open_by_handle(path: str) -> str:
    """name_to_handle_at + open_by_handle_at ("shocker"): a file opened by its inode,
    past every path-based check."""
    import ctypes

    class FileHandle(ctypes.Structure):
        _fields_ = [
            ("handle_bytes", ctypes.c_uint),
            ("handle_type", ctypes.c_int),
            ("f_handle", ctypes.c_ubyte * 128),
        ]

    handle = FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    name = path.encode()
    _syscall(SYS_NAME_TO_HANDLE_AT, AT_FDCWD, name, ctypes.byref(handle), ctypes.byref(mount_id), 0)
    mount_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _syscall(SYS_OPEN_BY_HANDLE_AT, mount_fd, ctypes.byref(handle), os.O_RDONLY)
    finally:
        os.close(mount_fd)
    with os.fdopen(fd, "rb") as f:
        return f"read {len(f.read())} bytes of {path} by handle"


def set_inode_flags(path: str) -> str:
    """ioctl(FS_IOC_SETFLAGS) on a file opened read-only (to its current flags, a no-op):
    an inode's owner may change its flags without any write access."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        flags = fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8)
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags)
    finally:
        os.close(fd)
    return f"set the inode flags of {path}"


def setxattrat(path: str) -> str:
    """setxattrat(2) (Linux 6.13): set and remove a user.* extended attribute of a file by
    path, without opening it."""
    import ctypes

    value = b"probe"

    class XattrArgs(ctypes.Structure):
        _fields_ = [
            ("value", ctypes.c_uint64),
            ("size", ctypes.c_uint32),
            ("flags", ctypes.c_uint32),
        ]

    buf = ctypes.create_string_buffer(value)
    args = XattrArgs(ctypes.cast(buf, ctypes.c_void_p).value or 0, len(value), 0)
    name = b"user.snakebridge-probe"
    _syscall(SYS_SETXATTRAT, AT_FDCWD, path.encode(), 0, name, ctypes.byref(args), 16)
    _syscall(SYS_REMOVEXATTRAT, AT_FDCWD, path.encode(), 0, name)
    return f"set and removed an extended attribute of {path}"


def file_setattr(path: str) -> str:
    """file_setattr(2) (Linux 6.17): an inode's flags by path (to its current ones)."""
    import ctypes

    attr = (ctypes.c_uint8 * 24)()
    _syscall(SYS_FILE_GETATTR, AT_FDCWD, path.encode(), ctypes.byref(attr), 24, 0)
    _syscall(SYS_FILE_SETATTR, AT_FDCWD, path.encode(), ctypes.byref(attr), 24, 0)
    return f"set the inode attributes of {path}"


# -- processes -----------------------------------------------------------------------------


def fork_once() -> str:
    """One fork (the bounded stand-in for a fork bomb): the child exits at once."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return f"forked a child that exited with {os.waitstatus_to_exitcode(status)}"


def run_true() -> str:
    done = subprocess.run(["true"], check=True)
    return f"ran `true` (exit {done.returncode})"


def os_system(marker: str) -> str:
    status = os.system(f"touch {marker}")
    if not os.path.exists(marker):
        raise ChildProcessError(f"os.system returned {status}; {marker} was not created")
    return f"os.system created {marker}"


def exec_shell(marker: str) -> str:
    """execve of a shell: in a forked child when possible, else in place (if the sandbox
    allowed that, the shell would replace the worker: the test then sees a crash)."""

    def run() -> None:
        os.execv("/bin/sh", ["sh", "-c", f"touch {marker}"])

    _isolated(run)
    if not os.path.exists(marker):
        raise ChildProcessError(f"{marker} was not created")
    return f"a shell created {marker}"


def send_signal(pid: int, sig: int) -> str:
    os.kill(pid, sig)
    return f"kill({pid}, {sig}) succeeded"


def tgkill(pid: int) -> str:
    _syscall(SYS_TGKILL, pid, pid, 0)
    return f"tgkill({pid}, {pid}, 0) succeeded"


def sigio_to(pid: int) -> str:
    """SIGIO through F_SETOWN: the kernel signals ``pid`` when data arrives on a socket
    this process owns (kill(2) is never called). Returns either way: the test checks
    whether ``pid`` got the signal."""
    import fcntl

    a, b = socket.socketpair()
    with a, b:
        fcntl.fcntl(a, fcntl.F_SETOWN, pid)
        fcntl.fcntl(a, fcntl.F_SETFL, fcntl.fcntl(a, fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)
        b.send(b"x")
        time.sleep(0.05)
    return f"fired SIGIO at {pid}"


def ptrace_attach(pid: int) -> str:
    """PTRACE_ATTACH (the target stops), wait for the stop, PTRACE_DETACH at once."""
    import ctypes

    libc = _libc()
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    _check(libc.ptrace(PTRACE_ATTACH, pid, None, None), "ptrace(PTRACE_ATTACH)")
    try:
        os.waitpid(pid, WALL)
    finally:
        _check(libc.ptrace(PTRACE_DETACH, pid, None, None), "ptrace(PTRACE_DETACH)")
    return f"ptrace-attached to {pid}"


def read_memory_of(pid: int, address: int) -> str:
    """process_vm_readv: 64 bytes of another process's memory, without stopping it."""
    import ctypes

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    buf = ctypes.create_string_buffer(64)
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 64)
    remote = IoVec(ctypes.c_void_p(address), 64)
    n = _syscall(SYS_PROCESS_VM_READV, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return f"read {n} bytes of pid {pid}'s memory at {address:#x}"


def steal_fd_of(pid: int) -> str:
    """pidfd_open + pidfd_getfd: a duplicate of another process's file descriptor 0."""
    pidfd = _syscall(SYS_PIDFD_OPEN, pid, 0)
    try:
        os.close(_syscall(SYS_PIDFD_GETFD, pidfd, 0, 0))
    finally:
        os.close(pidfd)
    return f"took a copy of pid {pid}'s fd 0"


def prlimit_of(pid: int) -> str:
    """prlimit(2) on another process, setting its RLIMIT_CORE to what it is (a no-op that
    proves any value would do: RLIMIT_NOFILE 0 or RLIMIT_CPU 1 for the server)."""
    current = resource.prlimit(pid, resource.RLIMIT_CORE)
    resource.prlimit(pid, resource.RLIMIT_CORE, current)
    return f"set pid {pid}'s RLIMIT_CORE"


def renice(pid: int) -> str:
    """setpriority of another process (to its current nice value, a no-op)."""
    os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, pid))
    return f"set pid {pid}'s nice value"


def set_affinity_of(pid: int) -> str:
    """sched_setaffinity of another process (to its current mask, a no-op)."""
    os.sched_setaffinity(pid, os.sched_getaffinity(pid))
    return f"set pid {pid}'s CPU affinity"


def read_kernel_log() -> str:
    """syslog(2) READ_ALL: the host's kernel ring buffer."""
    import ctypes

    buf = ctypes.create_string_buffer(4096)
    n = _syscall(SYS_SYSLOG, SYSLOG_ACTION_READ_ALL, buf, len(buf))
    return f"read {n} bytes of the kernel log"


def sysv_shm_read(shmid: int) -> str:
    """Attach another process's System V shared memory segment and return its text (IPC
    objects are found by number, not by path: Landlock does not see them)."""
    import ctypes

    libc = _libc()
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    addr = libc.shmat(shmid, None, SHM_RDONLY)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        _check(-1, "shmat")
    try:
        data = ctypes.string_at(addr, 64)
    finally:
        libc.shmdt(ctypes.c_void_p(addr))
    return data.split(b"\0")[0].decode()


def posix_mq_open(name: str) -> str:
    libc = _libc()
    mqd = _check(libc.mq_open(name.encode(), os.O_RDONLY), "mq_open")
    libc.mq_close(mqd)
    return f"opened message queue {name}"


# -- namespaces and kernel interfaces -----------------------------------------------------


def unshare_user() -> str:
    def run() -> None:
        _check(_libc().unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")

    return "unshare(CLONE_NEWUSER) " + _isolated(run)


def clone_new_user() -> str:
    """A raw clone(CLONE_NEWUSER | SIGCHLD): a child process in a new user namespace."""
    import ctypes

    flags = ctypes.c_long(CLONE_NEWUSER | SIGCHLD)
    zero = ctypes.c_long(0)
    pid = _libc().syscall(ctypes.c_long(SYS_CLONE), flags, zero, zero, zero, zero)
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    _check(pid, "clone(CLONE_NEWUSER)")
    os.waitpid(pid, 0)
    return "cloned a child into a new user namespace"


def mount_tmpfs(directory: str) -> str:
    """Mount a tmpfs on ``directory``: in a forked child's private mount namespace when
    the worker may fork; else in place (unmounted at once if the sandbox let it through)."""

    import ctypes

    def run() -> None:
        libc = _libc()
        private, plain = ctypes.c_ulong(MS_REC | MS_PRIVATE), ctypes.c_ulong(0)
        if libc.unshare(CLONE_NEWNS) == 0:
            _check(libc.mount(b"none", b"/", None, private, None), "make-private")
        _check(libc.mount(b"tmpfs", directory.encode(), b"tmpfs", plain, None), "mount")
        libc.umount2(directory.encode(), MNT_DETACH)

    return "mounted a tmpfs " + _isolated(run)


def chroot(directory: str) -> str:
    return "chroot " + _isolated(lambda: os.chroot(directory))


def setns_uts(pid: int) -> str:
    """Join ``pid``'s UTS namespace through /proc/PID/ns/uts. If that cannot be opened,
    setns(2) is still tried on fd 0, which only a system-call filter refuses with EPERM
    (the kernel says EINVAL: fd 0 is no namespace)."""

    def run() -> None:
        libc = _libc()
        try:
            fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY)
        except PermissionError:
            _check(libc.setns(0, CLONE_NEWUTS), "setns(0)")
            return
        try:
            _check(libc.setns(fd, CLONE_NEWUTS), f"setns(/proc/{pid}/ns/uts)")
        finally:
            os.close(fd)

    return "setns " + _isolated(run)


def bpf_map() -> str:
    import ctypes

    attr = (ctypes.c_uint32 * 32)(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    os.close(_syscall(SYS_BPF, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr)))
    return "created a BPF map"


def perf_event() -> str:
    import ctypes

    attr = (ctypes.c_uint32 * 32)(PERF_TYPE_SOFTWARE, 128)  # config 0: cpu-clock
    os.close(_syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), 0, -1, -1, 0))
    return "opened a perf event"


def keyctl() -> str:
    key = _syscall(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
    return f"reached the session keyring {key}"


def userfaultfd() -> str:
    os.close(_syscall(SYS_USERFAULTFD, os.O_CLOEXEC))
    return "opened a userfaultfd"


def io_uring() -> str:
    import ctypes

    params = (ctypes.c_uint8 * 120)()
    os.close(_syscall(SYS_IO_URING_SETUP, 1, ctypes.byref(params)))
    return "set up an io_uring"


def inotify_watch(directory: str, victim: str) -> str:
    """Watch ``directory`` for opens (as if another process read ``victim`` in it) and
    return the names the events carry: a watch needs no right to list the directory."""
    import struct

    in_open, in_nonblock = 0x20, os.O_NONBLOCK
    libc = _libc()
    fd = _check(libc.inotify_init1(in_nonblock | os.O_CLOEXEC), "inotify_init1")
    try:
        _check(libc.inotify_add_watch(fd, directory.encode(), in_open), "inotify_add_watch")
        with open(victim, "rb"):  # stands in for the operator opening the file
            pass
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    names, off = [], 0
    while off + 16 <= len(data):
        _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, off)
        names.append(data[off + 16 : off + 16 + length].rstrip(b"\0").decode())
        off += 16 + length
    return "saw opened: " + ",".join(names)


# -- resources -----------------------------------------------------------------------------


def allocate(size: int) -> str:
    """``bytes(size)``: zeroed by calloc, so the pages are reserved but not touched
    (``bytearray`` would memset them: seconds for 2 GiB)."""
    block = bytes(size)
    del block
    return f"allocated {size} bytes"


def open_many(count: int) -> str:
    fds: list[int] = []
    try:
        for _ in range(count):
            fds.append(os.open(os.devnull, os.O_RDONLY))
    finally:
        for fd in fds:
            os.close(fd)
    return f"opened {count} files"


def burn_cpu(seconds: float) -> str:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return f"burned {seconds}s of CPU"


def _past_the_cpu_limit(margin: float) -> float:
    """CPU seconds until ``margin`` past this process's soft RLIMIT_CPU (``margin`` when
    there is none)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_CPU)
    if soft == resource.RLIM_INFINITY:
        return margin
    return max(soft - time.process_time(), 0.0) + margin


def raise_memory_limit_and_allocate(size: int) -> str:
    """Lift RLIMIT_AS, hard limit included (CAP_SYS_RESOURCE), and allocate past it."""
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return allocate(size)


def raise_file_limit_and_open(count: int) -> str:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
    return open_many(count)


def lift_cpu_limit_and_burn(margin: float) -> str:
    """The per-call CPU budget is RLIMIT_CPU's soft limit: move it up (to the hard limit,
    which needs no privilege) and burn past where it was."""
    seconds = _past_the_cpu_limit(margin)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    return burn_cpu(seconds)


def ignore_cpu_limit_and_burn(margin: float) -> str:
    """Swallow whatever the budget's signal raises and keep burning past the limit."""
    end = time.process_time() + _past_the_cpu_limit(margin)
    interruptions = 0
    while time.process_time() < end:
        try:
            while time.process_time() < end:
                pass
        except BaseException:
            interruptions += 1
    return f"burned past the CPU limit, swallowing {interruptions} interruption(s)"


# -- environment ---------------------------------------------------------------------------


def env_var(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise LookupError(f"{name} is not in the worker's environment")
    return value


# -- the strict level ------------------------------------------------------------------------


def ctypes_getpid() -> str:
    import ctypes

    return f"ctypes.CDLL(None).getpid() = {ctypes.CDLL(None).getpid()}"


def _held_ctypes() -> tuple[str, ModuleType]:
    """ctypes without importing it: a module loaded before the import block (the
    sandbox's own landlock and seccomp) holds it as a global."""
    for name, module in list(sys.modules.items()):
        found = getattr(module, "ctypes", None)
        if isinstance(found, ModuleType):
            return name, found
    raise ImportError("no loaded module holds ctypes")


def ctypes_from_loaded_modules() -> str:
    """A library loaded and a function called through the held ctypes."""
    name, ctypes = _held_ctypes()
    return f"via {name}.ctypes: getpid() = {ctypes.CDLL(None).getpid()}"


def ctypes_held_function_pointer() -> str:
    """A foreign function made before the import block (``ctypes.memmove``, made when
    ctypes was imported) called on raw addresses: loads no library, looks up no symbol,
    makes no ctypes object. Here it reads an object's header into a bytes object (whose
    data starts 32 bytes in, on 64-bit CPython 3.11): any address reads and writes."""
    name, ctypes = _held_ctypes()
    target, into = object(), bytes(16)
    ctypes.memmove(id(into) + 32, id(target), 16)  # ob_refcnt, ob_type
    if int.from_bytes(into[8:16], sys.byteorder) != id(object):
        raise AssertionError("memmove read something else")
    return f"via {name}.ctypes.memmove: read the worker's memory (pid {os.getpid()})"


def ctypes_after_disarming_the_audit_hook() -> str:
    """The strict block is a Python audit hook, a function found with gc like any other:
    give it a do-nothing body (setting ``__code__`` is not a ctypes event), use ctypes,
    and put the body back (so the tests that follow see the worker as it was)."""
    import gc

    def body(names: object) -> CodeType:
        def hook(event: str, args: tuple[Any, ...]) -> object:
            return names and None  # refers to ``names``: one free variable, like the hook

        return hook.__code__

    hooks = [
        f
        for f in gc.get_objects()
        if isinstance(f, FunctionType) and f.__qualname__ == "block_imports.<locals>.hook"
    ]
    saved = [f.__code__ for f in hooks]
    try:
        for f in hooks:
            f.__code__ = body(None)
        import ctypes

        pid = ctypes.CDLL(None).getpid()
    finally:
        for f, code in zip(hooks, saved, strict=True):
            f.__code__ = code
        for name in [n for n in sys.modules if n.split(".")[0] in ("ctypes", "_ctypes")]:
            del sys.modules[name]  # as the block left them: the next import is refused
    return f"{len(hooks)} hook(s) disarmed: ctypes.CDLL(None).getpid() = {pid}"


# -- what must keep working ----------------------------------------------------------------


SOCKET_TYPES = {
    "stream": socket.SOCK_STREAM,
    "seqpacket": socket.SOCK_SEQPACKET,
    "dgram": socket.SOCK_DGRAM,
}


def socketpair_roundtrip(kind: str = "stream") -> str:
    """A connected AF_UNIX pair of type ``kind``, "ping" sent one way."""
    a, b = socket.socketpair(socket.AF_UNIX, SOCKET_TYPES[kind])
    with a, b:
        a.send(b"ping")
        return b.recv(4).decode()


def numpy_sum(n: int) -> float:
    import numpy

    return float(numpy.arange(n, dtype=numpy.float64).sum())


# -- library functions that hand out what the policy hides (as pydoc.locate would) ----------


def denied_in_a_list() -> list[Any]:
    """os.system, nested in a list: vetted as the list's item, as it would be alone."""
    return [1, os.system]


def denied_items() -> Iterator[Any]:
    """A generator that yields os.system, alone and nested in a list."""
    yield 1
    yield os.system
    yield [os.system]


def runtime_in_a_dict() -> dict[str, Any]:
    """The worker's call policy class, nested in a dict."""
    from snakebridge_server.sandbox.policy import CallPolicy

    return {"policy": CallPolicy}


def a_dunder_method() -> Any:
    """``object.__subclasses__``: a function no name may reach, handed out as a value."""
    return object.__subclasses__


def import_from_cwd_put_back_on_path(marker: str) -> str:
    """Write a module into the cwd, put the cwd back on sys.path (as unittest discovery
    and site.addsitedir do) and import it."""
    import importlib

    name = f"sb_cwd_probe_{os.getpid()}_{time.monotonic_ns()}"
    with open(f"{name}.py", "w") as f:
        f.write(f"open({marker!r}, 'w').close()\n")
    sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(name)
    finally:
        sys.path.remove(os.getcwd())
    return f"imported {name} from {os.getcwd()}"


def import_path() -> list[str]:
    """[cwd, *sys.path] of the worker."""
    return [os.getcwd(), *sys.path]


def scratch_roundtrip() -> list[str]:
    """Write and read back a file in TMPDIR and one in the cwd; returns [cwd, HOME, TMPDIR]."""
    import tempfile

    with tempfile.NamedTemporaryFile("w+") as f:
        f.write("hello")
        f.flush()
        f.seek(0)
        if f.read() != "hello":
            raise AssertionError("read back something else")
    with open("local-file", "w") as g:
        g.write("x")
    os.unlink("local-file")
    return [os.getcwd(), os.environ.get("HOME", ""), os.environ.get("TMPDIR", "")]


def threads(count: int) -> int:
    results: list[int] = []
    started = [threading.Thread(target=results.append, args=(i,)) for i in range(count)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    return len(results)


def event_loop() -> int:
    async def main() -> int:
        await asyncio.sleep(0.001)
        return sum(await asyncio.gather(*(asyncio.sleep(0, result=i) for i in range(4))))

    return asyncio.run(main())


def stdlib_source() -> int:
    with open(os.__file__, "rb") as f:
        return len(f.read())


def signal_self() -> str:
    os.kill(os.getpid(), 0)
    os.kill(0, 0)  # its own process group
    return "ok"


def identity() -> list[int]:
    return [os.getuid(), os.geteuid(), os.getgid(), os.getegid()]
