"""Micro-batched calls over the ``Exchange`` stream (``Client(batching=True)``, issue #14):
every per-call behaviour of the unary ``Call`` holds for each call of a batch."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import errors

from .conftest import ServerProcess
from .test_auth import token_file

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def _busy_worker_pids(client: snakebridge.Client) -> set[int]:
    with anyio.fail_after(5):
        while True:
            info = await client.describe()
            busy = {w.pid for w in info.pools[0].workers if w.in_flight}
            if busy:
                return busy
            await anyio.sleep(0.02)


async def _until_idle(client: snakebridge.Client) -> None:
    """Every worker ready with nothing in flight (cancelled calls were answered)."""
    with anyio.fail_after(10):
        while True:
            workers = (await client.describe()).pools[0].workers
            if all(w.state == "ready" and not w.in_flight for w in workers):
                return
            await anyio.sleep(0.05)


async def test_many_batched_calls_each_get_their_own_result(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address, batching=True) as client:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await client.call("remote_helpers", "add", [i, 1000])

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, i)
        assert results == {i: i + 1000 for i in range(500)}
        assert await client.call("math", "sqrt", [16]) == 4.0  # and a lone one after


async def test_1000_mixed_calls_with_errors_timeouts_cancellations_and_a_worker_kill(
    make_server: Any,
) -> None:
    """Each call gets its own right answer or error, and nothing hangs."""
    srv = make_server("--workers", "2", "--helpers", "remote_helpers", "--cancel-grace", "2")
    async with snakebridge.Client(srv.address, batching=True) as client:
        outcome: dict[int, Any] = {}

        async def run(i: int, coro: Any) -> None:
            try:
                outcome[i] = await coro
            except errors.BridgeError as exc:
                outcome[i] = exc

        async with anyio.create_task_group() as outer:
            # The victim: a long call whose worker is killed in the middle of the batch.
            outer.start_soon(run, -1, client.call("remote_helpers", "sleep", [60]))
            (victim_pid,) = await _busy_worker_pids(client)
            cancelled: list[anyio.CancelScope] = []

            async def cancellable(i: int) -> None:
                with anyio.CancelScope() as scope:
                    cancelled.append(scope)
                    await run(i, client.call("remote_helpers", "sleep", [30]))
                    return
                outcome[i] = "cancelled"

            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for i in range(1000):
                        kind = i % 50
                        if kind == 7:
                            tg.start_soon(
                                run, i, client.call("remote_helpers", "sleep", [30], timeout=0.5)
                            )
                        elif kind == 13:
                            tg.start_soon(cancellable, i)
                        elif kind % 5 == 1:
                            tg.start_soon(run, i, client.call("math", "sqrt", [-i]))
                        elif kind % 5 == 2:
                            tg.start_soon(run, i, client.call("no_such_module_xyz", "f"))
                        else:
                            tg.start_soon(run, i, client.call("remote_helpers", "add", [i, 1]))
                        if i == 500:
                            await anyio.sleep(0.05)
                            os.kill(victim_pid, signal.SIGKILL)
                    await anyio.sleep(0.3)
                    for scope in cancelled:
                        scope.cancel()

        assert isinstance(outcome.pop(-1), errors.WorkerCrashed)
        assert len(outcome) == 1000
        for i, got in outcome.items():
            _check_mixed_outcome(i, got)
        await _until_idle(client)
        assert await client.call("math", "sqrt", [81]) == 9.0
    assert srv.stop() == 0


def _check_mixed_outcome(i: int, got: Any) -> None:
    kind = i % 50
    if kind == 7:
        assert isinstance(got, errors.CallTimeout), (i, got)
    elif kind == 13:
        assert got == "cancelled", (i, got)
    elif kind % 5 == 1:
        assert isinstance(got, errors.RemoteError) and isinstance(got, ValueError), (i, got)
        assert "math domain error" in str(got)
    elif kind % 5 == 2:
        assert isinstance(got, errors.RemoteError), (i, got)
        assert "no_such_module_xyz" in str(got)
    else:
        # Calls queued behind the victim never ran: they were routed again.
        assert got == i + 1, (i, got)


async def test_cancelling_one_batched_call_interrupts_it_alone(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address, batching=True) as client:
        results: list[Any] = []

        async def mate() -> None:
            results.append(await client.call("remote_helpers", "sleep", [0.3]))

        with anyio.CancelScope() as doomed_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(mate)
                tg.start_soon(mate)

                async def doomed() -> None:
                    with anyio.CancelScope() as scope:
                        tg.start_soon(_cancel_later, scope)
                        await client.call("remote_helpers", "sleep", [30])
                    results.append("cancelled")

                tg.start_soon(doomed)
        assert not doomed_scope.cancel_called
        assert sorted(map(str, results)) == ["0.3", "0.3", "cancelled"]
        await _until_idle(client)  # the 30 s sleep was interrupted in its worker


async def _cancel_later(scope: anyio.CancelScope) -> None:
    await anyio.sleep(0.1)
    scope.cancel()


async def test_batched_errors_carry_their_class_and_their_own_correlation_ids(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address, batching=True) as client:
        with snakebridge.correlation_id("batch-cid-1"):
            with pytest.raises(errors.RemoteError) as caught:
                await client.call("math", "sqrt", [-1])
        assert caught.value.correlation_id == "batch-cid-1"
        assert isinstance(caught.value, ValueError)
        made: list[str] = []
        for _ in range(2):
            with pytest.raises(errors.RemoteError) as caught:
                await client.call("math", "sqrt", [-1])
            made.append(caught.value.correlation_id)
        assert made[0] != made[1] and all(c.startswith("sb-") for c in made)
        with pytest.raises(errors.BadRequest, match="relative"):
            await client.call(".relative", "f")
        ref = await client.call_class("collections", "Counter", ["aab"])
        assert await client.call_method(ref, "most_common", [1]) == [("a", 2)]


async def test_batched_calls_need_the_token(make_server: Any, tmp_path: Path) -> None:
    srv = make_server("--workers", "1", "--token-file", str(token_file(tmp_path)))
    client = snakebridge.Client(srv.address, batching=True)
    try:
        with pytest.raises(errors.Unauthenticated):
            await client.call("math", "sqrt", [4])
    finally:
        await client.close()
    async with snakebridge.Client(srv.address, token="s3cret-token", batching=True) as client:
        assert await client.call("math", "sqrt", [4]) == 2.0


async def test_oversized_batched_call_is_limit_exceeded_and_the_stream_goes_on(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--max-message-size", "1048576")
    async with snakebridge.Client(srv.address, batching=True) as client:
        with pytest.raises(errors.LimitExceeded, match="arguments are"):
            await client.call("builtins", "len", [b"x" * (2 << 20)])
        assert await client.call("builtins", "len", [b"x" * 1000]) == 1000
    assert srv.stop() == 0


async def test_drain_finishes_running_batched_calls_and_refuses_new_ones(make_server: Any) -> None:
    srv = make_server("--workers", "2", "--helpers", "remote_helpers", "--drain-grace", "10")
    async with snakebridge.Client(srv.address, batching=True) as client:
        results: list[Any] = []

        async def long_call() -> None:
            results.append(await client.call("remote_helpers", "sleep", [1.5]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_call)
            await _busy_worker_pids(client)
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait_for_log("draining")
            with pytest.raises(errors.PoolUnavailable, match="shutting down"):
                await client.call("math", "sqrt", [4])
        assert results == [1.5]
    assert srv.stop() == 0


async def test_server_killed_under_batched_calls_is_connection_failed(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--helpers", "remote_helpers")
    async with snakebridge.Client(srv.address, batching=True) as client:
        outcome: list[BaseException] = []

        async def waiting() -> None:
            try:
                await client.call("remote_helpers", "sleep", [30])
            except errors.BridgeError as exc:
                outcome.append(exc)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(waiting)
                await _busy_worker_pids(client)
                assert srv.proc is not None
                os.kill(srv.proc.pid, signal.SIGKILL)
        assert len(outcome) == 3
        assert all(isinstance(e, errors.ConnectionFailed) for e in outcome), outcome
    srv.stop()


async def test_results_come_back_as_each_call_finishes(server: ServerProcess) -> None:
    """No head-of-line blocking: a quick call sent after a slow one on the same stream
    returns while the slow one still runs."""
    async with snakebridge.Client(server.address, batching=True) as client:
        order: list[str] = []

        async def slow() -> None:
            await client.call("remote_helpers", "sleep", [1.0])
            order.append("slow")

        async def quick() -> None:
            await client.call("remote_helpers", "add", [1, 2])
            order.append("quick")

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            tg.start_soon(quick)
        assert order == ["quick", "slow"]


async def _raw_exchange(address: str, *messages: Any) -> tuple[list[Any], Any]:
    """Send ``messages`` on a raw Exchange stream; (the replies, the error it ended with)."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality
    from grpclib.exceptions import GRPCError

    from snakebridge.wire.messages import ExchangeReplyWire, ExchangeRequestWire

    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    replies: list[Any] = []
    try:
        stream = channel.request(
            "/snakebridge.v1.Bridge/Exchange",
            Cardinality.STREAM_STREAM,
            ExchangeRequestWire,
            ExchangeReplyWire,
        )
        async with stream:
            await stream.send_request()
            for message in messages:
                await stream.send_message(message)
            await stream.end()
            try:
                while (reply := await stream.recv_message()) is not None:
                    replies.append(reply)
                await stream.recv_trailing_metadata()
            except GRPCError as exc:
                return replies, exc
        return replies, None
    finally:
        channel.close()


