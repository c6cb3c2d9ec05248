"""Worker supervision: the crash-loop breaker, recycling limits, and routing around
retiring workers. Pure logic, plus the pool's reaction to a trip (no worker processes)."""

from __future__ import annotations

import os
import random
import sys

import pytest

from snakebridge.errors import PoolUnavailable
from snakebridge_server.refids import WorkerKey
from snakebridge_server.supervisor.handle import WorkerHandle, WorkerState
from snakebridge_server.supervisor.pool import (
    CrashLoopBreaker,
    Pool,
    SupervisionPolicy,
    choose_worker,
    jittered_limit,
    read_rss,
    recycle_reason,
)
from snakebridge_server.supervisor.spawn import WorkerSpec

SPEC = WorkerSpec(
    python=sys.executable,
    boot="b00t",
    max_refs=100,
    max_frame=1 << 20,
    max_result=1 << 20,
    start_timeout=5.0,
    cancel_grace=1.0,
)


# -- the crash-loop breaker -------------------------------------------------------------


def test_breaker_trips_at_max_deaths_within_the_window() -> None:
    b = CrashLoopBreaker(3, window=30.0, cooldown=5.0)
    assert not b.record(100.0, "a")
    assert not b.record(110.0, "b")
    assert b.record(120.0, "c")  # the third within 30 s
    assert b.tripped and b.retry_at == 125.0
    assert not b.record(121.0, "d")  # already tripped: no second trip
    text = b.describe(122.0)
    assert "3 worker deaths within 30s" in text and "last: d" in text and "3.0s" in text


def test_breaker_does_not_trip_on_deaths_spread_over_more_than_the_window() -> None:
    b = CrashLoopBreaker(3, window=10.0, cooldown=5.0)
    for t in (0.0, 6.0, 12.0, 18.0, 24.0, 30.0):  # never 3 within 10 s
        assert not b.record(t, "x")
    assert not b.tripped
    assert b.recent(30.0) == 2
    assert b.record(31.0, "x")  # 24, 30, 31


def test_breaker_with_max_one_trips_on_the_first_death() -> None:
    b = CrashLoopBreaker(1, window=1.0, cooldown=1.0)
    assert b.record(0.0, "x") and b.tripped


def test_breaker_cooldown_then_half_open() -> None:
    b = CrashLoopBreaker(2, window=60.0, cooldown=30.0)
    b.record(0.0, "x")
    assert b.record(1.0, "y")
    assert not b.may_retry(30.9)
    assert b.may_retry(31.0)
    # the restart failed: tripped for another cooldown, with the new reason
    b.retry_failed(31.5, "start failed: boom")
    assert b.tripped and not b.may_retry(61.0) and b.may_retry(61.5)
    assert "start failed: boom" in b.describe(40.0)
    # the restart worked: serving, history forgotten, so one death does not re-trip it
    b.recovered()
    assert not b.tripped and not b.may_retry(100.0)
    assert not b.record(62.0, "z")
    assert b.record(63.0, "z")


# -- recycling limits -------------------------------------------------------------------


def test_jittered_limit_without_jitter_is_the_limit() -> None:
    assert jittered_limit(50, 0.0) == 50
    assert jittered_limit(0, 0.5) == 0  # 0 means never, jitter or not


def test_jittered_limit_lowers_by_a_random_fraction_up_to_jitter() -> None:
    rng = random.Random(4)
    limits = [jittered_limit(1000, 0.1, rng.random) for _ in range(500)]
    assert all(900 <= n <= 1000 for n in limits)
    assert len(set(limits)) > 50  # spread out, so workers do not recycle together
    assert jittered_limit(1000, 0.5, lambda: 0.5) == 750
    assert jittered_limit(1, 0.5, lambda: 0.99) == 1  # never below 1


def test_recycle_reason() -> None:
    assert recycle_reason(10, 10**9, 0, 0) is None  # no limits
    assert recycle_reason(9, None, 10, 0) is None
    assert recycle_reason(10, None, 10, 0) == "recycle_calls"
    assert recycle_reason(3, 200, 10, 100) == "recycle_rss"
    assert recycle_reason(3, 100, 10, 100) is None  # at the limit is fine
    assert recycle_reason(3, None, 10, 100) is None  # RSS unknown
    # a worker that has completed no call yet is not recycled for its size: a fresh
    # one would be as big (a limit below a bare worker's RSS would loop)
    assert recycle_reason(0, 10**9, 0, 100) is None
    assert recycle_reason(12, 10**9, 10, 100) == "recycle_calls"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_read_rss_of_a_live_process_and_of_none() -> None:
    rss = read_rss(os.getpid())
    assert rss is not None and 1 << 20 < rss < 1 << 40
    assert read_rss(2**22 + 12345) is None  # beyond pid_max: no such process


