"""The ``Introspect`` RPC in the server, through the in-memory harness: what the bridge
refuses before any worker runs (names, counts, the call policy, the pool), and that a
valid request reaches a worker as an ``OP_INTROSPECT`` frame."""

from __future__ import annotations

from typing import Any

import pytest

from snakebridge.errors import BadRequest, PolicyError, PoolUnavailable
from snakebridge_server.testing import FakeCall, serve_in_memory

pytestmark = pytest.mark.anyio


async def _never(call: FakeCall) -> Any:
    raise AssertionError("introspection is not a call")


async def test_bad_introspect_requests_are_refused_before_any_worker_runs() -> None:
    async with serve_in_memory(_never) as (client, _, _, workers):
        with pytest.raises(BadRequest, match="not relative"):
            await client.introspect(".json")
        with pytest.raises(BadRequest, match="not relative"):
            await client.introspect("m" * 1025)
        with pytest.raises(BadRequest, match="at most 2000 names and 64 submodules"):
            await client.introspect("json", submodules=[f"s{i}" for i in range(65)])
        with pytest.raises(BadRequest, match="names and submodules of 1 to 1024"):
            await client.introspect("json", names=["a.b"])
        with pytest.raises(PolicyError, match="'os' is denied"):
            await client.introspect("os")
        with pytest.raises(PolicyError, match="private and dunder"):
            await client.introspect("json", names=["_default_encoder"])
        with pytest.raises(PolicyError):
            await client.introspect("json", submodules=["decoder", "__builtins__"])
        with pytest.raises(PoolUnavailable, match="no pool named 'nope'"):
            await client.introspect("json", pool="nope")
        assert workers[0].frames_received == 0


async def test_a_valid_request_reaches_a_worker_as_an_introspect_frame() -> None:
    async with serve_in_memory(_never) as (client, _, _, workers):
        # The fake worker serves calls only: its refusal names the frame it was sent.
        with pytest.raises(BadRequest, match="does not serve opcode 16"):
            await client.introspect("json", names=["dumps"])
        assert workers[0].frames_received == 1
        assert workers[0].calls == []