async def test_a_reused_call_id_or_a_wrong_protocol_ends_the_exchange(
    server: ServerProcess,
) -> None:
    from grpclib.const import Status

    from snakebridge.wire.messages import CallRequestWire, ExchangeCallWire, ExchangeRequestWire

    def call(call_id: int) -> ExchangeCallWire:
        req = CallRequestWire(
            protocol_version=1, kind=1, module="time", name="sleep", args=b"\x92\x91\x01\x80"
        )
        return ExchangeCallWire(id=call_id, call=req)

    with anyio.fail_after(20):
        _, error = await _raw_exchange(
            server.address, ExchangeRequestWire(protocol_version=1, calls=[call(7), call(7)])
        )
        assert error is not None and error.status == Status.INVALID_ARGUMENT
        assert "already in flight" in error.message
        _, error = await _raw_exchange(server.address, ExchangeRequestWire(calls=[call(1)]))
        assert error is not None and error.status == Status.FAILED_PRECONDITION
        # A well-behaved stream: answered, then OK once the client half-closed.
        quick = CallRequestWire(
            protocol_version=1, kind=1, module="math", name="sqrt", args=b"\x92\x91\x10\x80"
        )
        replies, error = await _raw_exchange(
            server.address,
            ExchangeRequestWire(protocol_version=1, calls=[ExchangeCallWire(id=3, call=quick)]),
        )
        assert error is None
        assert [(r.id, r.result) for reply in replies for r in reply.results] == [
            (3, b"\xcb@\x10\x00\x00\x00\x00\x00\x00")
        ]


