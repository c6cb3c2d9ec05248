"""The hand-rolled Exchange messages against betterproto's generated ones, both ways."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakebridge._generated.snakebridge.v1 import (
    CallRequest,
    ExchangeCall,
    ExchangeReply,
    ExchangeRequest,
    ExchangeResult,
)
from snakebridge.wire.messages import (
    CallRequestWire,
    ExchangeCallWire,
    ExchangeReplyWire,
    ExchangeRequestWire,
    ExchangeResultWire,
    WireError,
)

PROPERTY = settings(max_examples=150, deadline=None)
ids = st.integers(min_value=0, max_value=2**64 - 1)
texts = st.text(st.characters(codec="ascii"), max_size=20)
calls = st.builds(
    lambda i, module, args, cid: (
        i,
        dict(protocol_version=1, kind=1, module=module, args=args),
        cid,
    ),
    ids,
    texts,
    st.binary(max_size=40),
    texts,
)


@PROPERTY
@given(st.lists(calls, max_size=5), st.lists(ids, max_size=5), st.integers(0, 3))
def test_request_is_byte_identical_to_betterproto_and_parses_back(
    items: list[tuple[int, dict[str, Any], str]], cancels: list[int], version: int
) -> None:
    ours = ExchangeRequestWire(
        protocol_version=version,
        calls=[
            ExchangeCallWire(id=i, call=CallRequestWire(**c), correlation_id=cid)
            for i, c, cid in items
        ],
        cancels=cancels,
    )
    theirs = ExchangeRequest(
        protocol_version=version,
        calls=[
            ExchangeCall(id=i, call=CallRequest(**c), correlation_id=cid) for i, c, cid in items
        ],
        cancels=cancels,
    )
    assert ours.SerializeToString() == bytes(theirs)
    back = ExchangeRequestWire.FromString(bytes(theirs))
    assert back.protocol_version == version and back.cancels == cancels
    assert [(c.id, c.call.module, c.call.args, c.correlation_id) for c in back.calls] == [
        (i, c["module"], c["args"], cid) for i, c, cid in items
    ]


def test_request_accepts_unpacked_cancels_as_protobuf_requires() -> None:
    unpacked = b"\x08\x01" + b"\x18\x05" + b"\x18\x07"
    assert ExchangeRequestWire.FromString(unpacked).cancels == [5, 7]


results = st.builds(
    lambda i, result, error, status: (i, result, error, status),
    ids,
    st.binary(max_size=30),
    st.binary(max_size=30),
    st.integers(0, 16),
)


@PROPERTY
@given(st.lists(results, max_size=6), st.booleans())
def test_reply_is_byte_identical_to_betterproto_and_parses_back(
    items: list[tuple[int, bytes, bytes, int]], closing: bool
) -> None:
    ours = ExchangeReplyWire(
        results=[ExchangeResultWire(id=i, result=r, error=e, status=s) for i, r, e, s in items],
        closing=closing,
    )
    theirs = ExchangeReply(
        results=[ExchangeResult(id=i, result=r, error=e, status=s) for i, r, e, s in items],
        closing=closing,
    )
    assert ours.SerializeToString() == bytes(theirs)
    back = ExchangeReplyWire.FromString(bytes(theirs))
    assert back.closing == closing
    assert [(r.id, r.result, r.error, r.status) for r in back.results] == items


@pytest.mark.parametrize("data", [b"\x12\x05\x08", b"\x1a\x02\x80", b"\x12\x02\x1a\x80"])
def test_truncated_exchange_messages_raise_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        ExchangeRequestWire.FromString(data)


def test_invalid_utf8_correlation_id_is_a_wire_error() -> None:
    call = b"\x1a\x02\xff\xfe"
    with pytest.raises(WireError):
        ExchangeRequestWire.FromString(b"\x12" + bytes([len(call)]) + call)
