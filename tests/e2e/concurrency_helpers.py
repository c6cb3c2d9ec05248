"""Functions the concurrency tests call in their workers (on the server's PYTHONPATH).

Each rendezvous returns only once ``n`` calls of the same ``key`` are inside it at the
same time: on a worker that runs one call at a time it can never complete, so a test
that gets all ``n`` answers has proved the calls overlapped. No clocks are compared.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

_arrived: dict[str, int] = {}
_events: dict[str, asyncio.Event] = {}
_barriers: dict[str, threading.Barrier] = {}
_lock = threading.Lock()


async def rendezvous(n: int, key: str, timeout: float = 20.0) -> int:
    """Wait on the worker's event loop until ``n`` calls with ``key`` are waiting."""
    event = _events.setdefault(key, asyncio.Event())
    _arrived[key] = _arrived.get(key, 0) + 1
    if _arrived[key] >= n:
        event.set()
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        raise LookupError(f"rendezvous {key!r}: alone for {timeout}s") from None
    return os.getpid()


def thread_rendezvous(n: int, key: str, timeout: float = 20.0) -> int:
    """Wait in a thread until ``n`` calls with ``key`` are waiting (a barrier)."""
    with _lock:
        barrier = _barriers.setdefault(key, threading.Barrier(n, timeout=timeout))
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        raise LookupError(f"rendezvous {key!r}: alone for {timeout}s") from None
    return os.getpid()


async def sleep_noting_cancel(seconds: float, marker: str) -> str:
    """Sleep; if cancelled, write ``marker`` first (the test reads it)."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        with open(marker, "w") as f:
            f.write("cancelled")
        raise
    return "slept"


def block(seconds: float) -> str:
    """Sleep in C (time.sleep): a thread running this cannot be interrupted."""
    time.sleep(seconds)
    return "done"


async def pid() -> int:
    return os.getpid()


class Counter:
    def __init__(self) -> None:
        self.value = 0

    async def bump(self) -> int:
        await asyncio.sleep(0)
        self.value += 1
        return self.value


def make_counter() -> Counter:
    return Counter()


async def agen(n: int) -> object:
    """An async generator function (streamed)."""
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def die_until(path: str, times: int) -> int:
    """Kill this worker the first ``times`` calls (counted in the file at ``path``);
    then return how many calls there were."""
    try:
        with open(path) as f:
            count = int(f.read() or 0)
    except FileNotFoundError:
        count = 0
    count += 1
    with open(path, "w") as f:
        f.write(str(count))
    if count <= times:
        os._exit(3)
    return count


def twice(obj: object) -> list[object]:
    return [obj, obj]
