"""Handing a worker to a call: nothing inherited, nothing wedged (the async shell).

Runs in the server process.

Before an idle worker runs a call of a session other than the one it served last, the
server compares what the worker holds now with its baseline (``supervisor/leftovers.py``:
threads left running, extra open files, grown memory) and recycles a worker that a call
left something in, rather than hand it over. A worker idle for more than
``IDLE_PING_AFTER`` is first pinged (an empty release, which every worker answers at
once) under ``heartbeat_timeout``: a worker that does not answer is wedged (a thread
holding the GIL, say), and is killed and replaced instead of keeping the next caller
waiting for its whole timeout. (Back-to-back calls are not pinged: a round trip each
would cost ~10% of a small call; a thread one call leaves is caught by the leftovers
check before another session gets the worker.)

``Handover`` remembers, per worker, its baseline, who it served last and when.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from snakebridge.errors import BridgeError

from .config import PoolConfig
from .refids import WorkerKey
from .supervisor.handle import WorkerHandle
from .supervisor.leftovers import Sample, leftover_reason, sample
from .supervisor.pool import Pool

log = logging.getLogger("snakebridge.bridge")

MAX_DEAD: Final = 256  # dead workers whose last session is remembered
IDLE_PING_AFTER: Final = 1.0  # seconds idle after which a worker is pinged even for its own session


class Handover:
    def __init__(self, pools: dict[str, PoolConfig]) -> None:
        self._configs = pools
        self._baseline: dict[WorkerKey, Sample] = {}
        self._served: dict[WorkerKey, tuple[str, str]] = {}  # (tenant, session) served last
        self._used: dict[WorkerKey, float] = {}  # when it was last handed a call
        # Who dead workers served last: the pool asks after it reported the death.
        self._dead: dict[WorkerKey, tuple[str, str]] = {}

    def forget(self, key: WorkerKey) -> None:
        """The worker is gone."""
        self._baseline.pop(key, None)
        self._used.pop(key, None)
        who = self._served.pop(key, None)
        if who is not None:
            self._dead[key] = who
            while len(self._dead) > MAX_DEAD:
                del self._dead[next(iter(self._dead))]

    def served_by(self, key: WorkerKey) -> str | None:
        """Who a worker's last call was for (the one running, on a serial worker): the
        source of a crash for fault accounting."""
        who = self._served.get(key) or self._dead.get(key)
        return None if who is None else f"{who[0]}\0{who[1]}"

    def handed(self, worker: WorkerHandle, who: tuple[str, str]) -> None:
        """``worker`` runs a call of ``who`` now."""
        self._served[worker.key] = who
        self._used[worker.key] = time.monotonic()

    async def vet(self, pool: Pool, worker: WorkerHandle, who: tuple[str, str]) -> bool:
        """Whether ``worker`` may run a call of ``who``; if not, it has been recycled or
        killed, and the caller picks again."""
        if worker.in_flight:
            return True  # busy: nothing to compare now, and no ping to queue behind it
        key = worker.key
        pc = self._configs[pool.name]
        if key not in self._baseline and worker.calls_done == 0 and worker.pid:
            base = sample(worker.pid)
            if base is not None:
                self._baseline[key] = base
        last = self._served.get(key)
        other = last is not None and last != who
        if other and pc.leftovers == "recycle":
            base = self._baseline.get(key)
            now = sample(worker.pid) if base is not None else None
            if base is not None and now is not None:
                why = leftover_reason(
                    base, now, max_extra_fds=pc.leftover_fds, max_rss_growth=pc.leftover_rss
                )
                if why is not None:
                    pool.recycle(worker, "recycle_leftovers", why)
                    self.forget(key)
                    return False
        idle = time.monotonic() - self._used.get(key, 0.0)
        if pc.heartbeat_timeout and last is not None and idle > IDLE_PING_AFTER:
            try:
                async with asyncio.timeout(pc.heartbeat_timeout):
                    await worker.release([], "")
            except BridgeError:
                return False  # it died meanwhile
            except TimeoutError:
                log.warning(
                    "pool %s: worker %s did not answer a ping within %gs; replacing it",
                    pool.name,
                    key,
                    pc.heartbeat_timeout,
                )
                await worker.kill(f"killed: no answer to a ping within {pc.heartbeat_timeout:g}s")
                self.forget(key)
                return False
        return True