# -- routing ----------------------------------------------------------------------------


def _ready(slot: int, in_flight: int = 0) -> WorkerHandle:
    handle = WorkerHandle(WorkerKey("default", slot, 1), SPEC, lambda h: None)
    handle.state = WorkerState.READY
    handle.open_streams.update(range(in_flight))  # counts as load
    return handle


def test_choose_worker_never_picks_a_retiring_worker() -> None:
    idle, busy = _ready(0), _ready(1, in_flight=5)
    assert choose_worker([idle, busy], previous=None, strict=False) is idle
    idle.retiring = True  # still running its own calls, but takes no new ones
    assert idle.state == "ready" and not idle.alive
    assert choose_worker([idle, busy], previous=None, strict=False) is busy
    busy.retiring = True
    assert choose_worker([idle, busy], previous=None, strict=False) is None


def test_strict_affinity_to_a_retiring_worker_is_session_lost() -> None:
    from snakebridge.errors import SessionLost

    old = _ready(0)
    old.retiring = True
    with pytest.raises(SessionLost, match="restarted"):
        choose_worker([old, _ready(1)], previous=old.key, strict=True)


# -- the pool's reaction to a trip (no worker processes are started) ---------------------


@pytest.mark.anyio
async def test_a_tripped_pool_refuses_calls_and_reports_unhealthy() -> None:
    health: list[bool] = []
    lost: list[WorkerKey] = []
    policy = SupervisionPolicy(crash_loop_max=2, crash_loop_window=30, crash_loop_cooldown=60)
    pool = Pool("default", 1, SPEC, max_queued=10, on_worker_lost=lost.append, policy=policy)
    pool.on_health = health.append
    try:
        for incarnation, reason in ((1, "worker process exited with code -9"), (2, "boom")):
            dead = WorkerHandle(WorkerKey("default", 0, incarnation), SPEC, lambda h: None)
            dead.state, dead.death_reason = WorkerState.DEAD, reason
            pool.workers[0] = dead
            pool._worker_exited(dead)
        assert pool.tripped and pool.state == "tripped" and not pool.healthy
        assert health[-1] is False
        assert pool.restarts == {"crash": 2}
        assert lost == [WorkerKey("default", 0, 1), WorkerKey("default", 0, 2)]
        with pytest.raises(PoolUnavailable, match=r"'default'.*2 worker deaths within 30s") as e:
            pool.check_capacity()
        assert "boom" in str(e.value) and "next restart attempt in" in str(e.value)
        with pytest.raises(PoolUnavailable, match="crash loop"):
            await pool.pick(None, False)
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_kills_after_ignored_cancellation_do_not_trip_the_pool() -> None:
    policy = SupervisionPolicy(crash_loop_max=1, crash_loop_window=30, crash_loop_cooldown=60)
    pool = Pool("default", 1, SPEC, max_queued=10, on_worker_lost=lambda k: None, policy=policy)
    try:
        dead = WorkerHandle(WorkerKey("default", 0, 1), SPEC, lambda h: None)
        dead.state = WorkerState.DEAD
        dead.death_reason = "killed: call 3 ignored cancellation for 1s"
        pool.workers[0] = dead
        pool._worker_exited(dead)
        assert not pool.tripped and pool.restarts == {"killed": 1}
    finally:
        await pool.close()


@pytest.mark.anyio
async def test_a_trip_cancels_the_replacements_still_waiting() -> None:
    import anyio

    policy = SupervisionPolicy(crash_loop_max=2, crash_loop_window=30, crash_loop_cooldown=60)
    pool = Pool("default", 2, SPEC, max_queued=10, on_worker_lost=lambda k: None, policy=policy)
    try:
        first = WorkerHandle(WorkerKey("default", 0, 1), SPEC, lambda h: None)
        first.state, first.death_reason = WorkerState.DEAD, "boom"
        pool.workers[0] = first
        pool._worker_exited(first)  # its replacement waits for it to exit: it never does
        await anyio.wait_all_tasks_blocked()
        assert list(pool._replacing) == [0]
        second = WorkerHandle(WorkerKey("default", 1, 1), SPEC, lambda h: None)
        second.state, second.death_reason = WorkerState.DEAD, "boom"
        pool.workers[1] = second
        pool._worker_exited(second)  # trips the breaker
        assert pool.tripped
        await anyio.wait_all_tasks_blocked()
        assert pool._replacing == {}  # cancelled, and forgotten when it ended
    finally:
        await pool.close()
