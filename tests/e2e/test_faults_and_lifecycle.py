"""Worker crashes, cancellation, session expiry, and the server's own lifecycle."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import errors

from .conftest import ServerProcess, pid_alive, worker_pids_of

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def _busy_worker_pid(client: snakebridge.Client) -> int:
    """The pid of the worker currently running a call."""
    with anyio.fail_after(5):
        while True:
            info = await client.describe()
            busy = [w.pid for w in info.pools[0].workers if w.in_flight]
            if busy:
                return busy[0]
            await anyio.sleep(0.02)


async def test_sigkill_mid_call_is_worker_crashed_and_the_worker_is_replaced(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "2")
    async with snakebridge.Client(srv.address) as client:
        outcome: list[BaseException] = []

        async def victim() -> None:
            try:
                await client.call("remote_helpers", "sleep", [30])
            except errors.BridgeError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim)
            pid = await _busy_worker_pid(client)
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
        assert time.monotonic() - started < 1.0
        assert len(outcome) == 1 and isinstance(outcome[0], errors.WorkerCrashed)
        # the next call succeeds, and the pool is whole again with a new process
        assert await client.call("math", "sqrt", [16]) == 4.0
        with anyio.fail_after(10):
            while True:
                workers = (await client.describe()).pools[0].workers
                if all(w.state == "ready" for w in workers) and pid not in {w.pid for w in workers}:
                    break
                await anyio.sleep(0.05)
        assert sorted(w.incarnation for w in workers) == [1, 2]
    assert srv.stop() == 0


@pytest.mark.parametrize("how", ["call", "stream"])
async def test_server_killed_mid_call_is_connection_failed_and_the_client_closes_cleanly(
    make_server: Any, tmp_path: Path, how: str
) -> None:
    srv = make_server("--workers", "1")
    outcome: list[Exception] = []
    async with snakebridge.Client(srv.address) as client:
        client.current_session()  # leaving releases it: an RPC over the dead connection

        async def victim() -> None:
            try:
                if how == "call":
                    await client.call("remote_helpers", "sleep", [30])
                else:
                    async for _ in client.stream(
                        "remote_helpers", "slow", [str(tmp_path / "closed"), 0.05]
                    ):
                        pass
            except Exception as exc:  # whatever it is, the assert below names it
                outcome.append(exc)

        async def caller() -> None:
            # RPCs back to back until one fails: the kill meets them at every step
            # (opening a stream, sending, waiting for the reply, reconnecting).
            while True:
                try:
                    await client.describe()
                except Exception as exc:
                    outcome.append(exc)
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim)
            await _busy_worker_pid(client)
            for _ in range(4):
                tg.start_soon(caller)
            await anyio.sleep(0.05)
            os.kill(srv.pid, signal.SIGKILL)
    # Leaving `async with` raised nothing, and every RPC failed with the documented type.
    assert len(outcome) == 5, outcome
    assert all(isinstance(exc, errors.ConnectionFailed) for exc in outcome), outcome
    assert all(srv.address in str(exc) for exc in outcome)


async def test_refs_of_a_crashed_worker_answer_session_lost(make_server: Any) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        thing = await client.call_class("remote_helpers", "Thing", [])
        with pytest.raises(errors.WorkerCrashed):
            await client.call("remote_helpers", "die")
        with pytest.raises(errors.SessionLost):
            await client.get_attr(thing, "name")
        # never looked up in the fresh worker's table: the id names incarnation 1
        fresh = await client.call_class("remote_helpers", "Thing", ["fresh"])
        assert thing.id.split(".")[3] == "1" and fresh.id.split(".")[3] == "2"
        with pytest.raises(errors.SessionLost):
            await client.get_attr(thing, "name")
        assert await client.get_attr(fresh, "name") == "fresh"


async def test_idempotent_call_is_retried_once_after_a_crash(
    make_server: Any, tmp_path: Path
) -> None:
    srv = make_server("--workers", "2")
    marker = str(tmp_path / "crashed-once")
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(errors.WorkerCrashed):
            await client.call("remote_helpers", "crash_once", [marker])
        os.unlink(marker)
        assert await client.call("remote_helpers", "crash_once", [marker], idempotent=True) == "ok"


async def test_timed_out_call_is_interrupted_in_the_worker(make_server: Any) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call("remote_helpers", "pid")
        with pytest.raises(errors.CallTimeout):
            await client.call("remote_helpers", "sleep", [30], timeout=0.3)
        # The same process is free again within a second: the sleep was interrupted.
        with anyio.fail_after(1.0):
            assert await client.call("remote_helpers", "pid") == pid


async def test_call_that_ignores_interruption_is_killed_after_the_grace(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--cancel-grace", "0.5")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call("remote_helpers", "pid")
        with pytest.raises(errors.CallTimeout):
            await client.call("remote_helpers", "stubborn_sleep", [60], timeout=0.3)
        with anyio.fail_after(10):
            new_pid = await client.call("remote_helpers", "pid")
        assert new_pid != pid
        assert not pid_alive(pid)
    srv.wait_for_log("ignored cancellation")


async def test_idle_sessions_expire_after_the_ttl(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--session-ttl", "0.5")
    async with snakebridge.Client(srv.address) as client:
        thing = await client.call_class("remote_helpers", "Thing", [])
        assert (await client.describe()).sessions == 1
        await anyio.sleep(1.5)
        assert (await client.describe()).sessions == 0
        with pytest.raises(errors.RefNotFound):
            await client.get_attr(thing, "name")


async def test_unix_socket_listener_is_owner_only(make_server: Any, tmp_path: Path) -> None:
    path = tmp_path / "bridge.sock"
    srv = make_server("--workers", "1", "--uds", str(path))
    assert srv.address == f"unix://{path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with snakebridge.Client(srv.address) as client:
        assert await client.call("math", "sqrt", [25]) == 5.0
    srv.stop()
    assert not path.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_server_and_all_workers(sig: int) -> None:
    srv = ServerProcess("--workers", "2").start()
    workers = worker_pids_of(srv.pid)
    assert workers == srv.worker_pids and len(workers) == 2
    async with snakebridge.Client(srv.address) as client:
        assert await client.call("math", "sqrt", [4]) == 2.0
    assert srv.stop(sig) == 0  # stop() also fails if any worker outlived the server
    assert not any(pid_alive(p) for p in workers)
    srv.wait_for_log("bridge-server stopped")


async def test_workers_die_with_a_sigkilled_server() -> None:
    srv = ServerProcess("--workers", "2").start()
    workers = set(srv.worker_pids)
    os.kill(srv.pid, signal.SIGKILL)
    assert srv.proc is not None
    srv.proc.wait(10)
    with anyio.fail_after(5):
        # Another process's death has no event to wait on from here: poll it.
        while any(pid_alive(p) for p in workers):  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def test_environment_variables_configure_the_server() -> None:
    srv = ServerProcess(env={"SNAKEBRIDGE_WORKERS": "3", "SNAKEBRIDGE_POOL": "cpu"}).start()
    try:
        async with snakebridge.Client(srv.address) as client:
            (pool,) = (await client.describe()).pools
            assert (pool.name, pool.size) == ("cpu", 3)
            assert await client.call("math", "sqrt", [4], pool="cpu") == 2.0
    finally:
        srv.stop()


def test_invalid_configuration_fails_at_startup_naming_the_key() -> None:
    import subprocess

    from .conftest import BRIDGE_SERVER

    for args, needle in [
        (["--workers", "0"], "workers"),
        (["--listen", "0.0.0.0:50051"], "--insecure"),
        (["--workers", "two"], "--workers"),
        (["--listen", "nonsense"], "listen"),
    ]:
        done = subprocess.run(
            [BRIDGE_SERVER, *args], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 2, (args, done.stderr)
        assert needle in done.stderr, (args, done.stderr)


async def test_sigterm_drains_running_calls_and_refuses_new_ones(make_server: Any) -> None:
    srv = make_server("--workers", "2", "--drain-grace", "10")
    async with snakebridge.Client(srv.address) as client:
        results: list[Any] = []

        async def long_call() -> None:
            results.append(await client.call("remote_helpers", "sleep", [1.5]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            await _busy_worker_pid(client)
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait_for_log("draining")
            with pytest.raises(errors.PoolUnavailable, match="shutting down"):
                await client.call("math", "sqrt", [4])
        assert results == [1.5]  # finished, not cut off
    assert srv.stop() == 0


async def test_calls_still_running_after_the_drain_grace_get_a_status(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--drain-grace", "0.5")
    async with snakebridge.Client(srv.address) as client:
        outcome: list[BaseException] = []

        async def stuck() -> None:
            try:
                await client.call("remote_helpers", "sleep", [60])
            except errors.BridgeError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck)
            await _busy_worker_pid(client)
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGTERM)
        assert len(outcome) == 1 and isinstance(outcome[0], errors.CallCancelled), outcome
    assert srv.stop() == 0
    srv.wait_for_log(r"cancelled 1 call\(s\)")
