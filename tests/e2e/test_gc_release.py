"""Refs that free themselves (issue #16 D), against a real server: a handle the client
drops is released on the server within about a second, a loop that drops each handle
never reaches the session's ref cap, ``release_on_gc=False`` keeps today's behaviour, and
the server warns when a session passes 80% of its cap."""

from __future__ import annotations

import gc
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import errors

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

H = "concurrency_helpers"


async def _refs_held(client: snakebridge.Client) -> int:
    info = await client.describe()
    return sum(w.refs for w in info.pools[0].workers)


async def test_a_loop_that_drops_its_handles_never_reaches_the_cap(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-refs-per-session", "100")
    async with snakebridge.Client(srv.address) as client:
        for _ in range(300):
            handle = await client.call(H, "make_counter")
            assert await client.call_method(handle, "bump") == 1
        del handle
        with anyio.fail_after(10):  # every one released, the last within about a second
            while await _refs_held(client):  # noqa: ASYNC110 - the server's count, polled
                await anyio.sleep(0.05)


async def test_without_release_on_gc_the_cap_is_reached(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-refs-per-session", "100")
    async with snakebridge.Client(srv.address, release_on_gc=False) as client:
        with pytest.raises(errors.LimitExceeded):
            for _ in range(101):
                await client.call(H, "make_counter")
        gc.collect()
        assert await _refs_held(client) == 100
    line = srv.wait_for_log(r"session \S+ holds 80 refs, over 80% of its cap of 100")
    assert len([x for x in srv.lines if "over 80% of its cap" in x]) == 1, line  # once


async def test_a_collected_ref_is_released_and_a_kept_one_is_not(make_server: Any) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        kept = await client.call(H, "make_counter")
        dropped = await client.call(H, "make_counter")
        stream = await client.call("builtins", "iter", [[1, 2, 3]])
        assert isinstance(stream, snakebridge.StreamRef)
        assert await _refs_held(client) == 3
        del dropped, stream
        gc.collect()
        with anyio.fail_after(10):
            while await _refs_held(client) != 1:  # noqa: ASYNC110 - the server's count
                await anyio.sleep(0.05)
        assert await client.call_method(kept, "bump") == 1
        # The same remote object decoded twice is one handle: dropping one copy of the
        # list frees nothing that the other still uses.
        pair = await client.call(H, "twice", [kept])
        assert pair[0] is pair[1] is kept
        del pair
        gc.collect()
        assert await client.call_method(kept, "bump") == 2
