"""Worker supervision against a real server: the crash-loop breaker, per-pool health, and
recycling workers by call count and by RSS."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

import snakebridge
from snakebridge import errors

from .conftest import ServerProcess, pid_alive

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


async def _health(srv: ServerProcess, service: str) -> int:
    host, port = srv.address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(service=service), timeout=5)
        assert reply is not None
        return int(reply.status)
    finally:
        channel.close()


async def _pool_info(client: snakebridge.Client) -> Any:
    return (await client.describe()).pools[0]


async def test_crash_loop_trips_the_pool_until_the_cooldown(make_server: Any) -> None:
    srv = make_server(
        "--workers", "1",
        "--crash-loop-max", "3",
        "--crash-loop-window", "30",
        "--crash-loop-cooldown", "2",
    )  # fmt: skip
    async with snakebridge.Client(srv.address) as client:
        assert await _health(srv, "snakebridge.pool.default") == SERVING
        # Three sessions: the breaker counts each session's crashes once (issue #12).
        for i in range(3):
            with pytest.raises(errors.WorkerCrashed):
                await client.call("remote_helpers", "die", timeout=10, session=f"crasher-{i}")
        tripped_at = time.monotonic()
        # Tripped: calls fail at once instead of waiting for a worker that keeps dying.
        with anyio.fail_after(1):
            with pytest.raises(errors.PoolUnavailable) as exc:
                await client.call("math", "sqrt", [16])
        message = str(exc.value)
        assert "'default'" in message and "3 worker deaths within 30s" in message
        assert "(last: default.0.3: worker process exited" in message
        assert "next restart attempt in" in message
        with pytest.raises(errors.PoolUnavailable):  # streams too
            async for _ in client.stream("remote_helpers", "numbers", [3]):
                pass
        assert await _health(srv, "snakebridge.pool.default") == NOT_SERVING
        assert await _health(srv, "") == SERVING  # the server itself is fine
        assert await _health(srv, "snakebridge.v1.Bridge") == SERVING
        info = await _pool_info(client)
        assert info.state == "tripped" and info.restarts["crash"] == 3
        srv.wait_for_log(r"pool default: crash loop: 3 worker deaths within 30s")

        # After the 2 s cooldown the pool starts a worker and serves again.
        with anyio.fail_after(10):
            while True:
                try:
                    assert await client.call("math", "sqrt", [16]) == 4.0
                    break
                except errors.PoolUnavailable:
                    await anyio.sleep(0.1)
        assert time.monotonic() - tripped_at > 1.5
        assert await _health(srv, "snakebridge.pool.default") == SERVING
        info = await _pool_info(client)
        assert info.state == "serving" and [w.state for w in info.workers] == ["ready"]
        srv.wait_for_log(r"pool default: serving again after a crash loop")
        # The history was cleared: one more crash is replaced, not a trip.
        with pytest.raises(errors.WorkerCrashed):
            await client.call("remote_helpers", "die", timeout=10)
        assert await client.call("math", "sqrt", [16], timeout=10) == 4.0
        assert (await _pool_info(client)).state == "serving"
    assert srv.stop() == 0


async def test_unknown_pool_health_is_not_found(make_server: Any) -> None:
    from grpclib.exceptions import GRPCError

    srv = make_server("--workers", "1", "--pool", "gpu")
    assert await _health(srv, "snakebridge.pool.gpu") == SERVING
    with pytest.raises(GRPCError):
        await _health(srv, "snakebridge.pool.default")


async def test_recycling_by_calls_under_load(make_server: Any) -> None:
    srv = make_server("--workers", "2", "--recycle-calls", "50", "--recycle-jitter", "0")
    pids: list[int] = []
    async with snakebridge.Client(srv.address) as client:

        async def caller() -> None:
            # At least 400 calls, and on until a replacement answered some: batched calls
            # can finish 400 before the first replacement is ready (the pool's last live
            # worker is not recycled until another is), so a fixed count proves nothing.
            while len(pids) < 400 or len(set(pids)) <= 2:
                pids.append(await client.call("remote_helpers", "pid", timeout=10))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(caller)
        assert len(pids) >= 400
        assert len(set(pids)) > 2
        info = await _pool_info(client)
        assert info.restarts["recycle_calls"] >= 1
        assert "crash" not in info.restarts and "killed" not in info.restarts
    srv.wait_for_log(r"recycling worker default\.\d\.\d+ \(pid \d+\): recycle_calls")
    # Retired workers exit through close(), never through the crash path.
    assert " lost: " not in srv.log
    assert srv.stop() == 0
    assert not any(pid_alive(p) for p in set(pids))


async def test_refs_of_a_recycled_worker_are_session_lost(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--recycle-calls", "5", "--recycle-jitter", "0")
    async with snakebridge.Client(srv.address) as client:
        async with client.session() as session:
            thing = await session.call_class("remote_helpers", "Thing", ["old"])  # call 1
            first = await session.call("remote_helpers", "pid")
            for _ in range(3):  # calls 3..5: the worker reaches its limit
                assert await session.call("remote_helpers", "pid") == first
            with pytest.raises(errors.SessionLost, match=r"was recycled \(recycle_calls\)"):
                await session.get_attr(thing, "name")
            assert await session.call("remote_helpers", "pid") != first
            fresh = await session.call_class("remote_helpers", "Thing", ["new"])
            assert await session.get_attr(fresh, "name") == "new"
        info = await _pool_info(client)
        assert info.restarts["recycle_calls"] == 1
        assert [w.incarnation for w in info.workers] == [2]
    assert srv.stop() == 0


async def test_a_call_in_flight_on_a_recycled_worker_completes(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--recycle-calls", "3", "--recycle-jitter", "0")
    async with snakebridge.Client(srv.address) as client:
        old = await client.call("remote_helpers", "pid")
        assert await client.call("remote_helpers", "pid") == old
        results: dict[str, int] = {}

        async def run(name: str, seconds: float) -> None:
            results[name] = await client.call("remote_helpers", "sleep_then_pid", [seconds])

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "third", 0.3)  # the worker's last call
            await anyio.sleep(0.1)
            tg.start_soon(run, "slow", 1.5)  # queued behind it: in flight when it retires
            await anyio.sleep(0.4)
            workers = (await _pool_info(client)).workers
            retiring = [w for w in workers if w.state == "retiring"]
            assert [(w.pid, w.in_flight) for w in retiring] == [(old, 1)]
            new = await client.call("remote_helpers", "pid")  # served by the new worker
            assert new != old
            assert "slow" not in results
        assert results == {"third": old, "slow": old}
        with anyio.fail_after(5):
            while pid_alive(old):  # noqa: ASYNC110  (closed once its call was done)
                await anyio.sleep(0.05)
        workers = (await _pool_info(client)).workers
        assert [(w.pid, w.state) for w in workers] == [(new, "ready")]
    srv.wait_for_log(r"recycling worker default\.0\.1 \(pid \d+\): recycle_calls \(3 calls")
    assert " lost: " not in srv.log
    assert srv.stop() == 0


async def test_a_stream_open_on_a_recycled_worker_goes_on(make_server: Any) -> None:
    # Each pull of a stream counts as a call, and the supervisor checks every second.
    srv = make_server("--workers", "1", "--recycle-calls", "3", "--recycle-jitter", "0")
    async with snakebridge.Client(srv.address) as client:
        seen: list[tuple[int, int]] = []
        async with client.stream("remote_helpers", "ticks", [0.05], timeout=10) as items:
            async for pid, i in items:
                seen.append((pid, i))
                if i == 30:
                    states = [w.state for w in (await _pool_info(client)).workers]
                    break
        assert "retiring" in states  # the supervisor retired it mid-stream
        assert [i for _, i in seen] == list(range(31))
        assert len({pid for pid, _ in seen}) == 1  # one worker, retiring or not
        with anyio.fail_after(5):
            while await client.call("remote_helpers", "pid") == seen[0][0]:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert (await _pool_info(client)).restarts["recycle_calls"] >= 1
    assert srv.stop() == 0


async def test_recycling_by_rss(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--recycle-rss", "150000000", "--recycle-jitter", "0")
    async with snakebridge.Client(srv.address) as client:
        big = await client.call("remote_helpers", "hold_memory", [200 * 1024 * 1024])
        with anyio.fail_after(5):
            while await client.call("remote_helpers", "pid") == big:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        info = await _pool_info(client)
        assert info.restarts == {"recycle_rss": 1}
        assert [w.incarnation for w in info.workers] == [2]
    srv.wait_for_log(r"recycle_rss \(RSS \d+ bytes, limit 150000000\)")
    assert srv.stop() == 0
