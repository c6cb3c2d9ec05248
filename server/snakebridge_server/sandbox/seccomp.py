"""A seccomp-BPF filter, assembled here (no libseccomp): denies the system calls a worker
never needs and that a hostile one would use to leave its box.

``build_filter`` is pure (a list of BPF instructions; the tests run it through a small BPF
interpreter); ``install`` loads it into the calling process. x86_64 only: on any other
architecture the layer reports itself as unavailable instead of guessing syscall numbers.
"""

from __future__ import annotations

import ctypes
import errno
import platform
from typing import Final

AUDIT_ARCH_X86_64: Final = 0xC000003E
X32_SYSCALL_BIT: Final = 0x40000000

RET_KILL_PROCESS: Final = 0x80000000
RET_ERRNO: Final = 0x00050000
RET_ALLOW: Final = 0x7FFF0000

# BPF opcodes
LD_W_ABS: Final = 0x20
JEQ_K: Final = 0x15
JGE_K: Final = 0x35
JSET_K: Final = 0x45
RET_K: Final = 0x06

# offsets into struct seccomp_data
OFF_NR: Final = 0
OFF_ARCH: Final = 4
OFF_ARG0_LO: Final = 16
OFF_ARG1_LO: Final = 24

CLONE_THREAD: Final = 0x00010000
CLONE_NAMESPACES: Final = (
    0x00000080  # NEWTIME
    | 0x00020000  # NEWNS
    | 0x02000000  # NEWCGROUP
    | 0x04000000  # NEWUTS
    | 0x08000000  # NEWIPC
    | 0x10000000  # NEWUSER
    | 0x20000000  # NEWPID
    | 0x40000000  # NEWNET
)

# x86_64 numbers. Denied outright with EPERM:
DENY: Final[dict[str, int]] = {
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "execveat": 322,
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "pidfd_open": 434,
    "pidfd_send_signal": 424,
    "pidfd_getfd": 438,
    "tkill": 200,
    "unshare": 272,
    "setns": 308,
    "mount": 165,
    "umount2": 166,
    "pivot_root": 155,
    "chroot": 161,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "bpf": 321,
    "perf_event_open": 298,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "reboot": 169,
    "swapon": 167,
    "swapoff": 168,
    "acct": 163,
    "settimeofday": 164,
    "clock_settime": 227,
    "adjtimex": 159,
    "clock_adjtime": 305,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "quotactl": 179,
    "open_by_handle_at": 304,
    "name_to_handle_at": 303,
    "lookup_dcookie": 212,
    # File-system watches: neither Landlock nor path rules cover them, so a worker could
    # watch the operator read files and learn names in directories it cannot list.
    "inotify_init": 253,
    "inotify_add_watch": 254,
    "inotify_init1": 294,
    "fanotify_init": 300,
    "fanotify_mark": 301,
    "mknod": 133,
    "mknodat": 259,
    "vhangup": 153,
    # System V IPC: keyed, not path-named, so Landlock cannot scope it; a worker with the
    # server's uid could attach the server's segments.
    "shmget": 29,
    "shmat": 30,
    "shmctl": 31,
    "semget": 64,
    "semop": 65,
    "semctl": 66,
    "shmdt": 67,
    "msgget": 68,
    "msgsnd": 69,
    "msgrcv": 70,
    "msgctl": 71,
    "semtimedop": 220,
}
# Denied when the worker has no dedicated uid: it then owns the server user's files, and
# Landlock does not govern changing their mode, owner, times or extended attributes.
FILE_OWNER_OPS: Final[dict[str, int]] = {
    "chmod": 90,
    "fchmod": 91,
    "fchmodat": 268,
    "fchmodat2": 452,
    "chown": 92,
    "fchown": 93,
    "lchown": 94,
    "fchownat": 260,
    "utime": 132,
    "utimes": 235,
    "futimesat": 261,
    "utimensat": 280,
    "setxattr": 188,
    "lsetxattr": 189,
    "fsetxattr": 190,
    "removexattr": 197,
    "lremovexattr": 198,
    "fremovexattr": 199,
    "setxattrat": 463,
    "removexattrat": 466,
    "file_setattr": 469,
}
SYS_IOCTL: Final = 16
# ioctls that change inode flags (immutable, append-only...) or fs attributes: denied.
IOCTL_SET_ATTRS: Final = (0x40086602, 0x40046602, 0x401C5820)  # FS_IOC_(32_)SETFLAGS, FSSETXATTR
SYS_SOCKET: Final = 41  # denied: workers get no new sockets (socketpair(2) stays allowed)
SYS_SOCKETPAIR: Final = 53  # stream pairs only: a datagram socket could sendto() any path
SOCK_DGRAM_BIT: Final = 0x2  # set in SOCK_DGRAM (2) and SOCK_RAW (3), not STREAM/SEQPACKET
SYS_PRLIMIT64: Final = 302  # only on itself (pid 0 or own pid): not on the server's limits
SYS_CLONE: Final = 56  # allowed only for threads, never with a new namespace
SYS_CLONE3: Final = 435  # ENOSYS: its flags are behind a pointer; glibc falls back to clone
SYS_KILL: Final = 62  # only to itself (pid == own pid, or 0: its own process group)
SYS_RT_SIGQUEUEINFO: Final = 129
SYS_TGKILL: Final = 234  # only to its own threads
SYS_RT_TGSIGQUEUEINFO: Final = 297
SYS_SECCOMP: Final = 317
SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_FILTER_FLAG_TSYNC: Final = 1
PR_SET_NO_NEW_PRIVS: Final = 38

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def supported() -> bool:
    return platform.machine() == "x86_64"


