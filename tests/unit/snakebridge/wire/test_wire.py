"""The hand-rolled CallRequest/CallReply wire classes against betterproto's generated ones."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakebridge._generated.snakebridge.v1 import CallKind, CallReply, CallRequest
from snakebridge.wire.messages import CallReplyWire, CallRequestWire, WireError

PROPERTY = settings(max_examples=200, deadline=None)

STRING_FIELDS = ("module", "name", "session_id", "target_ref", "pool", "affinity")
REQUEST_FIELDS = (
    "protocol_version",
    "kind",
    "module",
    "name",
    "session_id",
    "target_ref",
    "args",
    "arg_refs",
    "timeout",
    "idempotent",
    "pool",
    "affinity",
)

# protobuf strings are UTF-8: lone surrogates cannot be encoded by either implementation.
texts = st.text(st.characters(codec="utf-8"))

request_fields = st.fixed_dictionaries(
    {},
    optional={
        "protocol_version": st.integers(min_value=0, max_value=2**32 - 1),
        "kind": st.integers(min_value=0, max_value=7),
        "module": texts,
        "name": texts,
        "session_id": texts,
        "target_ref": texts,
        "args": st.binary(),
        "arg_refs": st.lists(texts, max_size=4),
        "timeout": st.one_of(
            st.floats(min_value=0.0, allow_infinity=False, allow_nan=False),
            st.just(0.0),
            st.floats(),  # negative, -0.0, infinities and nan: still the same bytes
        ),
        "idempotent": st.booleans(),
        "pool": texts,
        "affinity": texts,
    },
)


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def request_values(msg: Any) -> dict[str, Any]:
    """Field values of either implementation, normalised for comparison."""
    out = {name: getattr(msg, name) for name in REQUEST_FIELDS}
    out["kind"] = int(out["kind"])
    out["arg_refs"] = list(out["arg_refs"])
    out["timeout"] = _bits(out["timeout"])
    out["args"] = bytes(out["args"])
    return out


def expected_values(fields: dict[str, Any]) -> dict[str, Any]:
    expected = request_values(CallRequestWire())
    expected.update(fields)
    if "timeout" in fields:
        # -0.0 equals the default, so neither implementation writes it: it reads back as 0.0
        t = fields["timeout"]
        expected["timeout"] = _bits(0.0 if t == 0.0 and not math.isnan(t) else t)
    expected["arg_refs"] = list(expected["arg_refs"])
    return expected


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


UNKNOWN_FIELDS = (
    _key(99, 0)
    + _varint(2**63 + 5)  # varint
    + _key(98, 2)
    + _varint(3)
    + b"xyz"  # length-delimited
    + _key(97, 5)
    + b"\x01\x02\x03\x04"  # fixed32
    + _key(96, 1)
    + b"\x00" * 8  # fixed64
    + _key(95, 2)
    + b"\x00"  # empty length-delimited
)


# --- CallRequest ----------------------------------------------------------------------------


@PROPERTY
@given(request_fields)
def test_request_encoding_is_byte_identical_to_betterproto(fields: dict[str, Any]) -> None:
    assert CallRequestWire(**fields).SerializeToString() == bytes(CallRequest(**fields))


@PROPERTY
@given(request_fields)
def test_request_parses_betterproto_bytes_to_the_same_fields(fields: dict[str, Any]) -> None:
    parsed = CallRequestWire.FromString(bytes(CallRequest(**fields)))
    assert request_values(parsed) == expected_values(fields)


@PROPERTY
@given(request_fields)
def test_betterproto_parses_our_request_bytes_to_the_same_fields(fields: dict[str, Any]) -> None:
    parsed = CallRequest().parse(CallRequestWire(**fields).SerializeToString())
    assert request_values(parsed) == expected_values(fields)


@PROPERTY
@given(request_fields)
def test_request_skips_unknown_fields_before_and_after(fields: dict[str, Any]) -> None:
    data = CallRequestWire(**fields).SerializeToString()
    parsed = CallRequestWire.FromString(UNKNOWN_FIELDS + data + UNKNOWN_FIELDS)
    assert request_values(parsed) == expected_values(fields)


def test_request_with_unknown_varint_and_length_delimited_fields_still_decodes() -> None:
    data = bytes(CallRequest(kind=CallKind(CallKind.METHOD), name="f", arg_refs=["a"]))
    data += _key(99, 0) + _varint(7) + _key(98, 2) + _varint(2) + b"hi"
    parsed = CallRequestWire.FromString(data)
    assert parsed.kind == CallKind.METHOD
    assert parsed.name == "f"
    assert parsed.arg_refs == ["a"]


def test_request_fields_in_reverse_order_decode_the_same() -> None:
    fields: dict[str, Any] = {
        "protocol_version": 3,
        "kind": 2,
        "module": "m",
        "name": "n",
        "session_id": "s",
        "target_ref": "t",
        "args": b"\x00\x01",
        "arg_refs": ["r1", "r2"],
        "timeout": 1.5,
        "idempotent": True,
        "pool": "p",
        "affinity": "a",
    }
    parts = [CallRequestWire(**{k: v}).SerializeToString() for k, v in fields.items()]
    data = b"".join(reversed(parts[:7])) + parts[7] + b"".join(reversed(parts[8:]))
    assert request_values(CallRequestWire.FromString(data)) == expected_values(fields)
    assert request_values(CallRequest().parse(data)) == expected_values(fields)


def test_repeated_scalar_field_takes_the_last_value_like_betterproto() -> None:
    data = b"\x08\x01\x08\x02" + b"\x1a\x01a\x1a\x01b"
    ours = CallRequestWire.FromString(data)
    theirs = CallRequest().parse(data)
    assert (ours.protocol_version, ours.module) == (2, "b")
    assert (theirs.protocol_version, theirs.module) == (2, "b")


def test_default_request_is_empty_bytes_and_parses_back_to_defaults() -> None:
    assert CallRequestWire().SerializeToString() == b"" == bytes(CallRequest())
    assert request_values(CallRequestWire.FromString(b"")) == request_values(CallRequest())


def test_each_request_has_its_own_arg_refs_list() -> None:
    a, b = CallRequestWire(), CallRequestWire()
    a.arg_refs.append("x")
    assert b.arg_refs == []
    assert CallRequestWire.FromString(b"").arg_refs == []


def test_negative_kind_encodes_like_betterproto_instead_of_looping_forever() -> None:
    # A raw -1 on purpose: what a peer may send for an enum, not a CallKind member.
    negative: Any = -1
    assert CallRequestWire(kind=-1).SerializeToString() == bytes(CallRequest(kind=negative))


def test_large_varints_encode_like_betterproto() -> None:
    for n in (127, 128, 2**14, 2**32 - 1):
        assert CallRequestWire(protocol_version=n).SerializeToString() == bytes(
            CallRequest(protocol_version=n)
        )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x08", id="missing-varint-value"),
        pytest.param(b"\x08\x80", id="truncated-varint-value"),
        pytest.param(b"\x80", id="truncated-key"),
        pytest.param(b"\x1a\x05ab", id="truncated-string"),
        pytest.param(b"\x1a", id="missing-length"),
        pytest.param(b"\x1a\x80", id="truncated-length"),
        pytest.param(b"\x3a\x03\x00", id="truncated-bytes"),
        pytest.param(b"\x49\x00\x00\x00", id="truncated-double"),
        pytest.param(_key(98, 2) + b"\x04ab", id="truncated-unknown-length-delimited"),
        pytest.param(_key(96, 1) + b"\x00" * 7, id="truncated-unknown-fixed64"),
        pytest.param(_key(97, 5) + b"\x00\x00", id="truncated-unknown-fixed32"),
        pytest.param(_key(99, 0) + b"\xff\xff", id="truncated-unknown-varint"),
        pytest.param(b"\x08" + b"\xff" * 11 + b"\x01", id="varint-longer-than-10-bytes"),
        pytest.param(_key(94, 6), id="invalid-wire-type-6"),
        pytest.param(_key(94, 7), id="invalid-wire-type-7"),
    ],
)
def test_malformed_request_raises_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        CallRequestWire.FromString(data)


@PROPERTY
@given(request_fields, st.data())
def test_truncated_request_raises_wire_error_unless_cut_between_fields(
    fields: dict[str, Any], data: st.DataObject
) -> None:
    singles = [
        {name: [ref]} if name == "arg_refs" else {name: value}
        for name, value in fields.items()
        for ref in (value if name == "arg_refs" else [None])
    ]
    parts = [CallRequestWire(**single).SerializeToString() for single in singles]
    whole = b"".join(parts)
    boundaries = {0}
    for part in parts:
        boundaries.add(max(boundaries) + len(part))
    cut = data.draw(st.integers(min_value=0, max_value=len(whole)))
    if cut in boundaries:
        CallRequestWire.FromString(whole[:cut])
    else:
        with pytest.raises(WireError):
            CallRequestWire.FromString(whole[:cut])


@pytest.mark.parametrize("field", [*STRING_FIELDS, "arg_refs"])
def test_invalid_utf8_in_a_string_field_raises_wire_error(field: str) -> None:
    number = REQUEST_FIELDS.index(field) + 1
    data = _key(number, 2) + b"\x02\xff\xfe"
    with pytest.raises(WireError, match="UTF-8"):
        CallRequestWire.FromString(data)


def test_invalid_utf8_in_args_bytes_is_accepted() -> None:
    assert CallRequestWire.FromString(b"\x3a\x02\xff\xfe").args == b"\xff\xfe"


@PROPERTY
@given(st.binary(max_size=64))
def test_random_bytes_parse_or_raise_wire_error_only(data: bytes) -> None:
    for cls in (CallRequestWire, CallReplyWire):
        try:
            cls.FromString(data)
        except WireError:
            pass


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


# --- CallReply ------------------------------------------------------------------------------


@PROPERTY
@given(st.binary())
def test_reply_encoding_is_byte_identical_to_betterproto(result: bytes) -> None:
    assert CallReplyWire(result=result).SerializeToString() == bytes(CallReply(result=result))


@PROPERTY
@given(st.binary())
def test_reply_parses_both_ways_to_the_same_result(result: bytes) -> None:
    assert CallReplyWire.FromString(bytes(CallReply(result=result))).result == result
    assert CallReply().parse(CallReplyWire(result=result).SerializeToString()).result == result


@PROPERTY
@given(st.binary())
def test_reply_skips_unknown_fields(result: bytes) -> None:
    data = UNKNOWN_FIELDS + CallReplyWire(result=result).SerializeToString() + UNKNOWN_FIELDS
    assert CallReplyWire.FromString(data).result == result


def test_default_reply_is_empty_bytes() -> None:
    assert CallReplyWire().SerializeToString() == b"" == bytes(CallReply())
    assert CallReplyWire.FromString(b"").result == b""


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0a\x05ab", id="truncated-result"),
        pytest.param(b"\x0a", id="missing-length"),
        pytest.param(b"\x80", id="truncated-key"),
        pytest.param(_key(97, 5) + b"\x00", id="truncated-unknown-fixed32"),
    ],
)
def test_malformed_reply_raises_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        CallReplyWire.FromString(data)


def test_stream_request_and_batch_match_the_generated_messages() -> None:
    from snakebridge._generated.snakebridge.v1 import StreamBatch, StreamRequest
    from snakebridge.wire.messages import StreamBatchWire, StreamRequestWire

    inner: dict[str, Any] = dict(
        protocol_version=1, kind=3, target_ref="b.default.0.1.7", args=b"\x90"
    )
    ours = StreamRequestWire(protocol_version=1, call=CallRequestWire(**inner))
    theirs = StreamRequest(protocol_version=1, call=CallRequest(**inner))
    assert ours.SerializeToString() == bytes(theirs)
    back = StreamRequestWire.FromString(bytes(theirs))
    assert (back.protocol_version, back.call.kind, back.call.target_ref) == (
        1,
        3,
        inner["target_ref"],
    )
    assert StreamBatchWire(items=b"\x92\x01\x02").SerializeToString() == bytes(
        StreamBatch(items=b"\x92\x01\x02")
    )
    assert StreamBatchWire.FromString(bytes(StreamBatch(items=b"\x91\x05"))).items == b"\x91\x05"


def test_importing_the_sdk_makes_data_frame_reprs_cheap() -> None:
    """h2 repr()s every received frame; hyperframe's generic repr hex-encoded the whole
    DATA payload (snakebridge/_h2_repr.py). The SDK client (and the server) replace it
    with the size."""
    from hyperframe.frame import DataFrame

    from snakebridge import Client  # noqa: F401  (importing the client installs it)

    frame = DataFrame(1, data=b"\xab" * (1 << 20))
    text = repr(frame)
    assert "1048576 bytes of data" in text
    assert "abab" not in text and len(text) < 200
