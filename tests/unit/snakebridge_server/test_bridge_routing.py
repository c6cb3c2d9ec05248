"""Where the bridge sends a call, and what becomes of it when its worker dies, through the
in-memory harness (``snakebridge_server.testing``): strict affinity, the idempotent retry,
re-routing of calls that never started, and the reply router seen from the client
(running vs never started, a late reply after a cancel, replies left in the channel when
the worker exits). The router's own rules are unit-tested in supervisor/test_reply_router.py."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from snakebridge.errors import CallTimeout, SessionLost, WorkerCrashed
from snakebridge_server.config import PoolConfig, ServerConfig
from snakebridge_server.testing import Crash, FakeCall, serve_in_memory

pytestmark = pytest.mark.anyio

TWO_WORKERS = ServerConfig(pools=(PoolConfig(workers=2),))


def _where(call: FakeCall) -> str:
    return str(call.worker.key)


async def _first_arrival(*waits: Coroutine[Any, Any, None]) -> None:
    """Until the first of ``waits`` is over (where a call went), the others cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- strict affinity ----------------------------------------------------------------------


async def test_strict_affinity_waits_for_the_sessions_worker_when_another_is_idle() -> None:
    busy, release = asyncio.Event(), asyncio.Event()

    async def script(call: FakeCall) -> Any:
        if call.name == "block":
            busy.set()
            await release.wait()
        return _where(call)

    async with serve_in_memory(script, config=TWO_WORKERS) as (client, _, _, workers):
        session = client.session("s")
        assert await session.call("m", "where", affinity="strict") == "default.0.1"
        blocker = asyncio.create_task(client.call("m", "block", session="other"))
        await busy.wait()  # worker 0 is busy now; worker 1 is idle
        strict = asyncio.create_task(session.call("m", "where", affinity="strict"))
        await _first_arrival(workers[0].wait_received(3), workers[1].wait_received(1))
        assert workers[0].frames_received == 3  # queued behind the blocker, on worker 0
        assert workers[1].frames_received == 0
        release.set()
        assert await blocker == "default.0.1"
        assert await strict == "default.0.1"
        # Without affinity the session's calls go to the least loaded worker.
        busy.clear()
        release.clear()
        blocker = asyncio.create_task(client.call("m", "block", session="other"))
        await busy.wait()
        assert await session.call("m", "where") == "default.1.1"
        release.set()
        assert await blocker == "default.0.1"


async def test_strict_affinity_after_its_worker_died_is_session_lost_once() -> None:
    async def script(call: FakeCall) -> Any:
        return _where(call)

    async with serve_in_memory(script, config=TWO_WORKERS) as (client, _, _, workers):
        session = client.session("s")
        assert await session.call("m", "where", affinity="strict") == "default.0.1"
        workers[0].exit()
        with pytest.raises(SessionLost, match=r"default\.0\.1 has restarted"):
            await session.call("m", "where", affinity="strict")
        # Said once: the session starts afresh on a live worker, and stays there.
        fresh = await session.call("m", "where", affinity="strict")
        assert fresh != "default.0.1"
        assert await session.call("m", "where", affinity="strict") == fresh
        assert workers[0].calls[0].name == "where" and len(workers[0].calls) == 1


# -- crashes: the idempotent retry and re-routing -----------------------------------------


def _crash_first_call() -> Any:
    ran: list[str] = []

    async def script(call: FakeCall) -> Any:
        ran.append(_where(call))
        if len(ran) == 1:
            raise Crash()
        return ran

    return script


async def test_an_idempotent_call_is_retried_once_on_another_worker_after_a_crash() -> None:
    async with serve_in_memory(_crash_first_call(), config=TWO_WORKERS) as (client, *_):
        ran = await client.call("m", "f", idempotent=True)
        assert len(ran) == 2 and ran[0] == "default.0.1" and ran[1] != ran[0]


async def test_a_call_not_marked_idempotent_is_not_retried_after_a_crash() -> None:
    script = _crash_first_call()
    async with serve_in_memory(script, config=TWO_WORKERS) as (client, _, _, workers):
        with pytest.raises(WorkerCrashed, match="exited with code -9"):
            await client.call("m", "f")
        assert sum(len(w.calls) for w in workers) == 1  # it ran once, where it crashed


async def test_calls_queued_behind_a_crash_never_started_and_are_routed_again() -> None:
    started, crash = asyncio.Event(), asyncio.Event()

    async def script(call: FakeCall) -> Any:
        if call.name == "crash":
            started.set()
            await crash.wait()
            raise Crash()
        return _where(call)

    async with serve_in_memory(script) as (client, bridge, _, workers):
        crashing = asyncio.create_task(client.call("m", "crash"))
        await started.wait()
        queued = [asyncio.create_task(client.call("m", f"q{i}")) for i in range(2)]
        await workers[0].wait_received(3)  # both wait behind the running call
        crash.set()
        with pytest.raises(WorkerCrashed):
            await crashing
        # The queued calls ran, once each, on the replacement: no error reached the client.
        assert await asyncio.gather(*queued) == ["default.0.2", "default.0.2"]
        assert [c.name for c in workers[0].calls] == ["crash"]
        assert sorted(c.name for c in workers[1].calls) == ["q0", "q1"]
        assert bridge.pools["default"].restarts == {"crash": 1}


# -- the reply router, end to end ---------------------------------------------------------


async def test_a_reply_left_in_the_channel_at_exit_answers_its_call() -> None:
    started, finish = asyncio.Event(), asyncio.Event()

    async def script(call: FakeCall) -> Any:
        if call.name == "last":
            started.set()
            await finish.wait()
            call.exit_after_reply()  # the process exits before the server reads this reply
            return "finished"
        return _where(call)

    async with serve_in_memory(script) as (client, _, _, workers):
        last = asyncio.create_task(client.call("m", "last"))
        await started.wait()
        behind = asyncio.create_task(client.call("m", "behind"))
        await workers[0].wait_received(2)
        finish.set()
        # Its reply was read before the crash was reported: it finished, it is not re-run.
        assert await last == "finished"
        # The call after the last reply may have been running: it crashed, not re-routed.
        with pytest.raises(WorkerCrashed):
            await behind
        assert [c.name for c in workers[0].calls] == ["last"]
        assert all(c.name != "last" for w in workers[1:] for c in w.calls)


async def test_a_late_reply_after_a_cancel_frees_the_worker_without_killing_it() -> None:
    interrupted, answer = asyncio.Event(), asyncio.Event()

    async def script(call: FakeCall) -> Any:
        if call.name == "stubborn":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                interrupted.set()  # it ignores the interruption, and answers later
                await answer.wait()
                return "late"
        return _where(call)

    async with serve_in_memory(script) as (client, bridge, _, workers):
        (worker,) = workers
        with pytest.raises(CallTimeout):
            await client.call("m", "stubborn", timeout=0.2)
        await interrupted.wait()
        assert worker.in_flight == 1  # the worker still owes the reply: still load
        answer.set()
        # The late reply is in order: believed, not taken for a lie; the worker serves on.
        assert await client.call("m", "next") == "default.0.1"
        assert worker.alive and worker.in_flight == 0
        assert bridge.pools["default"].restarts == {} and len(workers) == 1
