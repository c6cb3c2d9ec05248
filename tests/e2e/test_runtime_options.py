"""Runtime options against a real server (issue #16 E): ``affinity="hint"`` and
``"strict_fail_fast"``, ``client.defaults()`` blocks, and the idempotent retry schedule
after worker crashes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import snakebridge
from snakebridge import errors

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

H = "concurrency_helpers"


async def test_strict_fail_fast_and_hint_on_a_busy_worker(make_server: Any) -> None:
    srv = make_server("--workers", "2")
    async with snakebridge.Client(srv.address) as client:
        session = client.session("s")
        mine = await session.call(H, "pid", affinity="strict")
        blocker = asyncio.create_task(session.call(H, "block", [1.5], affinity="strict"))
        # Until the blocker is in flight on the session's worker (nothing to wait on but
        # the server's own report).
        while not any(w.in_flight for w in (await client.describe()).pools[0].workers):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        with pytest.raises(errors.PoolSaturated, match="strict_fail_fast"):
            await session.call(H, "pid", affinity="strict_fail_fast")
        other = await session.call(H, "pid", affinity="hint")
        assert other != mine  # busy: the hint gave way
        assert await blocker == "done"


async def test_defaults_block_sets_timeout_pool_and_session(make_server: Any) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        with client.defaults(timeout=0.5, session="scoped"):
            with pytest.raises(errors.CallTimeout):
                await client.call(H, "block", [3])
            counter = await client.call(H, "make_counter")
            assert counter.session_id == "scoped"
            with client.defaults(pool="nope"):
                with pytest.raises(errors.PoolUnavailable, match="nope"):
                    await client.call(H, "pid")
        assert (await client.call(H, "make_counter")).session_id == client.current_session()
        assert await client.release_session("scoped") == 1


async def test_an_idempotent_call_outlives_three_crashes(make_server: Any, tmp_path: Path) -> None:
    srv = make_server("--workers", "2")
    path = str(tmp_path / "count")
    async with snakebridge.Client(srv.address) as client:
        # The server retries once after a crash; the client retries on its schedule.
        assert await client.call(H, "die_until", [path, 3], idempotent=True, timeout=60) == 4
        with pytest.raises(errors.WorkerCrashed):
            await client.call(H, "die_until", [str(tmp_path / "other"), 1], timeout=60)