def _sqrt_call(call_id: int, function: str = "sqrt") -> Any:
    """``math.sqrt(16)``, or with ``function="sleep"`` ``time.sleep(16)``."""
    from snakebridge.wire.messages import CallRequestWire, ExchangeCallWire

    module = "math" if function == "sqrt" else "time"
    req = CallRequestWire(
        protocol_version=1, kind=1, module=module, name=function, args=b"\x92\x91\x10\x80"
    )
    return ExchangeCallWire(id=call_id, call=req)


async def test_more_calls_in_one_message_than_allowed_end_the_exchange(
    server: ServerProcess,
) -> None:
    from grpclib.const import Status

    from snakebridge.wire.messages import ExchangeRequestWire

    calls = [_sqrt_call(i) for i in range(1, 4098)]
    with anyio.fail_after(30):
        _, error = await _raw_exchange(
            server.address, ExchangeRequestWire(protocol_version=1, calls=calls)
        )
    assert error is not None and error.status == Status.INVALID_ARGUMENT
    assert "at most 4096 calls" in error.message


async def test_a_client_that_never_reads_its_results_is_stopped_by_flow_control(
    make_server: Any,
) -> None:
    """The attack: keep sending calls without ever reading a result. The server stops
    reading once 16,384 calls are running or answered-but-unsent, so the client's sends
    block (HTTP/2 flow control) instead of the server taking calls without end. (Slow
    calls, so that they stay running: quick ones would be answered until the client's
    receive window is full, which bounds them too, only later.)"""
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    from snakebridge.wire.messages import ExchangeReplyWire, ExchangeRequestWire

    srv = make_server("--workers", "1", "--max-queued", "100000", "--cancel-grace", "30")
    host, port = srv.address.rsplit(":", 1)
    channel = Channel(host, int(port))
    sent = 0
    blocked = False
    try:
        stream = channel.request(
            "/snakebridge.v1.Bridge/Exchange",
            Cardinality.STREAM_STREAM,
            ExchangeRequestWire,
            ExchangeReplyWire,
        )
        async with stream:
            await stream.send_request()
            next_id = 1
            while sent < 200 * 4096:  # far past what the windows can hold
                calls = [_sqrt_call(i, "sleep") for i in range(next_id, next_id + 4096)]
                next_id += 4096
                with anyio.move_on_after(10) as scope:
                    await stream.send_message(ExchangeRequestWire(protocol_version=1, calls=calls))
                if scope.cancelled_caught:
                    blocked = True
                    break
                sent += len(calls)
            await stream.cancel()
    finally:
        channel.close()
    assert blocked, f"the server read {sent} calls without the client reading a result"
    # Bounded: the 16,384 in the server plus what the HTTP/2 windows hold.
    assert sent < 200_000
    srv.stop()
