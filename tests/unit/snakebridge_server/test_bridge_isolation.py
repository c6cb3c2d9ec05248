"""Dedicated workers through the in-memory harness (``snakebridge_server.testing``):
``session`` isolation hands each session a spare of its own and discards it with the
session, waits (bounded) at the pool maximum, and a session that keeps crashing its
worker is refused without tripping the pool (issue #12). The pure decisions are tested in
test_isolation.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from snakebridge.errors import LimitExceeded, PoolSaturated, WorkerCrashed
from snakebridge_server.config import PoolConfig, ServerConfig
from snakebridge_server.testing import Crash, FakeCall, serve_in_memory

pytestmark = pytest.mark.anyio


def _session_pool(**settings: Any) -> ServerConfig:
    return ServerConfig(pools=(PoolConfig(isolation="session", **settings),))


async def _where(call: FakeCall) -> Any:
    if call.name == "crash":
        raise Crash()
    if call.name == "block":
        await asyncio.Event().wait()
    return str(call.worker.key)


async def test_each_session_gets_a_worker_of_its_own_discarded_with_it() -> None:
    config = _session_pool(workers=3, spare_workers=1)
    async with serve_in_memory(_where, config=config) as (client, bridge, _, _):
        a, b = client.session("a"), client.session("b")
        where_a = await a.call("m", "f")
        where_b = await b.call("m", "f")
        assert where_a != where_b
        assert await a.call("m", "f") == where_a  # every call of a session, its worker
        await a.release()
        pool = bridge.pools["default"]
        assert where_a not in {str(w.key) for w in pool.workers if w is not None and w.alive}
        assert pool.restarts == {"session_released": 1}
        where_c = await client.session("c").call("m", "f")
        assert where_c not in (where_a, where_b)


async def test_at_the_maximum_a_session_waits_its_turn_and_one_more_is_saturated() -> None:
    config = _session_pool(workers=1, spare_workers=1, max_waiting=1)
    async with serve_in_memory(_where, config=config) as (client, _, _, _):
        a = client.session("a")
        first = await a.call("m", "f")
        waiting = asyncio.create_task(client.session("b").call("m", "f"))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # every worker is a's
        with pytest.raises(PoolSaturated, match="max_waiting"):
            await client.session("c").call("m", "f")
        await a.release()
        assert await asyncio.wait_for(waiting, 5) != first


async def test_a_crashing_session_is_refused_and_the_pool_keeps_serving() -> None:
    config = _session_pool(workers=2, spare_workers=1, crash_loop_max=2, session_crash_limit=3)
    async with serve_in_memory(_where, config=config) as (client, bridge, _, _):
        storm = client.session("storm")
        for _ in range(3):
            with pytest.raises(WorkerCrashed):
                await asyncio.wait_for(storm.call("m", "crash"), 5)
        with pytest.raises(LimitExceeded, match="session_crash_limit=3"):
            await storm.call("m", "f")
        assert await asyncio.wait_for(client.session("calm").call("m", "f"), 5)
        pool = bridge.pools["default"]
        assert not pool.tripped and pool.restarts.get("crash") == 3
