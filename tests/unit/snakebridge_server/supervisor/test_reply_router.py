"""The sans-IO reply router of a worker's channel (``supervisor.router``): which call is
running and which never started, late replies after a cancel, leftovers read after the
worker's EOF, and replies that cannot be honest. Fakes only: no process, no loop."""

from __future__ import annotations

from typing import Any

import pytest

from snakebridge_server.channel import R_ERR, R_OK
from snakebridge_server.frames import Call, Err, Ok, Release, StreamClose
from snakebridge_server.supervisor.router import FalseFrame, Orphan, ReplyRouter

MAX_REFS = 100


def _call(budget: int = 5) -> Call:
    return Call(0, 1, "math", "sqrt", "", "s", b"", budget, "")


def _router(calls: int, budget: int = 5) -> tuple[ReplyRouter[str], list[list[Any]]]:
    router: ReplyRouter[str] = ReplyRouter()
    sent = [router.send(_call(budget), f"waiter-{i + 1}", MAX_REFS) for i in range(calls)]
    return router, sent


def test_calls_get_consecutive_ids_and_their_reply_bounds() -> None:
    router: ReplyRouter[str] = ReplyRouter()
    first = router.send(_call(), "a", MAX_REFS, ref_budget=3, cid="c")
    second = router.send(Release(0, ["r1", "r2"], "s"), "b", MAX_REFS)
    third = router.send(StreamClose(0, 9), "c", MAX_REFS)
    assert [first[1], second[1], third[1]] == [1, 2, 3]
    assert first[-2:] == [3, "c"]
    assert router.load == 3 and router.running == 1
    with pytest.raises(FalseFrame, match="new_refs=4 for a request with a ref budget of 3"):
        router.received([R_OK, 1, b"", 4], open_=True)


def test_a_reply_goes_to_its_waiter_typed() -> None:
    router, _ = _router(2)
    delivery = router.received([R_OK, 1, b"\xc0", 2], open_=True)
    assert delivery is not None
    assert delivery.waiter == "waiter-1" and delivery.reply == Ok(1, b"\xc0", 2)
    delivery = router.received([R_ERR, 2, "RefNotFound", "", "gone", ""], open_=True)
    assert delivery is not None
    assert delivery.reply == Err(2, "RefNotFound", "", "gone", "")
    assert router.load == 0 and router.last_reply_id == 2


def test_the_call_after_the_last_reply_is_running_the_others_never_started() -> None:
    router, _ = _router(4)
    router.received([R_OK, 1, b"", 0], open_=True)
    orphans = router.close()
    assert orphans == [
        Orphan(2, "waiter-2", True),
        Orphan(3, "waiter-3", False),
        Orphan(4, "waiter-4", False),
    ]
    assert router.load == 0


def test_a_late_reply_after_a_cancel_is_believed_and_frees_the_worker() -> None:
    router, _ = _router(2)
    assert router.abandon(1, open_=True) == "waiter-1"
    assert router.load == 2  # the worker still owes it: still load
    assert router.in_flight(1)
    delivery = router.received([R_ERR, 1, "CallCancelled", "", "call interrupted", ""], open_=True)
    assert delivery is not None and delivery.waiter is None  # nobody waits any more
    assert router.load == 1 and not router.in_flight(1) and router.running == 2


def test_cancelling_an_answered_call_does_nothing() -> None:
    router, _ = _router(1)
    router.received([R_OK, 1, b"", 0], open_=True)
    assert router.abandon(1, open_=True) is None
    assert router.load == 0


def test_leftover_replies_read_after_eof_answer_their_calls_first() -> None:
    # The worker finished calls 1 and 2 and died in 3; the replies were still in the
    # socket. Read first, they are answered, and only 3 counts as running: a finished
    # call must never be reported as never started and run again elsewhere.
    router, _ = _router(4)
    answered = [router.received([R_OK, i, b"", 0], open_=True) for i in (1, 2)]
    assert [d.waiter for d in answered if d is not None] == ["waiter-1", "waiter-2"]
    assert router.close() == [Orphan(3, "waiter-3", True), Orphan(4, "waiter-4", False)]


def test_a_reply_for_a_call_forgotten_while_closing_is_dropped_not_a_lie() -> None:
    router, _ = _router(1)
    router.close()
    with pytest.raises(FalseFrame):  # open: a reply nobody asked for is a lie
        router.received([R_OK, 1, b"", 0], open_=True)
    assert router.received([R_OK, 1, b"", 0], open_=False) is None


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ([R_OK, 10_000, b"", 0], "reply for call 10000; the next reply is for 1"),
        ([R_OK, 2, b"", 0], "reply for call 2; the next reply is for 1"),  # skips call 1
        ([R_OK, "1", b"", 0], "reply for call '1'"),
        ([R_OK, 1, "text", 0], "malformed"),
        ([R_OK, 1, b"", 6], "new_refs=6"),
    ],
)
def test_a_reply_for_a_call_never_sent_or_out_of_order_is_a_lie(
    message: list[Any], why: str
) -> None:
    router, _ = _router(2)
    with pytest.raises(FalseFrame, match=why):
        router.received(message, open_=True)
    assert router.last_reply_id == 0 and router.load == 2  # believed nothing


def test_a_call_answered_twice_is_a_lie() -> None:
    router, _ = _router(2)
    router.received([R_OK, 1, b"", 0], open_=True)
    with pytest.raises(FalseFrame):
        router.received([R_OK, 1, b"", 0], open_=True)


def test_a_malformed_error_reply_still_answers_its_call() -> None:
    router, _ = _router(1)
    delivery = router.received([R_ERR, 1, "RemoteError"], open_=True)
    assert delivery is not None and delivery.waiter == "waiter-1"
    assert delivery.reply.code == "BridgeError"  # type: ignore[union-attr]
    assert "malformed error reply" in delivery.reply.message  # type: ignore[union-attr]
