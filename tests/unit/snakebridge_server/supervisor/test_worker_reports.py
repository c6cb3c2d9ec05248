"""What the server believes of a worker's frames (issue #10, item 8): pure checks of the
channel (``false_reply``, ``frame_head``, ``unpack_reply``, ``FrameDecoder``'s head
check) and the handle's reply ordering, without a process."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from snakebridge.errors import RemoteError
from snakebridge_server.channel import (
    HEAD_SIZE,
    MAX_REPLY_ELEMENTS,
    OP_CALL,
    OP_RELEASE,
    OP_RELEASE_SESSION,
    OP_STREAM_CLOSE,
    OP_STREAM_NEXT,
    OP_STREAM_OPEN,
    R_ERR,
    R_OK,
    STREAM_DONE,
    STREAM_ERROR,
    STREAM_MORE,
    FrameDecoder,
    false_reply,
    frame_head,
    pack_frame,
    unpack_reply,
)
from snakebridge_server.frames import Call, Err, Ok
from snakebridge_server.supervisor.handle import WorkerLied, _error_from
from snakebridge_server.supervisor.router import FalseFrame, ReplyRouter

# -- false_reply ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "limit", "value", "new_refs"),
    [
        (OP_CALL, 5, b"\xc0", 0),
        (OP_CALL, 5, b"\xc0", 5),  # the whole budget
        (OP_STREAM_OPEN, 3, [1, b"", STREAM_MORE, None, []], 3),
        (OP_STREAM_OPEN, 3, [1, b"", STREAM_DONE, None, [["s", 1]]], 0),
        (OP_STREAM_OPEN, 3, [1, b"", STREAM_ERROR, ["T", "m", "tb"], []], 0),
        (OP_STREAM_NEXT, 3, [False, b"\x01", []], 1),
        (OP_STREAM_NEXT, 3, [True, b"", [["s", 1]]], 0),
        (OP_RELEASE, 2, [["s", 1], ["t", 1]], 0),
        (OP_RELEASE_SESSION, 100, 7, 0),
        (OP_STREAM_CLOSE, 100, True, 0),
    ],
)
def test_honest_replies_pass(op: int, limit: int, value: Any, new_refs: int) -> None:
    assert false_reply([R_OK, 1, value, new_refs], op, limit) == ""


@pytest.mark.parametrize(
    ("op", "limit", "value", "new_refs", "why"),
    [
        (OP_CALL, 5, b"\xc0", 10**9, "new_refs=1000000000"),
        (OP_CALL, 5, b"\xc0", 6, "new_refs=6"),
        (OP_CALL, 5, b"\xc0", -1, "new_refs=-1"),
        (OP_CALL, 5, b"\xc0", True, "new_refs=True"),
        (OP_CALL, 5, b"\xc0", 1.0, "new_refs=1.0"),
        (OP_RELEASE, 100, [], 1, "budget of 0"),  # a release makes no refs
        (OP_CALL, 5, "text", 0, "malformed"),
        (OP_CALL, 5, [0] * 10, 0, "malformed"),
        (OP_STREAM_OPEN, 3, [1, b"", 7, None, []], 0, "malformed"),
        (OP_STREAM_OPEN, 3, [1, b"", STREAM_ERROR, None, []], 0, "malformed"),
        (OP_STREAM_OPEN, 3, [1, b"", STREAM_MORE, None, [["s", 10**9]]], 0, "malformed"),
        (OP_STREAM_NEXT, 3, [False, b"", [["s", -1]]], 0, "malformed"),
        (OP_RELEASE, 2, [["s", 2], ["t", 1]], 0, "malformed"),  # more than it was given
        (OP_RELEASE_SESSION, 100, 101, 0, "malformed"),
        (OP_STREAM_CLOSE, 100, 1, 0, "malformed"),
        (99, 100, 1, 0, "unknown request opcode"),
    ],
)
def test_false_replies_say_why(op: int, limit: int, value: Any, new_refs: Any, why: str) -> None:
    assert why in false_reply([R_OK, 1, value, new_refs], op, limit)


def test_a_reply_of_the_wrong_length_is_false() -> None:
    assert "5 fields" in false_reply([R_OK, 1, b"", 0, 0], OP_CALL, 5)


# -- decoding ---------------------------------------------------------------------------


def test_frame_head_reads_the_opcode_and_call_id_of_any_size() -> None:
    for call_id in (1, 300, 70_000, 2**40):
        body = msgpack.packb([R_OK, call_id, b"x" * 1000, 0])
        assert frame_head(body[:HEAD_SIZE]) == (R_OK, call_id)


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb({"a": 1}),
        msgpack.packb([R_OK]),
        msgpack.packb(["x", 1]),
        msgpack.packb([R_OK, "1"]),
        b"\xc1" * HEAD_SIZE,
    ],
)
def test_frame_head_refuses_what_is_no_reply(body: bytes) -> None:
    with pytest.raises(ValueError):
        frame_head(body[:HEAD_SIZE])


def test_unpack_reply_bounds_arrays_and_refuses_maps() -> None:
    assert unpack_reply(msgpack.packb([R_OK, 1, b"v", 0])) == [R_OK, 1, b"v", 0]
    with pytest.raises(ValueError):  # one array too long
        unpack_reply(msgpack.packb([R_OK, 1, [0] * (MAX_REPLY_ELEMENTS + 1), 0]))
    nested = [[0] * 1000 for _ in range(MAX_REPLY_ELEMENTS // 1000 + 1)]
    with pytest.raises(ValueError):  # many arrays, too many elements together
        unpack_reply(msgpack.packb([R_OK, 1, nested, 0]))
    with pytest.raises(ValueError):
        unpack_reply(msgpack.packb([R_OK, 1, {"k": "v"}, 0]))


def test_the_decoder_vets_a_large_frame_before_buffering_its_body() -> None:
    heads: list[bytes] = []

    def refuse(head: bytes) -> None:
        heads.append(head)
        raise WorkerLied("no")

    body = msgpack.packb([R_OK, 7, b"x" * (1 << 20), 0])
    frame = struct.pack(">I", len(body)) + body
    decoder = FrameDecoder(2 << 20, check_head=refuse)
    assert decoder.feed(frame[:20]) == []  # not enough of its head yet: nothing allocated
    assert heads == [] and decoder.buffered == 20
    with pytest.raises(WorkerLied):
        decoder.feed(frame[20:4096])
    assert heads == [body[:HEAD_SIZE]]
    assert decoder.buffered < 8192  # the 1 MiB body was never allocated


def test_the_decoder_leaves_small_frames_to_the_reader() -> None:
    def never(head: bytes) -> None:
        raise AssertionError("checked a small frame")

    frame = pack_frame([R_OK, 7, b"x" * 100, 0])
    assert FrameDecoder(check_head=never).feed(frame) == [frame[4:]]


# -- the router's view: replies come in order ----------------------------------------


def _router(asked: dict[int, int], last_reply: int = 0) -> ReplyRouter[str]:
    """A router that sent ``OP_CALL`` requests ``asked`` (call id -> ref budget) and had
    the replies up to ``last_reply``."""
    router: ReplyRouter[str] = ReplyRouter()
    for call_id in range(1, max(asked, default=0) + 1):
        budget = asked.get(call_id, 0)
        router.send(Call(0, 1, "m", "f", "", "s", b"", budget, ""), f"w{call_id}", 100)
        if call_id <= last_reply:
            router.received([R_OK, call_id, b"", 0], open_=True)
    return router


def test_the_next_reply_must_answer_the_next_call() -> None:
    router = _router({1: 5, 2: 5})
    with pytest.raises(FalseFrame, match="reply for call 2; the next reply is for 1"):
        router.received([R_OK, 2, b"", 0], open_=True)  # skipped call 1
    assert router.received([R_OK, 1, b"", 0], open_=True) == (
        "w1",
        Ok(1, b"", 0),
    )


def test_a_reply_for_an_id_never_sent_or_answered_twice_is_a_lie() -> None:
    router = _router({1: 5})
    with pytest.raises(FalseFrame, match="10000"):
        router.received([R_OK, 10_000, b"", 0], open_=True)
    router.received([R_OK, 1, b"", 0], open_=True)
    with pytest.raises(FalseFrame):
        router.received([R_OK, 1, b"", 0], open_=True)  # again
    with pytest.raises(FalseFrame):
        router.received([R_OK, "1", b"", 0], open_=True)


def test_a_late_reply_to_a_cancelled_call_is_believed() -> None:
    router = _router({1: 5, 2: 5, 3: 5}, last_reply=2)
    router.abandon(3, open_=True)  # the caller gave up; the worker answers anyway
    assert router.received([R_ERR, 3, "CallCancelled", "", "call interrupted", ""], open_=True)


def test_a_reply_over_the_budget_sent_is_a_lie() -> None:
    router = _router({1: 5})
    with pytest.raises(FalseFrame, match="new_refs=6 for a request with a ref budget of 5"):
        router.received([R_OK, 1, b"", 6], open_=True)


def test_a_remote_stop_iteration_is_an_error_not_a_result() -> None:
    # Awaiting a future that holds a StopIteration would return its message as a result.
    error = _error_from(Err(1, "RemoteError", "builtins.StopIteration", "m", "tb"))
    assert type(error) is RemoteError and error.type_name == "builtins.StopIteration"
    assert not isinstance(error, StopIteration)
