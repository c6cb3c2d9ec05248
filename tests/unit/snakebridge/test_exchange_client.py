"""The SDK's Exchange stream (``Client(batching=True)``) over a scripted grpclib stream:
results matched by id whatever their order, a transport failure at any step is
``ConnectionFailed`` (with the address, the method, the cause and each call's correlation
id) for every call waiting on the stream, and the next call opens a new stream."""

from __future__ import annotations

import asyncio
import errno
from types import TracebackType
from typing import Any

import pytest
from grpclib.exceptions import StreamTerminatedError

import snakebridge
from snakebridge import errors
from snakebridge.wire import codec
from snakebridge.wire.messages import ExchangeReplyWire, ExchangeRequestWire, ExchangeResultWire

pytestmark = pytest.mark.anyio

ADDRESS = "127.0.0.1:1"


class ScriptedBidi:
    """Enough of a bidirectional ``grpclib.client.Stream``: answers each call with the
    square root of its argument, the latest call first; raises ``exc`` at ``fail_at``."""

    trailing_metadata: Any = None

    def __init__(self, exc: BaseException | None, fail_at: str) -> None:
        self.exc = exc
        self.fail_at = fail_at
        self.replies: asyncio.Queue[ExchangeReplyWire] = asyncio.Queue()
        self.requests: list[ExchangeRequestWire] = []

    def _step(self, name: str) -> None:
        if self.fail_at == name and self.exc is not None:
            raise self.exc

    async def __aenter__(self) -> ScriptedBidi:
        self._step("open")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    async def send_request(self) -> None:
        self._step("send_request")

    async def send_message(self, message: ExchangeRequestWire) -> None:
        self._step("send")
        self.requests.append(message)
        results = []
        for call in reversed(message.calls):
            (x,), _ = codec.decode(call.call.args)
            results.append(ExchangeResultWire(id=call.id, result=codec.encode(x**0.5)))
        await self.replies.put(ExchangeReplyWire(results=results))

    async def end(self) -> None:
        pass

    async def recv_message(self) -> ExchangeReplyWire | None:
        self._step("recv")
        return await self.replies.get()

    async def recv_trailing_metadata(self) -> None:
        pass


class ScriptedChannel:
    def __init__(self, exc: BaseException | None = None, fail_at: str = "") -> None:
        self.exc = exc
        self.fail_at = fail_at
        self.streams: list[ScriptedBidi] = []

    def request(self, *args: Any, **kwargs: Any) -> ScriptedBidi:
        if self.fail_at == "request" and self.exc is not None:
            raise self.exc
        stream = ScriptedBidi(self.exc, self.fail_at)
        self.streams.append(stream)
        return stream

    def close(self) -> None:
        pass


def client_over(channel: Any) -> snakebridge.Client:
    client = snakebridge.Client(ADDRESS, batching=True)
    client._transport._channel = channel
    return client


async def test_calls_ready_together_leave_in_one_message_and_each_gets_its_own_result() -> None:
    channel = ScriptedChannel()
    client = client_over(channel)
    results = await asyncio.gather(*(client.call("math", "sqrt", [n * n]) for n in range(50)))
    assert results == [float(n) for n in range(50)]
    (stream,) = channel.streams
    assert len(stream.requests) == 1 and len(stream.requests[0].calls) == 50
    assert await client.call("math", "sqrt", [9.0]) == 3.0  # a lone call after: no timer
    assert [len(r.calls) for r in stream.requests] == [50, 1]


TRANSPORT_FAILURES = [
    pytest.param(StreamTerminatedError("Connection lost"), id="stream-terminated"),
    pytest.param(ConnectionResetError(errno.ECONNRESET, "reset"), id="connection-reset"),
    pytest.param(BrokenPipeError(errno.EPIPE, "broken pipe"), id="broken-pipe"),
]


@pytest.mark.parametrize("step", ["request", "open", "send_request", "send", "recv"])
@pytest.mark.parametrize("exc", TRANSPORT_FAILURES)
async def test_a_transport_failure_fails_every_waiting_call_with_connection_failed(
    exc: BaseException, step: str
) -> None:
    client = client_over(ScriptedChannel(exc, step))

    async def one(n: int) -> BaseException:
        with snakebridge.correlation_id(f"cid-{n}"):
            with pytest.raises(errors.ConnectionFailed) as info:
                await client.call("math", "sqrt", [4])
        return info.value

    failures = await asyncio.gather(*(one(n) for n in range(3)))
    for n, failure in enumerate(failures):
        assert failure.__cause__ is exc
        assert ADDRESS in str(failure) and "Exchange" in str(failure)
        assert failure.correlation_id == f"cid-{n}"  # type: ignore[attr-defined]
    assert len({id(f) for f in failures}) == 3  # one exception object per caller


async def test_the_next_call_after_a_failed_stream_opens_a_new_one() -> None:
    channel = ScriptedChannel(StreamTerminatedError("Connection lost"), "recv")
    client = client_over(channel)
    with pytest.raises(errors.ConnectionFailed):
        await client.call("math", "sqrt", [4])
    channel.exc = None
    channel.fail_at = ""
    assert await client.call("math", "sqrt", [4]) == 2.0
    assert len(channel.streams) == 2


async def test_a_closed_batching_client_raises_client_closed() -> None:
    client = client_over(ScriptedChannel())
    assert await client.call("math", "sqrt", [4]) == 2.0
    client.clear_auto_session()  # the scripted channel has no unary ReleaseSession
    await client.close()
    with pytest.raises(errors.ClientClosed):
        await client.call("math", "sqrt", [4])
