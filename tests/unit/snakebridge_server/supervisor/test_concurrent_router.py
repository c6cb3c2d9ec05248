"""The reply router of a worker that runs several calls at once
(``supervisor.router.ConcurrentReplyRouter``): replies in any order, user-code requests
held back beyond the concurrency and sent as others finish, held-back calls dropped on
cancel and reported never-started when the worker dies. Fakes only: no process, no loop."""

from __future__ import annotations

from typing import Any

import pytest

from snakebridge_server.channel import R_ERR, R_OK
from snakebridge_server.frames import Call, Ok, Release
from snakebridge_server.supervisor.router import ConcurrentReplyRouter, FalseFrame, Orphan

MAX_REFS = 100


def _call(budget: int = 5) -> Call:
    return Call(0, 1, "math", "sqrt", "", "s", b"", budget, "")


def _ok(call_id: int, new_refs: int = 0) -> list[Any]:
    return [R_OK, call_id, b"\xc0", new_refs]


def test_requests_beyond_the_concurrency_are_held_back_and_sent_in_order() -> None:
    router: ConcurrentReplyRouter[str] = ConcurrentReplyRouter(2)
    sent = [router.send(_call(), f"w{i}", MAX_REFS) for i in range(1, 5)]
    assert [m[1] if m else None for m in sent] == [1, 2, None, None]
    assert router.load == 4 and router.sendable() == []
    # Replies in any order; each frees a slot for the next held-back call.
    delivery = router.received(_ok(2), open_=True)
    assert delivery is not None and delivery.waiter == "w2" and delivery.reply == Ok(2, b"\xc0", 0)
    assert [m[1] for m in router.sendable()] == [3]
    router.received(_ok(1), open_=True)
    assert [m[1] for m in router.sendable()] == [4]
    assert router.running == 3


def test_other_requests_do_not_wait_or_count() -> None:
    router: ConcurrentReplyRouter[str] = ConcurrentReplyRouter(1)
    assert router.send(_call(), "call", MAX_REFS) is not None
    assert router.send(_call(), "held", MAX_REFS) is None
    release = router.send(Release(0, ["r"], "s"), "release", MAX_REFS)
    assert release is not None and release[1] == 3
    assert router.received([R_OK, 3, [], 0], open_=True) is not None
    assert router.sendable() == []  # the release freed no call slot


def test_a_reply_for_a_held_back_or_unknown_call_is_false() -> None:
    router: ConcurrentReplyRouter[str] = ConcurrentReplyRouter(1)
    router.send(_call(), "a", MAX_REFS)
    router.send(_call(), "b", MAX_REFS)
    for call_id in (2, 3, "1"):
        with pytest.raises(FalseFrame):
            router.received(_ok(call_id), open_=True)  # type: ignore[arg-type]
    router.received(_ok(1), open_=True)
    with pytest.raises(FalseFrame):
        router.received(_ok(1), open_=True)  # answered already


def test_the_budget_sent_bounds_the_reply() -> None:
    router: ConcurrentReplyRouter[str] = ConcurrentReplyRouter(1)
    router.send(_call(), "a", MAX_REFS, ref_budget=2)
    router.send(_call(), "b", MAX_REFS, ref_budget=1)
    router.received(_ok(1, 2), open_=True)
    router.sendable()
    with pytest.raises(FalseFrame, match="ref budget of 1"):
        router.received(_ok(2, 2), open_=True)


def test_a_cancelled_held_back_call_is_dropped_unsent() -> None:
    router: ConcurrentReplyRouter[str] = ConcurrentReplyRouter(1)
    router.send(_call(), "a", MAX_REFS)
    router.send(_call(), "b", MAX_REFS)
    assert router.abandon(2, open_=True) == "b"
    assert router.answered(2)  # nothing is owed for it
    router.received(_ok(1), open_=True)
    assert router.sendable() == [] and router.load == 0


def test_a_cancelled_running_call_counts_until_answered() -> None:
    router: ConcurrentReplyRouter[str] = ConcurrentReplyRouter(1)
    router.send(_call(), "a", MAX_REFS)
    router.send(_call(), "b", MAX_REFS)
    assert router.abandon(1, open_=True) == "a"
    assert router.load == 2 and not router.answered(1) and router.started(1)
    delivery = router.received([R_ERR, 1, "CallCancelled", "", "interrupted", ""], open_=True)
    assert delivery is not None and delivery.waiter is None
    assert [m[1] for m in router.sendable()] == [2]


def test_when_the_worker_dies_sent_calls_may_have_run_held_ones_never_started() -> None:
    router: ConcurrentReplyRouter[str] = ConcurrentReplyRouter(2)
    for name in "abcd":
        router.send(_call(), name, MAX_REFS)
    router.received(_ok(1), open_=True)
    router.sendable()  # call 3 goes out
    assert router.close() == [
        Orphan(2, "b", True),
        Orphan(3, "c", True),
        Orphan(4, "d", False),
    ]
    assert router.load == 0 and router.running == 0


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrentReplyRouter(0)


def test_a_thread_pool_must_fit_the_thread_limit() -> None:
    from snakebridge_server.config import PoolConfig
    from snakebridge_server.settings import ConfigError

    PoolConfig(concurrency=100, threads=True, max_threads=256)
    PoolConfig(concurrency=1000)  # coroutines: no threads needed
    with pytest.raises(ConfigError, match="raise max_threads to at least 508"):
        PoolConfig(concurrency=500, threads=True, max_threads=256)