def build_filter(own_pid: int, *, deny_file_owner_ops: bool = False) -> list[Insn]:
    """The filter program for a worker whose pid is ``own_pid``; ``deny_file_owner_ops``
    for a worker that runs as the server's own uid."""
    # Assembled with symbolic forward jumps, resolved at the end.
    code: list[tuple[int, int | str, int | str, int]] = []

    def op(c: int, k: int = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        code.append((c, jt, jf, k))

    labels: dict[str, int] = {}

    def label(name: str) -> None:
        labels[name] = len(code)

    op(LD_W_ABS, OFF_ARCH)
    op(JEQ_K, AUDIT_ARCH_X86_64, jt=1)
    op(RET_K, RET_KILL_PROCESS)  # a syscall from another ABI: not ours to judge
    op(LD_W_ABS, OFF_NR)
    op(JGE_K, X32_SYSCALL_BIT, jt="eperm")
    denied = set(DENY.values())
    if deny_file_owner_ops:
        denied |= set(FILE_OWNER_OPS.values())
    for nr in sorted(denied):
        op(JEQ_K, nr, jt="eperm")
    op(JEQ_K, SYS_SOCKET, jt="eperm")
    op(JEQ_K, SYS_SOCKETPAIR, jt="socketpair")
    op(JEQ_K, SYS_PRLIMIT64, jt="self_or_group")
    op(JEQ_K, SYS_IOCTL, jt="ioctl")
    op(JEQ_K, SYS_CLONE3, jt="enosys")
    op(JEQ_K, SYS_CLONE, jt="clone")
    op(JEQ_K, SYS_KILL, jt="self_or_group")
    op(JEQ_K, SYS_RT_SIGQUEUEINFO, jt="self_or_group")
    op(JEQ_K, SYS_TGKILL, jt="self")
    op(JEQ_K, SYS_RT_TGSIGQUEUEINFO, jt="self")
    op(RET_K, RET_ALLOW)
    label("clone")
    op(LD_W_ABS, OFF_ARG0_LO)
    op(JSET_K, CLONE_NAMESPACES, jt="eperm")
    op(JSET_K, CLONE_THREAD, jt="allow", jf="eperm")
    label("self_or_group")
    op(LD_W_ABS, OFF_ARG0_LO)
    op(JEQ_K, 0, jt="allow")
    op(JEQ_K, own_pid, jt="allow", jf="eperm")
    label("self")
    op(LD_W_ABS, OFF_ARG0_LO)
    op(JEQ_K, own_pid, jt="allow", jf="eperm")
    label("socketpair")
    op(LD_W_ABS, OFF_ARG1_LO)
    op(JSET_K, SOCK_DGRAM_BIT, jt="eperm", jf="allow")
    label("ioctl")
    op(LD_W_ABS, OFF_ARG1_LO)
    for request in IOCTL_SET_ATTRS:
        op(JEQ_K, request, jt="eperm")
    op(RET_K, RET_ALLOW)
    # BPF only jumps forward: the verdicts come last.
    label("allow")
    op(RET_K, RET_ALLOW)
    label("eperm")
    op(RET_K, RET_ERRNO | errno.EPERM)
    label("enosys")
    op(RET_K, RET_ERRNO | errno.ENOSYS)

    program: list[Insn] = []
    for pc, (c, jt, jf, k) in enumerate(code):

        def rel(target: int | str, pc: int = pc) -> int:
            if isinstance(target, int):
                return target
            offset = labels[target] - pc - 1
            if not 0 <= offset <= 255:
                raise ValueError(f"jump to {target} out of range ({offset})")
            return offset

        program.append((c, rel(jt), rel(jf), k))
    return program


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def install(program: list[Insn]) -> None:
    """Load ``program`` for every thread of this process (irreversible)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    insns = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    prog = _SockFprog(len(program), insns)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if (
        libc.syscall(
            SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(prog)
        )
        != 0
    ):
        raise OSError(ctypes.get_errno(), "seccomp(SET_MODE_FILTER) failed")
