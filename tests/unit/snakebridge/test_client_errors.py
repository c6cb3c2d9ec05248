"""What the SDK raises when the transport under grpclib fails: always ``ConnectionFailed``
(with the address and the method), never a raw grpclib, h2 or socket exception, and never a
swallowed cancellation. Also the stream deadline held per item.

Two kinds of fakes: a scripted grpclib-like stream that raises a given exception at a given
step, and a real grpclib ``Channel`` over a socketpair whose connection is closed (GOAWAY
or reset) between connect and the first stream: grpclib 0.4.9's own race, made
deterministic.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.protocol import H2Protocol
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError

import snakebridge
from snakebridge import errors
from snakebridge.wire import codec

pytestmark = pytest.mark.anyio

ADDRESS = "127.0.0.1:1"


class _Batch:
    released_refs = 0  # also passes for a ReleaseSessionReply, which close() awaits

    def __init__(self, items: list[Any]) -> None:
        self.result = codec.encode(items)


class ScriptedStream:
    """Enough of ``grpclib.client.Stream`` for the SDK: raises ``exc`` at step ``fail_at``
    (``open``, ``send``, ``recv``, ``trailers`` or ``exit``), else replies with
    ``batches``."""

    trailing_metadata: Any = None

    def __init__(self, exc: BaseException | None, fail_at: str, batches: list[_Batch]) -> None:
        self.exc = exc
        self.fail_at = fail_at
        self.batches = list(batches)
        self.exit_exc: type[BaseException] | None = None
        self.exited = False

    def _step(self, name: str) -> None:
        if self.fail_at == name and self.exc is not None:
            raise self.exc

    async def __aenter__(self) -> ScriptedStream:
        self._step("open")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.exited = True
        self.exit_exc = et
        if et is None:
            self._step("exit")

    async def send_message(self, message: Any, *, end: bool = False) -> None:
        self._step("send")

    async def recv_message(self) -> Any:
        self._step("recv")
        await asyncio.sleep(0)
        return self.batches.pop(0) if self.batches else None

    async def recv_trailing_metadata(self) -> None:
        self._step("trailers")


class ScriptedChannel:
    def __init__(
        self,
        exc: BaseException | None = None,
        fail_at: str = "send",
        batches: list[_Batch] | None = None,
        close_exc: BaseException | None = None,
    ) -> None:
        self.exc = exc
        self.fail_at = fail_at
        self.batches = batches if batches is not None else [_Batch([{"x": 1}])]
        self.close_exc = close_exc
        self.streams: list[ScriptedStream] = []

    def request(self, *args: Any, **kwargs: Any) -> ScriptedStream:
        if self.fail_at == "request" and self.exc is not None:
            raise self.exc
        stream = ScriptedStream(self.exc, self.fail_at, self.batches)
        self.streams.append(stream)
        return stream

    def close(self) -> None:
        if self.close_exc is not None:
            raise self.close_exc


def client_over(channel: Any) -> snakebridge.Client:
    client = snakebridge.Client(ADDRESS)
    client._transport._channel = channel
    return client


TRANSPORT_FAILURES = [
    pytest.param(StreamTerminatedError("Connection lost"), id="stream-terminated"),
    pytest.param(ConnectionResetError(errno.ECONNRESET, "reset"), id="connection-reset"),
    pytest.param(BrokenPipeError(errno.EPIPE, "broken pipe"), id="broken-pipe"),
    pytest.param(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), id="refused"),
    pytest.param(TimeoutError(errno.ETIMEDOUT, "Connection timed out"), id="connect-timed-out"),
    pytest.param(socket.gaierror(-2, "Name or service not known"), id="dns"),
    pytest.param(ssl.SSLError(1, "[SSL] record layer failure"), id="tls"),
    pytest.param(asyncio.IncompleteReadError(b"ab", 5), id="incomplete-read"),
    pytest.param(StreamClosedError(1), id="h2-stream-closed"),
    pytest.param(H2ProtocolError("Invalid input in state CLOSED"), id="h2-protocol-error"),
]
STEPS = ["request", "open", "send", "recv", "trailers", "exit"]


async def _one_call(client: snakebridge.Client, how: str) -> Any:
    if how == "call":
        return await client.call("math", "sqrt", [4])
    return [x async for x in client.stream("builtins", "range", [1])]


@pytest.mark.parametrize("how", ["call", "stream"])
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("exc", TRANSPORT_FAILURES)
async def test_every_transport_failure_is_connection_failed(
    exc: BaseException, step: str, how: str
) -> None:
    client = client_over(ScriptedChannel(exc, step))
    with snakebridge.correlation_id("cid-1"):
        with pytest.raises(errors.ConnectionFailed) as info:
            await _one_call(client, how)
    assert info.value.__cause__ is exc
    assert ADDRESS in str(info.value)
    assert ("Call" if how == "call" else "Stream") in str(info.value)
    assert info.value.correlation_id == "cid-1"


@pytest.mark.parametrize("how", ["call", "stream"])
async def test_grpclib_deadline_is_call_timeout_not_connection_failed(how: str) -> None:
    client = client_over(ScriptedChannel(TimeoutError("Deadline exceeded"), "recv"))
    with pytest.raises(errors.CallTimeout):
        await _one_call(client, how)


@pytest.mark.parametrize("how", ["call", "stream"])
async def test_an_unavailable_status_without_a_trailer_is_connection_failed(how: str) -> None:
    client = client_over(ScriptedChannel(GRPCError(Status.UNAVAILABLE, "gone"), "recv"))
    with pytest.raises(errors.ConnectionFailed, match="UNAVAILABLE: gone"):
        await _one_call(client, how)


@pytest.mark.parametrize("how", ["call", "stream"])
async def test_a_grpclib_protocol_error_is_a_bridge_error(how: str) -> None:
    client = client_over(ScriptedChannel(ProtocolError("Stream is ended"), "send"))
    with pytest.raises(errors.BridgeError, match="gRPC protocol error") as info:
        await _one_call(client, how)
    assert type(info.value) is errors.BridgeError


@pytest.mark.parametrize("how", ["call", "stream"])
@pytest.mark.parametrize("step", ["send", "recv"])
async def test_cancellation_is_never_swallowed_or_mapped(how: str, step: str) -> None:
    client = client_over(ScriptedChannel(asyncio.CancelledError(), step))
    with pytest.raises(asyncio.CancelledError):
        await _one_call(client, how)


async def test_an_sdk_bug_is_not_disguised_as_a_connection_failure() -> None:
    # A TypeError raised by our own code (here: the fake) is not a transport failure.
    client = client_over(ScriptedChannel(TypeError("a bug"), "send"))
    with pytest.raises(TypeError, match="a bug"):
        await client.call("math", "sqrt", [4])


async def test_close_after_a_broken_connection_raises_nothing() -> None:
    channel = ScriptedChannel(ConnectionResetError(errno.ECONNRESET, "reset"), "send")
    channel.close_exc = StreamTerminatedError("Connection lost")
    client = client_over(channel)
    client.current_session()  # close() releases it: that RPC fails too
    await client.close()
    assert not client._transport.connected
    assert len(channel.streams) == 1  # the release was attempted


# -- grpclib's own race, deterministic ------------------------------------------------


def _goaway_bytes() -> bytes:
    """What a server at its connection cap sends: its SETTINGS, then GOAWAY."""
    server = H2Connection(H2Configuration(client_side=False))
    server.initiate_connection()
    server.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, b"too many connections")
    return server.data_to_send()


def _goaway(protocol: H2Protocol) -> None:
    protocol.data_received(_goaway_bytes())


def _reset(protocol: H2Protocol) -> None:
    protocol.connection_lost(ConnectionResetError(errno.ECONNRESET, "reset by peer"))


class ClosedBeforeFirstStream(Channel):
    """A real grpclib channel whose connection is closed (by ``close_under``) after it is
    made and before grpclib opens the first stream on it: what happens when a GOAWAY or a
    reset arrives while ``Channel.__connect__`` is returning."""

    def __init__(self, close_under: Callable[[H2Protocol], None]) -> None:
        super().__init__()
        self.close_under = close_under
        self.peers: list[socket.socket] = []
        self.connects = 0

    async def _create_connection(self) -> H2Protocol:
        mine, theirs = socket.socketpair()
        self.peers.append(theirs)
        self.connects += 1
        _, protocol = await self._loop.create_connection(self._protocol_factory, sock=mine)
        self.close_under(protocol)
        return protocol

    def close(self) -> None:
        super().close()
        for peer in self.peers:
            peer.close()


@pytest.mark.parametrize("close_under", [_goaway, _reset], ids=["goaway", "reset"])
@pytest.mark.parametrize("how", ["call", "stream"])
async def test_connection_closed_before_the_first_stream_is_connection_failed(
    close_under: Callable[[H2Protocol], None], how: str
) -> None:
    channel = ClosedBeforeFirstStream(close_under)
    client = client_over(channel)
    try:
        with pytest.raises(errors.ConnectionFailed, match="the connection closed") as info:
            await _one_call(client, how)
        # The raw error is kept as the cause, for whoever debugs it.
        assert isinstance(info.value.__cause__, AttributeError)
        assert "_transport" in str(info.value.__cause__)
    finally:
        await client.close()


async def test_close_releasing_the_auto_session_over_a_closing_connection_raises_nothing() -> None:
    # What `async with Client` does on the way out after the server died: the release of
    # the auto session reconnects and meets the same race.
    channel = ClosedBeforeFirstStream(_goaway)
    client = client_over(channel)
    client.current_session()
    await client.close()
    assert channel.connects == 1 and not client._transport.connected


# -- the stream deadline, per item ----------------------------------------------------


async def test_stream_deadline_holds_per_item_and_resets_the_rpc() -> None:
    channel = ScriptedChannel(batches=[_Batch(list(range(8192)))])
    client = client_over(channel)
    seen = 0
    started = time.monotonic()
    with snakebridge.correlation_id("cid-2"):
        with pytest.raises(errors.CallTimeout, match="within its timeout") as info:
            async for _ in client.stream("builtins", "range", [8192], timeout=0.2):
                seen += 1
                await anyio.sleep(0.01)
    elapsed = time.monotonic() - started
    assert info.value.correlation_id == "cid-2"
    # Raised long before the buffered batch ran out (8192 x 10 ms = 82 s)...
    assert seen < 1000 and elapsed < 5
    # ...and inside the request, so grpclib resets the stream (the server then closes the
    # generator in the worker).
    (stream,) = channel.streams
    assert stream.exited and stream.exit_exc is TimeoutError


async def test_a_stream_without_a_timeout_yields_every_buffered_item() -> None:
    channel = ScriptedChannel(batches=[_Batch(list(range(100))), _Batch(list(range(100, 200)))])
    client = client_over(channel)
    assert [x async for x in client.stream("builtins", "range", [200])] == list(range(200))
    timed = [x async for x in client.stream("builtins", "range", [200], timeout=60)]
    assert timed == list(range(200))


# -- a closed client ------------------------------------------------------------------


def _ref(client: snakebridge.Client) -> snakebridge.Ref:
    payload = codec.RefPayload(False, "1.1.7", "s", "default", "builtins.list")
    return snakebridge.Ref(payload, client)


def _stream_ref(client: snakebridge.Client) -> snakebridge.StreamRef:
    payload = codec.RefPayload(True, "1.1.7", "s", "default", "builtins.list")
    return snakebridge.StreamRef(payload, client)


def _every_rpc(client: snakebridge.Client) -> dict[str, Callable[[], Any]]:
    """One way into each RPC of the Runtime API (and the lifecycle's own)."""

    async def stream() -> Any:
        return [x async for x in client.stream("builtins", "range", [1])]

    async def stream_ref() -> Any:
        return [x async for x in _stream_ref(client)]

    return {
        "call": lambda: client.call("math", "sqrt", [4]),
        "call_dynamic": lambda: client.call_dynamic("math.sqrt", [4]),
        "call_class": lambda: client.call_class("collections", "Counter"),
        "call_method": lambda: client.call_method(_ref(client), "copy"),
        "get_attr": lambda: client.get_attr(_ref(client), "x"),
        "set_attr": lambda: client.set_attr(_ref(client), "x", 1),
        "get_module_attr": lambda: client.get_module_attr("math", "pi"),
        "call_helper": lambda: client.call_helper("add", [1, 2]),
        "module": lambda: client.module("math").sqrt(4),
        "stream": stream,
        "stream_ref": stream_ref,
        "stream_next": lambda: client.stream_next(_stream_ref(client)),
        "stream_len": lambda: client.stream_len(_ref(client)),
        "session_call": lambda: client.session("s2").call("math", "sqrt", [4]),
        "release_session": lambda: client.release_session("s"),
        "release_ref": lambda: client.release_ref(_ref(client)),
        "ref_release": lambda: _ref(client).release(),
        "describe": lambda: client.describe(),
        "helpers": lambda: client.helpers(),
        "connect": lambda: client.connect(),
    }


RPCS = list(_every_rpc(snakebridge.Client(ADDRESS)))


@pytest.mark.parametrize("rpc", RPCS)
async def test_every_rpc_on_a_closed_client_raises_client_closed(rpc: str) -> None:
    channel = ScriptedChannel()
    client = client_over(channel)
    assert await client.call("math", "sqrt", [4]) == [{"x": 1}]  # the scripted reply
    await client.close()
    assert len(channel.streams) == 2  # the call, then close() releasing the auto session
    with snakebridge.correlation_id("cid-closed"):
        with pytest.raises(errors.ClientClosed, match="closed Client") as info:
            await _every_rpc(client)[rpc]()
    assert info.value.correlation_id == "cid-closed"
    assert ADDRESS in str(info.value)
    # Nothing was sent, and no new connection was made behind the caller's back.
    assert len(channel.streams) == 2
    assert not client._transport.connected


async def test_a_client_closed_before_its_first_rpc_never_connects() -> None:
    client = snakebridge.Client(ADDRESS)
    await client.close()
    with pytest.raises(errors.ClientClosed):
        await client.call("math", "sqrt", [4])
    assert not client._transport.connected


async def test_leaving_async_with_closes_the_client_for_good() -> None:
    client = client_over(ScriptedChannel())
    client.connect = _connected  # type: ignore[method-assign]  # the fake has no Describe
    async with client:
        assert await client.call("math", "sqrt", [4]) == [{"x": 1}]
    with pytest.raises(errors.ClientClosed):
        await client.call("math", "sqrt", [4])
    del client.connect  # the real one: its Describe RPC is refused too
    with pytest.raises(errors.ClientClosed):
        async with client:
            pass
    await client.close()  # closing again is quiet


async def _connected() -> None:
    pass


async def test_a_stream_started_before_close_and_iterated_after_raises_client_closed() -> None:
    channel = ScriptedChannel()
    client = client_over(channel)
    items = client.stream("builtins", "range", [1])
    await client.close()
    sent = len(channel.streams)  # close() released the auto session the stream made
    with pytest.raises(errors.ClientClosed):
        await items.__anext__()
    assert len(channel.streams) == sent


async def test_an_explicit_session_exits_quietly_after_its_client_closed() -> None:
    # Session.__aexit__ releases on a best-effort basis, like close() releasing the auto
    # session: a closed client has nothing left to release through.
    client = client_over(ScriptedChannel())
    async with client.session("s3") as session:
        await client.close()
    assert session.id == "s3"


async def test_an_unused_client_makes_its_channel_on_first_use() -> None:
    # The lazy channel stays: neither connect() nor `async with` is needed first.
    client = snakebridge.Client(ADDRESS)
    assert not client._transport.connected
    with pytest.raises(errors.ConnectionFailed):
        await client.call("math", "sqrt", [4])  # nobody listens on port 1
    assert client._transport.connected
    await client.close()


async def test_a_failed_async_with_leaves_the_client_free_to_try_again() -> None:
    # `async with` closes the channel when connect() fails, not the client: the caller
    # never got it, so a retry on the same object connects afresh.
    client = snakebridge.Client(ADDRESS)  # nobody listens on port 1
    for _ in range(2):
        with pytest.raises(errors.ConnectionFailed):
            async with client:
                pass
        assert not client._transport.connected and not client._transport.closed
    await client.close()
    with pytest.raises(errors.ClientClosed):
        await client.call("math", "sqrt", [4])
