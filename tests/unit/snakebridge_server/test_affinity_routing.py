"""Placement by affinity (issue #16 E): ``"hint"`` and ``"strict_fail_fast"`` in the pure
``supervisor.pool.choose_worker`` and through the in-memory harness (calls, streams,
helpers), an unknown affinity refused, and an idempotent call retried by the SDK after
the server's own retry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from snakebridge._client import Invocation
from snakebridge.errors import BadRequest, PoolSaturated, SessionLost, WorkerCrashed
from snakebridge.wire.constants import KIND_FUNCTION
from snakebridge_server.config import PoolConfig, ServerConfig
from snakebridge_server.refids import WorkerKey
from snakebridge_server.supervisor.pool import choose_worker
from snakebridge_server.testing import FakeCall, serve_in_memory

pytestmark = pytest.mark.anyio

TWO_WORKERS = ServerConfig(pools=(PoolConfig(workers=2),))


class _W:
    def __init__(self, slot: int, in_flight: int = 0, concurrency: int = 1) -> None:
        self.key = WorkerKey("default", slot, 1)
        self.alive = True
        self.in_flight = in_flight
        self.concurrency = concurrency


def test_hint_prefers_the_sessions_worker_until_it_is_busy() -> None:
    a, b = _W(0, in_flight=0), _W(1, in_flight=0)
    assert choose_worker([a, b], previous=b.key, affinity="hint") is b
    b.in_flight = 1  # busy at concurrency 1: the least loaded instead
    assert choose_worker([a, b], previous=b.key, affinity="hint") is a
    b.concurrency = 4  # room left for more
    assert choose_worker([a, b], previous=b.key, affinity="hint") is b
    # Its worker gone: no SessionLost, just another worker.
    assert choose_worker([a], previous=b.key, affinity="hint") is a


def test_strict_fail_fast_refuses_at_once_when_the_worker_is_busy() -> None:
    a, b = _W(0), _W(1, in_flight=1)
    with pytest.raises(PoolSaturated, match="strict_fail_fast"):
        choose_worker([a, b], previous=b.key, affinity="strict_fail_fast")
    b.in_flight = 0
    assert choose_worker([a, b], previous=b.key, affinity="strict_fail_fast") is b
    with pytest.raises(SessionLost):
        choose_worker([a], previous=b.key, affinity="strict_fail_fast")
    # No previous worker yet: placed like any call.
    assert choose_worker([a, b], previous=None, affinity="strict_fail_fast") is a


async def test_affinities_through_the_bridge() -> None:
    busy, release = asyncio.Event(), asyncio.Event()

    async def script(call: FakeCall) -> Any:
        if call.name == "block":
            busy.set()
            await release.wait()
        return str(call.worker.key)

    async with serve_in_memory(script, config=TWO_WORKERS) as (client, _, _, _):
        session = client.session("s")
        assert await session.call("m", "where", affinity="hint") == "default.0.1"
        blocker = asyncio.create_task(session.call("m", "block", affinity="strict"))
        await busy.wait()  # the session's worker 0 is busy now
        with pytest.raises(PoolSaturated, match="busy"):
            await session.call("m", "where", affinity="strict_fail_fast")
        with pytest.raises(PoolSaturated, match="busy"):  # streams and helpers take it too
            async for _ in session.stream("m", "where", affinity="strict_fail_fast"):
                pass
        with pytest.raises(PoolSaturated, match="busy"):
            await session.call_helper("h", affinity="strict_fail_fast")
        # (This call makes worker 1 the session's worker.)
        assert await session.call("m", "where", affinity="hint") == "default.1.1"
        with pytest.raises(ValueError, match="affinity"):
            await session.call("m", "where", affinity="sticky")
        release.set()
        assert await blocker == "default.0.1"
        # The blocker ended last: worker 0 is the session's worker again.
        assert await session.call("m", "where", affinity="strict_fail_fast") == "default.0.1"
        assert await session.call_helper("h", affinity="strict") == "default.0.1"


async def test_the_server_refuses_an_unknown_affinity() -> None:
    async def script(call: FakeCall) -> Any:
        return None

    async with serve_in_memory(script) as (client, _, _, _):
        req = client._request(
            Invocation(kind=KIND_FUNCTION, module="m", name="f", session_id="s", args=[],
                       kwargs=None)
        )  # fmt: skip
        req.affinity = "sticky"
        with pytest.raises(BadRequest, match="affinity"):
            await client._unary("Call", req, type(req), type(req), None)


async def test_an_idempotent_call_is_retried_after_crashes_and_others_are_not() -> None:
    from snakebridge_server.testing import Crash

    attempts: dict[str, int] = {}

    async def script(call: FakeCall) -> Any:
        attempts[call.name] = attempts.get(call.name, 0) + 1
        if attempts[call.name] <= 3:
            raise Crash
        return attempts[call.name]

    config = ServerConfig(pools=(PoolConfig(workers=2),))
    async with serve_in_memory(script, config=config) as (client, _, _, _):
        # The server retries once itself; the client's schedule covers the rest.
        assert await client.call("m", "safe", idempotent=True, timeout=30) == 4
        with pytest.raises(WorkerCrashed):
            await client.call("m", "unsafe", timeout=30)
        assert attempts["unsafe"] == 1
