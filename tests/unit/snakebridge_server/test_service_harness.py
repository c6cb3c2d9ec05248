"""The service and the bridge served in memory (``snakebridge_server.testing``) to a real
``snakebridge.Client``, with fake workers: request validation and policy, how errors reach
the client, and the drain. No process, no port."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from snakebridge.errors import (
    BadRequest,
    CallCancelled,
    CallTimeout,
    ClientClosed,
    PolicyError,
    PoolUnavailable,
    RemoteError,
    WorkerCrashed,
)
from snakebridge.wire.constants import KIND_FUNCTION
from snakebridge_server.metrics import Metrics
from snakebridge_server.testing import Crash, FakeCall, serve_in_memory

pytestmark = pytest.mark.anyio


class OddError(Exception):
    """An exception class no client has heard of."""


async def _echo(call: FakeCall) -> Any:
    return {"module": call.module, "name": call.name, "args": call.args, "kwargs": call.kwargs}


async def test_a_call_reaches_a_fake_worker_and_its_result_the_client() -> None:
    async with serve_in_memory(_echo) as (client, bridge, _, workers):
        result = await client.call("math", "hypot", [3, 4], {"z": 1}, session="s1")
        assert result == {"module": "math", "name": "hypot", "args": [3, 4], "kwargs": {"z": 1}}
        (worker,) = workers
        assert [(c.session_id, c.worker) for c in worker.calls] == [("s1", worker)]
        assert client.server_version is not None  # connect() went through Describe
        assert bridge.sessions.get("s1") is not None


async def test_a_closed_client_refuses_rpcs_and_leaves_the_channel_to_the_harness() -> None:
    async with serve_in_memory(_echo) as (client, _, _, _):
        await client.close()
        with pytest.raises(ClientClosed):
            await client.call("m", "f")
    # Leaving closed the in-memory channel: grpclib's ChannelFor fails on one closed under it.


# -- validation and policy ----------------------------------------------------------------


async def test_malformed_requests_are_refused_before_any_worker_runs() -> None:
    from snakebridge._client import Invocation

    async with serve_in_memory(_echo) as (client, _, _, workers):
        bad_kind = Invocation(kind=99, module="m", name="f", session_id="s", args=[], kwargs=None)
        with pytest.raises(BadRequest, match="unknown call kind 99"):
            await client._invoke(bad_kind)
        with pytest.raises(BadRequest, match="limited to 1024 characters"):
            await client.call("m" * 1025, "f")
        with pytest.raises(BadRequest, match="limited to 256 characters"):
            await client.call("m", "f", session="s" * 257)
        no_module = Invocation(
            kind=KIND_FUNCTION, module="", name="f", session_id="s", args=[], kwargs=None
        )
        with pytest.raises(BadRequest, match="needs a module, or a dotted name"):
            await client._invoke(no_module)
        assert workers[0].calls == []
        assert await client.call("m", "f") == {"module": "m", "name": "f", "args": [], "kwargs": {}}


async def test_a_dunder_name_is_refused_by_the_sandbox_policy() -> None:
    async with serve_in_memory(_echo) as (client, _, _, workers):
        with pytest.raises(PolicyError):
            await client.call("os", "__dict__")
        with pytest.raises(PolicyError):
            await client.call_dynamic("builtins.__import__", ["os"])
        assert workers[0].calls == []


# -- errors -------------------------------------------------------------------------------


async def test_a_remote_exception_reaches_the_client_with_its_type() -> None:
    async def script(call: FakeCall) -> Any:
        if call.name == "div":
            return 1 / 0
        raise OddError("odd")

    async with serve_in_memory(script) as (client, _, _, _):
        with pytest.raises(ZeroDivisionError) as zde:
            await client.call("m", "div")
        assert isinstance(zde.value, RemoteError)
        assert zde.value.type_name == "builtins.ZeroDivisionError"
        with pytest.raises(RemoteError) as odd:
            await client.call("m", "odd")
        assert type(odd.value) is RemoteError
        assert odd.value.type_name == f"{__name__}.OddError" and odd.value.message == "odd"


async def test_a_crash_during_a_call_is_worker_crashed_and_the_worker_is_replaced() -> None:
    async def script(call: FakeCall) -> Any:
        if call.name == "crash":
            raise Crash(-11)
        return call.worker.key.incarnation

    async with serve_in_memory(script) as (client, bridge, _, workers):
        with pytest.raises(WorkerCrashed, match="exited with code -11"):
            await client.call("m", "crash")
        assert await client.call("m", "where") == 2  # waited for the replacement
        assert [w.key.incarnation for w in workers] == [1, 2]
        assert bridge.pools["default"].restarts == {"crash": 1}


async def test_a_call_hanging_past_its_deadline_is_a_timeout_and_is_interrupted() -> None:
    interrupted = asyncio.Event()

    async def script(call: FakeCall) -> Any:
        if call.name == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                interrupted.set()
                raise
        return "next"

    async with serve_in_memory(script) as (client, bridge, _, workers):
        with pytest.raises(CallTimeout):
            await client.call("m", "hang", timeout=0.2)
        await interrupted.wait()  # the worker was told to stop the call, and did
        assert await client.call("m", "after") == "next"
        (worker,) = workers  # not killed: it answered the cancellation
        assert worker.alive and worker.in_flight == 0
        assert bridge.pools["default"].restarts == {}


# -- drain --------------------------------------------------------------------------------


def _blocking_script() -> tuple[asyncio.Event, asyncio.Event, Any]:
    started, release = asyncio.Event(), asyncio.Event()

    async def script(call: FakeCall) -> Any:
        if call.name == "slow":
            started.set()
            await release.wait()
        return call.name

    return started, release, script


async def test_drain_waits_for_running_calls_and_refuses_new_ones() -> None:
    started, release, script = _blocking_script()
    async with serve_in_memory(script) as (client, _, service, _):
        running = asyncio.create_task(client.call("m", "slow"))
        await started.wait()
        drain = asyncio.create_task(service.drain(30.0))
        await asyncio.sleep(0)  # one step: the drain task has begun (it flags at once)
        assert service.draining
        with pytest.raises(PoolUnavailable, match="shutting down"):
            await client.call("m", "fast", timeout=10.0)  # if served: behind "slow"
        assert not drain.done()  # still waiting for the running call
        release.set()
        assert await running == "slow"
        assert await drain == 0  # nothing had to be cancelled


async def test_drain_past_its_grace_cancels_the_stragglers_which_answer_cancelled() -> None:
    started, _, script = _blocking_script()
    async with serve_in_memory(script) as (client, _, service, _):
        running = asyncio.create_task(client.call("m", "slow"))
        await started.wait()
        assert await service.drain(0.05) == 1
        with pytest.raises(CallCancelled, match="shut down before the call finished"):
            await running


# -- what the bridge reports ---------------------------------------------------------------


async def test_describe_and_the_metrics_show_the_same_snapshot_of_the_bridge() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(call: FakeCall) -> Any:
        started.set()
        await release.wait()
        return 1

    async with serve_in_memory(slow) as (client, bridge, service, workers):
        task = asyncio.create_task(client.call("m", "f", session="s1"))
        await started.wait()
        reply = await client.describe()
        (pool,) = reply.pools
        (worker,) = pool.workers
        assert (pool.name, pool.size, pool.in_flight, pool.state) == ("default", 1, 1, "serving")
        assert (worker.pid, worker.in_flight, worker.state) == (workers[0].pid, 1, "ready")
        assert worker.worker_id == str(workers[0].key)
        assert reply.sessions == 1
        text = Metrics().render(service.gauges())
        assert 'snakebridge_in_flight{pool="default"} 1' in text
        assert "snakebridge_sessions_live 1" in text
        release.set()
        assert await task == 1
        assert bridge.snapshot().pools[0].workers[0].calls_done == 1
