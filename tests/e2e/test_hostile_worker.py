"""A worker running hostile code (sandbox level standard) lies to the server on its
channel: the server checks every reply against what it asked, bounds what it decodes,
and kills and replaces a worker that lies (issue #10, item 8).

The hostile code is in ``hostile_helpers.py``; it reaches the worker's channel socket
through ``gc``, as any code running in the worker can.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import errors

from .conftest import ServerProcess, pid_alive
from .test_unauthenticated_limits import Rss

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

MiB = 1024 * 1024
HELPERS = "remote_helpers,hostile_helpers"


def _hostile_server(make_server: Any, *args: str) -> ServerProcess:
    server: ServerProcess = make_server("--workers", "1", "--helpers", HELPERS, *args)
    return server


async def _replaced(client: snakebridge.Client, before: int) -> int:
    """The pid of the worker that replaced ``before`` (a call on it works)."""
    with anyio.fail_after(10):
        after = int(await client.call("remote_helpers", "pid"))
    assert after != before
    assert not pid_alive(before)
    return after


async def test_a_worker_claiming_a_billion_new_refs_is_killed_and_budgets_are_intact(
    make_server: Any,
) -> None:
    srv = _hostile_server(make_server, "--max-refs", "1000", "--max-refs-per-session", "100")
    async with snakebridge.Client(srv.address) as client:
        before = int(await client.call("remote_helpers", "pid"))
        with anyio.fail_after(10), pytest.raises(errors.WorkerCrashed, match="false report"):
            await client.call("hostile_helpers", "forge_new_refs", [10**9])
        srv.wait_for_log(r"sent a false report \(new_refs=1000000000 .*killing it")
        await _replaced(client, before)
        # Every session still has its whole budget: had the claim counted, the server
        # would hold 10^9 refs, over --max-refs, and refuse to make any.
        for _ in range(2):
            async with client.session() as session:
                things = await session.call("remote_helpers", "make_many", [100])
                assert len(things) == 100 and all(isinstance(t, snakebridge.Ref) for t in things)
        assert (await client.describe()).pools[0].restarts == {"killed": 1}


async def test_a_reply_for_a_call_never_sent_gets_the_worker_killed(make_server: Any) -> None:
    srv = _hostile_server(make_server)
    async with snakebridge.Client(srv.address) as client:
        before = int(await client.call("remote_helpers", "pid"))
        with anyio.fail_after(10), pytest.raises(errors.WorkerCrashed, match="false report"):
            await client.call("hostile_helpers", "forge_reply_to", [10**6])
        srv.wait_for_log(r"sent a false report \(a reply for call 1000000")
        await _replaced(client, before)


async def test_a_60_mib_frame_for_a_call_never_sent_is_refused_before_it_is_read(
    make_server: Any,
) -> None:
    srv = _hostile_server(make_server)
    async with snakebridge.Client(srv.address) as client:
        before = int(await client.call("remote_helpers", "pid"))
        rss = Rss(srv.pid)
        with anyio.fail_after(20), pytest.raises(errors.WorkerCrashed, match="false report"):
            await client.call("hostile_helpers", "forge_big_frame", [60 * MiB, 10**6])
        grown = rss.growth_mib()
        print(f"server RSS +{grown:.1f} MiB for a forged 60 MiB frame")
        assert grown < 50, grown  # decoding it cost ~600 MB
        srv.wait_for_log("not in flight")
        await _replaced(client, before)
