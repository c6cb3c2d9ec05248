"""What a call left behind in its worker: threads, open files, memory.

Runs in the server process (it reads the worker's ``/proc`` entries; the worker is not
asked, since code in it could lie).

Before a worker serves a session other than the one it served last, the server compares
a sample with the worker's baseline (taken before its first call): a worker with more
threads than at start, more than ``max_extra_fds`` extra open files, or RSS grown by more
than ``max_rss_growth`` bytes is recycled instead of handed over. ``leftover_reason`` is
the pure decision; ``sample`` the read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class Sample:
    threads: int
    fds: int
    rss: int  # bytes


def sample(pid: int) -> Sample | None:
    """The worker's threads, open fds and RSS now; None if it cannot be read. One read
    of ``/proc/<pid>/stat`` and one listing of its fds: ~40-130 µs, paid only when a
    worker changes sessions."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # After the ")" closing the command name: state is field 3; num_threads is 20
            # and rss (pages) 24, so indexes 17 and 21 of what follows.
            fields = f.read().rsplit(b")", 1)[1].split()
        threads, rss = int(fields[17]), int(fields[21]) * _PAGE
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return Sample(threads, fds, rss)


def leftover_reason(
    baseline: Sample, now: Sample, *, max_extra_fds: int, max_rss_growth: int
) -> str | None:
    """Why a worker may not serve another session, or None. 0 ``max_rss_growth``: RSS
    is not compared."""
    if now.threads > baseline.threads:
        return f"{now.threads - baseline.threads} thread(s) left running"
    if now.fds > baseline.fds + max_extra_fds:
        return f"{now.fds - baseline.fds} file descriptor(s) left open"
    if max_rss_growth and now.rss > baseline.rss + max_rss_growth:
        return f"RSS grew by {now.rss - baseline.rss} bytes"
    return None
