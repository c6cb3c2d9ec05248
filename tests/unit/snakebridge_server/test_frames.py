"""The typed frames of the server <-> worker channel (``snakebridge_server.frames``):
every frame round-trips through the channel's framing, packs to the positional array the
wire carried before frames were typed, and refuses a malformed shape."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from snakebridge_server.channel import (
    OP_CALL,
    OP_INTROSPECT,
    OP_RELEASE,
    OP_RELEASE_SESSION,
    OP_STREAM_CLOSE,
    OP_STREAM_NEXT,
    OP_STREAM_OPEN,
    OP_STREAM_PULL,
    R_ERR,
    R_OK,
    R_READY,
    STREAM_DONE,
    STREAM_ERROR,
    STREAM_MORE,
    FrameDecoder,
    pack_frame,
    pack_frame_parts,
    unpack_message,
    unpack_reply,
)
from snakebridge_server.frames import (
    REQUESTS,
    USER_CODE_OPS,
    Call,
    Err,
    FalseReply,
    Introspect,
    NextItem,
    Ok,
    Ready,
    Release,
    ReleaseSession,
    StreamBatch,
    StreamClose,
    StreamNext,
    StreamOpen,
    StreamPull,
    unpack_ok,
)

BIG = b"\x01" * (300 * 1024)  # travels as its own buffer in pack_frame_parts

# Each request frame, with the array it must pack to (the pre-typed wire format).
REQUEST_CASES: list[tuple[Any, list[Any]]] = [
    (
        Call(7, 1, "math", "sqrt", "", "s", b"\x92\x91\x10\x80", 5, "cid-1"),
        [OP_CALL, 7, 1, "math", "sqrt", "", "s", b"\x92\x91\x10\x80", 5, "cid-1"],
    ),
    (
        Call(8, 3, "", "upper", "b.p.0.1.t", "s", BIG, 0, ""),
        [OP_CALL, 8, 3, "", "upper", "b.p.0.1.t", "s", BIG, 0, ""],
    ),
    (Release(9, ["r1", "r2"], "s"), [OP_RELEASE, 9, ["r1", "r2"], "s"]),
    (ReleaseSession(10, "s"), [OP_RELEASE_SESSION, 10, "s"]),
    (
        StreamOpen(11, 1, "builtins", "range", "", "s", b"\x91\x03", 4, 1, 65536, 0.01, "c"),
        [OP_STREAM_OPEN, 11, 1, "builtins", "range", "", "s", b"\x91\x03", 4, 1, 65536, 0.01, "c"],
    ),
    (
        StreamPull(12, 3, "s", 4, 512, 65536, 0.01, ""),
        [OP_STREAM_PULL, 12, 3, "s", 4, 512, 65536, 0.01, ""],
    ),
    (StreamClose(13, 3), [OP_STREAM_CLOSE, 13, 3]),
    (StreamNext(14, "b.p.0.1.t", "s", 2, "c"), [OP_STREAM_NEXT, 14, "b.p.0.1.t", "s", 2, "c"]),
    (
        Introspect(15, "json", ["dumps"], ["decoder"], False, "c"),
        [OP_INTROSPECT, 15, "json", ["dumps"], ["decoder"], False, "c"],
    ),
]


def _through_the_channel(message: list[Any]) -> bytes | bytearray:
    frames = FrameDecoder().feed(b"".join(pack_frame_parts(message)))
    assert len(frames) == 1
    return frames[0]


def test_every_request_opcode_has_a_case() -> None:
    assert {case[1][0] for case in REQUEST_CASES} == set(REQUESTS)


@pytest.mark.parametrize(("frame", "array"), REQUEST_CASES)
def test_request_frames_round_trip_and_keep_the_wire_array(frame: Any, array: list[Any]) -> None:
    assert frame.pack() == array
    body = _through_the_channel(frame.pack())
    assert bytes(body) == pack_frame(array)[4:]  # the same bytes as the positional list
    message = unpack_message(body)
    assert REQUESTS[message[0]].unpack(message) == frame
    if message[0] in USER_CODE_OPS:
        assert message[-1] == frame.cid  # the worker reads it off the end


@pytest.mark.parametrize(("frame", "array"), REQUEST_CASES)
def test_a_request_of_the_wrong_length_is_refused(frame: Any, array: list[Any]) -> None:
    with pytest.raises(ValueError, match="fields"):
        type(frame).unpack([*array, 0])
    with pytest.raises(ValueError, match="fields"):
        type(frame).unpack(array[:-1])


def test_call_frames_are_filled_in_per_attempt() -> None:
    # The bridge builds one frame per request; each worker sets its own call id and
    # correlation id, and the request's budget, when it sends it.
    template = Call(0, 1, "math", "sqrt", "", "s", b"", 0, "")
    sent = template._replace(call_id=3, ref_budget=9, cid="c")
    assert sent.pack() == [OP_CALL, 3, 1, "math", "sqrt", "", "s", b"", 9, "c"]
    assert sent.reply_bound(100) == 9
    assert Release(0, ["a", "b", "c"], "s").reply_bound(100) == 3
    assert ReleaseSession(0, "s").reply_bound(100) == 100
    assert StreamClose(0, 1).reply_bound(100) == 100


# Each reply to a request opcode, with its bound and the typed value it unpacks to.
OK_CASES: list[tuple[int, int, Any, int, Any]] = [
    (OP_CALL, 5, b"\xc0", 2, b"\xc0"),
    (OP_CALL, 5, BIG, 0, BIG),
    (
        OP_STREAM_OPEN,
        3,
        [1, b"\x90", STREAM_MORE, None, []],
        3,
        StreamBatch(1, b"\x90", STREAM_MORE, None, []),
    ),
    (
        OP_STREAM_PULL,
        3,
        [1, b"\x90", STREAM_ERROR, ["T", "m", "tb"], [["s", 1]]],
        0,
        StreamBatch(1, b"\x90", STREAM_ERROR, ["T", "m", "tb"], [["s", 1]]),
    ),
    (
        OP_STREAM_PULL,
        3,
        [1, b"", STREAM_DONE, None, []],
        0,
        StreamBatch(1, b"", STREAM_DONE, None, []),
    ),
    (OP_STREAM_NEXT, 3, [False, b"\x01", []], 1, NextItem(False, b"\x01", [])),
    (OP_STREAM_NEXT, 3, [True, b"", [["s", 1]]], 0, NextItem(True, b"", [["s", 1]])),
    (OP_RELEASE, 2, [["s", 2]], 0, [["s", 2]]),
    (OP_RELEASE_SESSION, 100, 7, 0, 7),
    (OP_STREAM_CLOSE, 100, True, 0, True),
    (OP_INTROSPECT, 100, b"\x80", 0, b"\x80"),
]


@pytest.mark.parametrize(
    "array",
    [
        [OP_INTROSPECT, 1, 7, [], [], False, ""],  # a module that is not a name
        [OP_INTROSPECT, 1, "m", "names", [], False, ""],
        [OP_INTROSPECT, 1, "m", [], [1], False, ""],
    ],
)
def test_a_malformed_introspect_frame_is_refused(array: list[Any]) -> None:
    with pytest.raises(ValueError, match="malformed introspect"):
        Introspect.unpack(array)


def test_an_introspect_reply_makes_no_refs_and_is_bytes() -> None:
    assert Introspect(0, "m", [], [], False, "").reply_bound(100) == 0
    with pytest.raises(FalseReply, match="new_refs"):
        unpack_ok([R_OK, 1, b"\x80", 1], OP_INTROSPECT, 0)
    with pytest.raises(FalseReply, match="malformed"):
        unpack_ok([R_OK, 1, [1, 2], 0], OP_INTROSPECT, 0)


@pytest.mark.parametrize(("op", "bound", "wire_value", "new_refs", "value"), OK_CASES)
def test_ok_replies_round_trip_typed(
    op: int, bound: int, wire_value: Any, new_refs: int, value: Any
) -> None:
    # The worker packs typed values; the array is what it always was.
    ok = Ok(4, value, new_refs)
    assert ok.pack() == [R_OK, 4, value, new_refs]
    assert pack_frame(ok.pack()) == pack_frame([R_OK, 4, wire_value, new_refs])
    back = unpack_ok(unpack_reply(_through_the_channel(ok.pack())), op, bound)
    assert back == ok and type(back.value) is type(value)


def test_an_ok_reply_that_lies_is_refused_with_the_reason() -> None:
    with pytest.raises(FalseReply, match="new_refs=6 for a request with a ref budget of 5"):
        unpack_ok([R_OK, 1, b"", 6], OP_CALL, 5)
    with pytest.raises(FalseReply, match="malformed"):
        unpack_ok([R_OK, 1, [1, b"", 7, None, []], 0], OP_STREAM_OPEN, 3)


def test_error_replies_round_trip() -> None:
    err = Err(5, "RemoteError", "builtins.ValueError", "bad", "Traceback ...")
    assert err.pack() == [
        R_ERR,
        5,
        "RemoteError",
        "builtins.ValueError",
        "bad",
        "Traceback ...",
        None,
    ]
    assert Err.unpack(unpack_reply(_through_the_channel(err.pack()))) == err
    # A frame written without the detail field (a worker of the previous release).
    assert Err.unpack(err.pack()[:-1]) == err
    detailed = err._replace(detail=b"\x81\xa5notes\x91\xa1n")
    assert Err.unpack(unpack_reply(_through_the_channel(detailed.pack()))) == detailed
    assert Err.of(6, "CallCancelled", "call interrupted").pack() == [
        R_ERR,
        6,
        "CallCancelled",
        "",
        "call interrupted",
        "",
        None,
    ]
    with pytest.raises(ValueError, match="fields"):
        Err.unpack([R_ERR, 5, "RemoteError"])


def test_the_ready_frame_round_trips_and_is_checked() -> None:
    ready = Ready(1234, "3.11.7", "standard", ["landlock: on"], [["f", "(x)", "doc"]])
    assert ready.pack() == [R_READY, *ready]
    assert Ready.unpack(unpack_reply(_through_the_channel(ready.pack()))) == ready
    for bad in (
        [R_READY, 1234, "3.11.7", "standard", ["x"]],  # a field short
        [R_READY, "1234", "3.11.7", "standard", [], []],
        [R_READY, 1234, "3.11.7", "standard", [1], []],
        [R_READY, 1234, "3.11.7", "standard", [], [["f", "(x)"]]],
        [R_OK, 1234, "3.11.7", "standard", [], []],
    ):
        with pytest.raises(ValueError):
            Ready.unpack(bad)


def test_a_ready_frame_packs_as_one_msgpack_array() -> None:
    ready = Ready(1, "3.11", "none", [], [])
    assert msgpack.unpackb(pack_frame(ready.pack())[4:]) == [R_READY, 1, "3.11", "none", [], []]
