"""A named pool of worker processes.

``choose_worker`` is the pure routing decision; ``Pool`` is the async shell that starts
workers, replaces dead ones (new incarnation, with backoff) and closes them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from snakebridge.errors import PoolSaturated, PoolUnavailable, SessionLost

from .refids import WorkerKey
from .worker_handle import WorkerHandle, WorkerSpec, WorkerStartError

log = logging.getLogger("snakebridge.pool")


class _Routable(Protocol):
    @property
    def key(self) -> WorkerKey: ...
    @property
    def alive(self) -> bool: ...
    @property
    def in_flight(self) -> int: ...


W = TypeVar("W", bound=_Routable)


def choose_worker(
    workers: Sequence[W | None], *, previous: WorkerKey | None, strict: bool
) -> W | None:
    """The worker for a call that carries no refs.

    ``strict`` affinity sends it to the session's previous worker (``SessionLost`` if that
    worker has died since); otherwise the least-loaded live worker, lowest slot on ties.
    None when no worker is live.
    """
    live = [w for w in workers if w is not None and w.alive]
    if strict and previous is not None:
        for w in live:
            if w.key == previous:
                return w
        raise SessionLost(f"the session's worker {previous} has restarted (affinity='strict')")
    if not live:
        return None
    return min(live, key=lambda w: w.in_flight)


def restart_delay(recent_crashes: int) -> float:
    """Backoff before replacing a worker, growing with crashes in the last minute."""
    if recent_crashes <= 1:
        return 0.0
    return min(5.0, 0.05 * 2.0 ** (recent_crashes - 1))


class Pool:
    def __init__(
        self,
        name: str,
        size: int,
        spec: WorkerSpec,
        *,
        max_queued: int,
        on_worker_lost: Callable[[WorkerKey], None],
    ) -> None:
        self.name = name
        self.size = size
        self.spec = spec
        self.max_queued = max_queued
        self._on_worker_lost = on_worker_lost
        self.workers: list[WorkerHandle | None] = [None] * size
        self._incarnation = [0] * size
        self._crashes: deque[float] = deque(maxlen=64)
        self._any_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.restarts = 0

    def __repr__(self) -> str:
        return f"<Pool {self.name} size={self.size} live={self.live} in_flight={self.in_flight}>"

    @property
    def live(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.alive)

    @property
    def in_flight(self) -> int:
        return sum(w.in_flight for w in self.workers if w is not None)

    async def start(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for slot in range(self.size):
                    tg.create_task(self._start_slot(slot))
        except BaseException as exc:
            await self.close()
            errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            first = next((e for e in errors if isinstance(e, WorkerStartError)), errors[0])
            raise first from None

    async def _start_slot(self, slot: int) -> None:
        self._incarnation[slot] += 1
        key = WorkerKey(self.name, slot, self._incarnation[slot])
        handle = WorkerHandle(key, self.spec, self._worker_exited)
        self.workers[slot] = handle
        await handle.start()
        self._any_ready.set()

    def _worker_exited(self, handle: WorkerHandle) -> None:
        """Called synchronously by a handle that died unexpectedly."""
        self._on_worker_lost(handle.key)
        if self.live == 0:
            self._any_ready.clear()
        if self.closing:
            return
        now = time.monotonic()
        self._crashes.append(now)
        recent = sum(1 for t in self._crashes if now - t < 60.0)
        task = asyncio.get_running_loop().create_task(self._replace(handle, restart_delay(recent)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, dead: WorkerHandle, delay: float) -> None:
        await dead.exited.wait()
        slot = dead.key.slot
        while not self.closing:
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._start_slot(slot)
            except WorkerStartError as exc:
                log.error("pool %s: replacing worker slot %d failed: %s", self.name, slot, exc)
                delay = min(5.0, max(0.1, delay * 2))
                continue
            self.restarts += 1
            log.info("pool %s: worker slot %d replaced", self.name, slot)
            return

    def owner(self, key: WorkerKey) -> WorkerHandle:
        """The live worker ``key`` names; ``SessionLost`` if it has died since."""
        if not 0 <= key.slot < self.size:
            raise SessionLost(f"worker {key} does not exist")
        handle = self.workers[key.slot]
        if handle is None or handle.key != key or not handle.alive:
            raise SessionLost(f"worker {key}, which held this ref, has restarted or stopped")
        return handle

    def check_capacity(self) -> None:
        if self.closing:
            raise PoolUnavailable(f"pool {self.name!r} is shutting down")
        if self.in_flight >= self.max_queued:
            raise PoolSaturated(
                f"pool {self.name!r} has {self.max_queued} calls queued, its maximum"
            )

    async def pick(self, previous: WorkerKey | None, strict: bool) -> WorkerHandle:
        """A worker for a call without refs; waits for one to start when none is live."""
        while True:
            chosen = choose_worker(self.workers, previous=previous, strict=strict)
            if chosen is not None:
                return chosen
            if self.closing:
                raise PoolUnavailable(f"pool {self.name!r} is shutting down")
            if self.live == 0:
                self._any_ready.clear()
            await self._any_ready.wait()

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(w.close() for w in self.workers if w is not None), return_exceptions=True
        )
