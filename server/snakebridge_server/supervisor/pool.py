"""A named pool of worker processes.

Runs in the server process.

``choose_worker`` is the pure routing decision, ``CrashLoopBreaker`` the pure crash-loop
decision, ``jittered_limit`` / ``recycle_reason`` the pure recycling decisions; ``Pool`` is
the async shell that starts workers, replaces dead ones (new incarnation, with backoff),
stops replacing them after a crash loop, recycles worn ones and closes them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

import anyio

from snakebridge.errors import PoolSaturated, PoolUnavailable, SessionLost
from snakebridge.wire.constants import (
    AFFINITY_HINT,
    AFFINITY_STRICT,
    AFFINITY_STRICT_FAIL_FAST,
)

from ..background import Background
from ..config import PoolConfig, default_of
from ..refids import WorkerKey
from ..sandbox.spawn import worker_env
from .handle import WorkerHandle, WorkerState
from .spawn import WorkerSpec, WorkerStartError, check_runtime

log = logging.getLogger("snakebridge.pool")


class _Routable(Protocol):
    @property
    def key(self) -> WorkerKey: ...
    @property
    def alive(self) -> bool: ...
    @property
    def in_flight(self) -> int: ...


W = TypeVar("W", bound=_Routable)


def _busy(worker: _Routable) -> bool:
    """Whether ``worker`` runs as many calls as it can at once (its pool's concurrency)."""
    return worker.in_flight >= getattr(worker, "concurrency", 1)


def choose_worker(
    workers: Sequence[W | None],
    *,
    previous: WorkerKey | None,
    strict: bool = False,
    affinity: str = "",
) -> W | None:
    """The worker for a call that carries no refs.

    ``affinity`` (``strict=True`` is ``affinity="strict"``): ``"strict"`` sends it to the
    session's previous worker (``SessionLost`` if that worker has died since);
    ``"strict_fail_fast"`` too, but ``PoolSaturated`` at once when that worker is busy;
    ``"hint"`` prefers that worker unless it is busy or gone. Otherwise, and for a session
    without a previous worker, the least-loaded live worker, lowest slot on ties. None
    when no worker is live. A retiring (recycled) worker is not ``alive``: it only
    finishes what it already has.
    """
    live = [w for w in workers if w is not None and w.alive]
    if strict:
        affinity = AFFINITY_STRICT
    if affinity and previous is not None:
        mine = next((w for w in live if w.key == previous), None)
        if affinity == AFFINITY_HINT:
            if mine is not None and not _busy(mine):
                return mine
        elif mine is None:
            raise SessionLost(
                f"the session's worker {previous} has restarted (affinity={affinity!r})"
            )
        elif affinity == AFFINITY_STRICT_FAIL_FAST and _busy(mine):
            raise PoolSaturated(
                f"the session's worker {previous} is busy ({mine.in_flight} calls in "
                "flight) and affinity='strict_fail_fast' forbids waiting or another worker"
            )
        else:
            return mine
    if not live:
        return None
    return min(live, key=lambda w: w.in_flight)


def restart_delay(recent_crashes: int) -> float:
    """Backoff before replacing a worker, growing with crashes in the last minute."""
    if recent_crashes <= 1:
        return 0.0
    return min(5.0, 0.05 * 2.0 ** (recent_crashes - 1))


# -- supervision: pure decisions --------------------------------------------------------


class CrashLoopBreaker:
    """Trips when ``max_deaths`` unexpected worker deaths fall within ``window`` seconds.

    Tripped, the pool stops replacing workers and refuses calls. After ``cooldown`` seconds
    it may try again (half-open): ``recovered()`` closes it and forgets the history,
    ``retry_failed()`` keeps it tripped for another cooldown. No clock of its own: every
    method takes ``now`` (monotonic seconds).
    """

    def __init__(self, max_deaths: int, window: float, cooldown: float) -> None:
        self.max_deaths = max_deaths
        self.window = window
        self.cooldown = cooldown
        self._deaths: deque[float] = deque(maxlen=max_deaths)
        self.tripped = False
        self.retry_at = 0.0
        self.last_reason = ""

    def record(self, now: float, reason: str) -> bool:
        """Count one death; True if this one trips the breaker."""
        self.last_reason = reason
        self._deaths.append(now)
        if self.tripped or len(self._deaths) < self.max_deaths:
            return False
        if now - self._deaths[0] > self.window:
            return False
        self.tripped = True
        self.retry_at = now + self.cooldown
        return True

    def recent(self, now: float) -> int:
        """Deaths within the window before ``now``."""
        return sum(1 for t in self._deaths if now - t <= self.window)

    def may_retry(self, now: float) -> bool:
        return self.tripped and now >= self.retry_at

    def retry_failed(self, now: float, reason: str) -> None:
        self.last_reason = reason
        self.retry_at = now + self.cooldown

    def recovered(self) -> None:
        self.tripped = False
        self._deaths.clear()

    def describe(self, now: float) -> str:
        return (
            f"{self.max_deaths} worker deaths within {self.window:g}s "
            f"(last: {self.last_reason}); next restart attempt in "
            f"{max(0.0, self.retry_at - now):.1f}s"
        )


def jittered_limit(limit: int, jitter: float, rand: Callable[[], float] = random.random) -> int:
    """``limit`` lowered by a random fraction U(0, ``jitter``), so that workers started
    together do not all reach it together. 0 (never) stays 0; otherwise at least 1."""
    if limit <= 0:
        return 0
    return max(1, int(limit * (1.0 - jitter * rand())))


def recycle_reason(calls_done: int, rss: int | None, max_calls: int, max_rss: int) -> str | None:
    """Why a worker is due for recycling, or None. 0 limits mean never. A worker that has
    not completed a call is never recycled for its RSS: a fresh one would be just as big,
    so recycling it would only loop."""
    if max_calls and calls_done >= max_calls:
        return "recycle_calls"
    if max_rss and rss is not None and calls_done > 0 and rss > max_rss:
        return "recycle_rss"
    return None


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (Linux ``/proc``), or None if unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class SupervisionPolicy:
    """The crash-loop and recycling settings of a pool. The defaults are those declared
    on ``PoolConfig``, not copies of them."""

    crash_loop_max: int = default_of(PoolConfig, "crash_loop_max")
    crash_loop_window: float = default_of(PoolConfig, "crash_loop_window")
    crash_loop_cooldown: float = default_of(PoolConfig, "crash_loop_cooldown")
    recycle_calls: int = default_of(PoolConfig, "recycle_calls")  # 0: never
    recycle_rss: int = default_of(PoolConfig, "recycle_rss")  # bytes; 0: never
    recycle_jitter: float = default_of(PoolConfig, "recycle_jitter")
    # Most a retiring worker may take to finish its calls: the longest a call may run.
    retire_timeout: float = default_of(PoolConfig, "max_call_timeout")
    check_interval: float = 1.0  # how often the supervisor reads RSS

    @classmethod
    def of(cls, pc: PoolConfig) -> SupervisionPolicy:
        """The policy a pool's settings make."""
        return cls(
            crash_loop_max=pc.crash_loop_max,
            crash_loop_window=pc.crash_loop_window,
            crash_loop_cooldown=pc.crash_loop_cooldown,
            recycle_calls=pc.recycle_calls,
            recycle_rss=pc.recycle_rss,
            recycle_jitter=pc.recycle_jitter,
            retire_timeout=pc.max_call_timeout,
        )


class PoolState(StrEnum):
    """Whether a pool serves. A str, so ``Describe`` reports it as it is."""

    SERVING = "serving"
    TRIPPED = "tripped"  # after a crash loop, until a restart succeeds


#: Makes the handle of a worker: ``(key, spec, on_exit, refs_of)``. ``WorkerHandle`` by
#: default; tests inject fakes to drive supervision without processes.
WorkerFactory = Callable[
    [WorkerKey, WorkerSpec, Callable[[WorkerHandle], None], Callable[[WorkerKey], int]],
    WorkerHandle,
]


def _no_refs(key: WorkerKey) -> int:
    return 0


class Pool:
    """A named pool of worker processes (the async shell; the decisions above are pure)."""

    def __init__(
        self,
        name: str,
        size: int,
        spec: WorkerSpec,
        *,
        max_queued: int,
        on_worker_lost: Callable[[WorkerKey], None],
        policy: SupervisionPolicy | None = None,
        refs_of: Callable[[WorkerKey], int] = _no_refs,
        worker_factory: WorkerFactory = WorkerHandle,
    ) -> None:
        """``refs_of`` counts a worker's refs (the bridge's ``SessionTable.refs_on``)."""
        self.name = name
        self._refs_of = refs_of
        self._worker_factory = worker_factory
        self.size = size
        self.spec = spec
        self.max_queued = max_queued
        self.policy = policy = policy or SupervisionPolicy()
        self._on_worker_lost = on_worker_lost
        self.workers: list[WorkerHandle | None] = [None] * size
        # Recycled workers finishing the calls and streams they had; no new ones.
        self.retiring: set[WorkerHandle] = set()
        self._incarnation = [0] * size
        self._limits = [(0, 0)] * size  # (calls, rss) of each slot's current worker
        self._crashes: deque[float] = deque(maxlen=64)
        self._breaker = CrashLoopBreaker(
            policy.crash_loop_max, policy.crash_loop_window, policy.crash_loop_cooldown
        )
        self._any_ready = asyncio.Event()
        # Owns the supervisor, replacements, recovery and retirements; close() ends them.
        self._background = Background(f"pool {name}")
        self._replacing: dict[int, anyio.CancelScope] = {}
        self._recycled: dict[WorkerKey, str] = {}  # recently recycled workers, for SessionLost
        self.closing = False
        self.restarts: dict[str, int] = {}  # workers lost or recycled, by reason
        # Called with the pool's health (True: serving) whenever it may have changed; the
        # app maps it to a grpc.health status.
        self.on_health: Callable[[bool], None] | None = None

    def __repr__(self) -> str:
        return f"<Pool {self.name} size={self.size} live={self.live} in_flight={self.in_flight}>"

    @property
    def live(self) -> int:
        return sum(1 for w in self.workers if w is not None and w.alive)

    @property
    def in_flight(self) -> int:
        current = sum(w.in_flight for w in self.workers if w is not None)
        return current + sum(w.in_flight for w in self.retiring)

    @property
    def tripped(self) -> bool:
        return self._breaker.tripped

    @property
    def state(self) -> PoolState:
        return PoolState.TRIPPED if self._breaker.tripped else PoolState.SERVING

    @property
    def healthy(self) -> bool:
        return not self.closing and not self._breaker.tripped and self.live > 0

    def _notify_health(self) -> None:
        if self.on_health is not None:
            self.on_health(self.healthy)

    async def start(self) -> None:
        env = worker_env(
            os.environ, level=self.spec.sandbox.level, scratch="", extra=dict(self.spec.env)
        )
        try:
            # Only worker processes run an interpreter; injected fakes have none to probe.
            if self._worker_factory is WorkerHandle:
                await check_runtime(self.spec.python, env)
        except WorkerStartError as exc:
            raise WorkerStartError(f"pool {self.name}: {exc}") from None
        await self._background.start()
        try:
            async with asyncio.TaskGroup() as tg:
                for slot in range(self.size):
                    tg.create_task(self._start_slot(slot))
        except BaseException as exc:
            await self.close()
            errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            first = next((e for e in errors if isinstance(e, WorkerStartError)), errors[0])
            raise first from None
        if self.policy.recycle_calls or self.policy.recycle_rss or self.spec.sandbox.max_call_cpu:
            self._background.start_soon(self._supervise, name=f"pool {self.name} supervisor")
        self._notify_health()

    async def _start_slot(self, slot: int) -> None:
        self._incarnation[slot] += 1
        key = WorkerKey(self.name, slot, self._incarnation[slot])
        handle = self._worker_factory(key, self.spec, self._worker_exited, self._refs_of)
        self.workers[slot] = handle
        policy = self.policy
        self._limits[slot] = (
            jittered_limit(policy.recycle_calls, policy.recycle_jitter),
            jittered_limit(policy.recycle_rss, policy.recycle_jitter),
        )
        await handle.start()
        self._any_ready.set()
        self._notify_health()

    # -- deaths and the crash-loop breaker ----------------------------------------------

    def _worker_exited(self, handle: WorkerHandle) -> None:
        """Called synchronously by a handle that died unexpectedly."""
        self._on_worker_lost(handle.key)
        slot = handle.key.slot
        if handle.retiring or self.workers[slot] is not handle:
            # A recycled worker died while finishing its calls (they failed with
            # WorkerCrashed): its slot already has a new incarnation. Not a pool crash.
            return
        if self.live == 0:
            self._any_ready.clear()
        self._notify_health()
        if self.closing:
            return
        now = time.monotonic()
        # A kill after an ignored cancellation is the server's own doing, caused by one
        # call: it counts in ``restarts`` and in the restart backoff, but not toward the
        # crash loop, so that a client's uninterruptible calls cannot take the whole pool
        # offline. Crashes and failed starts are what the breaker is for.
        killed = handle.death_reason.startswith("killed:")
        reason = "killed" if killed else "crash"
        self.restarts[reason] = self.restarts.get(reason, 0) + 1
        self._crashes.append(now)
        if not killed and self._record_death(now, f"{handle.key}: {handle.death_reason}", None):
            return  # tripped: the recovery task restarts the pool after the cooldown
        if self._breaker.tripped:
            return
        recent = sum(1 for t in self._crashes if now - t < 60.0)
        self._schedule_replace(slot, restart_delay(recent), handle)

    def _record_death(self, now: float, reason: str, caller: anyio.CancelScope | None) -> bool:
        """Count a death toward the crash loop; True if the pool is (now) tripped.
        ``caller``: the scope of the replacement that counts it, which a trip leaves to
        return by itself."""
        if self._breaker.record(now, reason):
            self._trip(now, caller)
        return self._breaker.tripped

    def _trip(self, now: float, caller: anyio.CancelScope | None) -> None:
        log.error(
            "pool %s: crash loop: %s; not restarting workers until then",
            self.name,
            self._breaker.describe(now),
        )
        for scope in list(self._replacing.values()):
            if scope is not caller:
                scope.cancel()
        self._any_ready.set()  # wake the calls waiting for a worker: they fail now
        self._notify_health()
        self._background.start_soon(self._recover, name=f"pool {self.name} recovery")

    def _unavailable(self) -> PoolUnavailable:
        return PoolUnavailable(
            f"pool {self.name!r} is unavailable after a crash loop: "
            f"{self._breaker.describe(time.monotonic())}"
        )

    async def _recover(self) -> None:
        """After each cooldown, start the missing workers (half-open): serving again if
        all start, tripped for another cooldown if not."""
        while not self.closing:
            await asyncio.sleep(max(0.0, self._breaker.retry_at - time.monotonic()))
            missing = [s for s in range(self.size) if not self._slot_ready(s)]
            log.info(
                "pool %s: crash-loop cooldown over, starting %d worker(s)", self.name, len(missing)
            )
            results = await asyncio.gather(
                *(self._start_slot(s) for s in missing), return_exceptions=True
            )
            failed = [str(r) for r in results if isinstance(r, BaseException)]
            for slot in missing:  # started, but died before we got here
                w = self.workers[slot]
                if w is not None and w.state != WorkerState.READY:
                    failed.append(f"{w.key}: {w.death_reason}")
            if failed:
                reason = failed[0]
                self._breaker.retry_failed(time.monotonic(), reason)
                log.error(
                    "pool %s: restart after the crash-loop cooldown failed: %s; "
                    "staying unavailable for %gs",
                    self.name,
                    reason,
                    self.policy.crash_loop_cooldown,
                )
                continue
            self._breaker.recovered()
            log.info("pool %s: serving again after a crash loop", self.name)
            self._notify_health()
            return

    def _slot_ready(self, slot: int) -> bool:
        w = self.workers[slot]
        return w is not None and w.state == WorkerState.READY

    def _schedule_replace(self, slot: int, delay: float, dead: WorkerHandle | None) -> None:
        # A trip cancels it through this scope; the task knows it as its own.
        scope = self._replacing[slot] = anyio.CancelScope()
        self._background.start_soon(
            self._replace_slot,
            slot,
            delay,
            dead,
            scope,
            name=f"pool {self.name} replace slot {slot}",
            scope=scope,
        )

    async def _replace_slot(
        self, slot: int, delay: float, dead: WorkerHandle | None, scope: anyio.CancelScope
    ) -> None:
        try:
            await self._replace(slot, delay, dead, scope)
        finally:
            if self._replacing.get(slot) is scope:
                del self._replacing[slot]

    async def _replace(
        self, slot: int, delay: float, dead: WorkerHandle | None, scope: anyio.CancelScope
    ) -> None:
        if dead is not None:
            await dead.exited.wait()
        while not self.closing and not self._breaker.tripped:
            if delay:
                await asyncio.sleep(delay)
                if self.closing or self._breaker.tripped:
                    return
            try:
                await self._start_slot(slot)
            except (WorkerStartError, OSError) as exc:
                log.error("pool %s: replacing worker slot %d failed: %s", self.name, slot, exc)
                if self._record_death(time.monotonic(), f"start failed: {exc}", scope):
                    return
                delay = min(5.0, max(0.1, delay * 2))
                continue
            log.info("pool %s: worker slot %d replaced", self.name, slot)
            return

    # -- recycling ----------------------------------------------------------------------

    def after_call(self, handle: WorkerHandle) -> None:
        """A call on ``handle`` completed: recycle it if it reached its call limit."""
        if self.policy.recycle_calls:
            self._maybe_recycle(handle, rss=None)

    async def _supervise(self) -> None:
        """Every ``check_interval``, recycle workers over their call or RSS limit, and
        kill those whose running call went far past its CPU budget."""
        while True:
            await asyncio.sleep(self.policy.check_interval)
            for handle in list(self.workers):
                if handle is not None and handle.alive:
                    handle.watch_cpu()
                    rss = read_rss(handle.pid) if self.policy.recycle_rss else None
                    try:
                        self._maybe_recycle(handle, rss)
                    except Exception:  # keep supervising the other workers
                        log.exception("pool %s: recycling %s failed", self.name, handle.key)

    def _maybe_recycle(self, handle: WorkerHandle, rss: int | None) -> None:
        slot = handle.key.slot
        if (
            self.closing
            or self._breaker.tripped
            or not handle.alive
            or self.workers[slot] is not handle
        ):
            return
        max_calls, max_rss = self._limits[slot]
        reason = recycle_reason(handle.calls_done, rss, max_calls, max_rss)
        if reason is None:
            return
        if self.size > 1 and self.live <= 1:
            return  # the pool's only live worker: wait until another one is ready
        if reason == "recycle_calls":
            detail = f"{handle.calls_done} calls, limit {max_calls}"
        else:
            detail = f"RSS {rss} bytes, limit {max_rss}"
        self._retire(handle, reason, detail)

    def _retire(self, handle: WorkerHandle, reason: str, detail: str) -> None:
        """Take ``handle`` out of service: a new incarnation takes its slot at once, and it
        closes once the calls and streams it has are done."""
        slot = handle.key.slot
        log.info(
            "pool %s: recycling worker %s (pid %d): %s (%s)",
            self.name,
            handle.key,
            handle.pid,
            reason,
            detail,
        )
        handle.retiring = True
        self.workers[slot] = None
        self.retiring.add(handle)
        self.restarts[reason] = self.restarts.get(reason, 0) + 1
        self._recycled[handle.key] = reason
        while len(self._recycled) > 256:
            del self._recycled[next(iter(self._recycled))]
        # Its refs are lost now, not when it exits: later use raises SessionLost.
        self._on_worker_lost(handle.key)
        if self.live == 0:
            self._any_ready.clear()
        self._notify_health()
        self._schedule_replace(slot, 0.0, None)
        self._background.start_soon(
            self._close_retired, handle, name=f"pool {self.name} retire {handle.key}"
        )

    async def _close_retired(self, handle: WorkerHandle) -> None:
        try:
            deadline = time.monotonic() + self.policy.retire_timeout
            while handle.in_flight and handle.state == WorkerState.READY:
                if time.monotonic() >= deadline:
                    log.warning(
                        "pool %s: retiring worker %s still has %d call(s) after %gs; closing it",
                        self.name,
                        handle.key,
                        handle.in_flight,
                        self.policy.retire_timeout,
                    )
                    break
                await asyncio.sleep(0.02)
            await handle.close()
        finally:
            self.retiring.discard(handle)
            # Refs its last calls created after it retired are gone with it too.
            self._on_worker_lost(handle.key)

    # -- routing ------------------------------------------------------------------------

    def owner(self, key: WorkerKey) -> WorkerHandle:
        """The live worker ``key`` names; ``SessionLost`` if it has died since."""
        if not 0 <= key.slot < self.size:
            raise SessionLost(f"worker {key} does not exist")
        handle = self.workers[key.slot]
        if handle is None or handle.key != key or not handle.alive:
            recycled = self._recycled.get(key)
            if recycled is not None:
                raise SessionLost(
                    f"worker {key}, which held this ref, was recycled ({recycled}); "
                    "its objects are gone"
                )
            raise SessionLost(f"worker {key}, which held this ref, has restarted or stopped")
        return handle

    def check_capacity(self) -> None:
        if self.closing:
            raise PoolUnavailable(f"pool {self.name!r} is shutting down")
        if self._breaker.tripped:
            raise self._unavailable()
        if self.in_flight >= self.max_queued:
            raise PoolSaturated(
                f"pool {self.name!r} has {self.max_queued} calls queued, its maximum"
            )

    async def pick(
        self, previous: WorkerKey | None, strict: bool = False, *, affinity: str = ""
    ) -> WorkerHandle:
        """A worker for a call without refs (``choose_worker``); waits for one to start
        when none is live."""
        while True:
            if self.closing:
                raise PoolUnavailable(f"pool {self.name!r} is shutting down")
            if self._breaker.tripped:
                raise self._unavailable()
            chosen = choose_worker(
                self.workers, previous=previous, strict=strict, affinity=affinity
            )
            if chosen is not None:
                return chosen
            if self.live == 0:
                self._any_ready.clear()
            await self._any_ready.wait()

    async def close(self) -> None:
        self.closing = True
        self._any_ready.set()  # waiting calls fail with "shutting down"
        self._notify_health()
        retiring = list(self.retiring)  # their tasks forget them when cancelled
        await self._background.aclose()
        await asyncio.gather(
            *(w.close() for w in [*self.workers, *retiring] if w is not None),
            return_exceptions=True,
        )
