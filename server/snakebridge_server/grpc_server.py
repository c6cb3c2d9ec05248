"""The gRPC server: grpclib's ``Server`` with the limits grpclib lacks. Runs in the server.

This is the one module that reaches below grpclib's public API (and into h2 beneath it);
the rest of the server uses only the public names here. grpclib is pinned (==0.4.9) and
every private access below was checked against 0.4.9 (``grpclib/server.py``,
``grpclib/protocol.py``, ``grpclib/testing.py``); the e2e tests that fail if one stops
working are tests/e2e/test_connections.py, test_unauthenticated_limits.py and
test_limits_and_regressions.py.

The seam is grpclib's own: ``Server._protocol_factory`` makes each connection's
``H2Protocol`` (``grpclib.testing.ChannelFor`` calls it the same way). ``GrpcServer``
overrides it to make a ``_Protocol``, which subclasses grpclib's protocol, ``Connection`` and
``EventsProcessor`` to give each connection what ``connections.py`` decides:

- a place under ``--max-connections`` (``ConnectionGuard``); one more is refused: sent a
  GOAWAY once it has spoken, and closed (``_Refusal``);
- ``SETTINGS_MAX_CONCURRENT_STREAMS`` = ``--max-streams-per-connection``;
- a deadline for the client's HTTP/2 preface (``--handshake-timeout``);
- an idle timer (``--idle-timeout``), running while no stream is open, ending the
  connection with GOAWAY ``NO_ERROR``;
- ping-abuse and rapid-reset protection (``PingStrikes``, ``ResetWindow``): GOAWAY
  ``ENHANCE_YOUR_CALM``, and what the client sent after is dropped unread;
- one write per loop iteration (``CoalescingTransport``).

Per request, ``read_message`` checks a message's 5-byte length prefix before reading its
body (grpclib would buffer any declared length first), ``read_through`` makes a handler's
``stream.recv_message()`` do the same, and ``stop_reading`` resets a stream whose request
will not be read; ``bounded.RequestGuard`` applies them to every method.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import struct
import time
from collections.abc import Callable, Collection, Coroutine
from functools import cache
from typing import Any, Final, cast

from grpclib.config import Configuration
from grpclib.protocol import (
    AbstractHandler,
    Connection,
    EventsProcessor,
    H2Protocol,
    _set_nodelay,
)
from grpclib.protocol import Stream as H2Stream
from grpclib.server import Server, Stream
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import PingReceived, RemoteSettingsChanged, RequestReceived, StreamReset
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hpack import Encoder

from snakebridge.errors import BadRequest, LimitExceeded

from .coalesce import CoalescingTransport
from .connections import ConnectionGuard, ConnectionLimits, PingStrikes, ResetWindow

log = logging.getLogger("snakebridge.server")

_PREFIX = struct.Struct(">?I")  # a gRPC message's prefix: compressed flag, length
_REFUSAL_GRACE: Final = 1.0  # seconds a refused client has to read its GOAWAY and leave


class GrpcServer(Server):
    """grpclib's ``Server``, each connection guarded by ``ConnectionLimits``."""

    def __init__(
        self,
        services: Collection[Any],
        *,
        config: Configuration,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(services, config=config)
        self.connections = ConnectionGuard(limits)

    def _protocol_factory(self) -> H2Protocol:
        # grpclib 0.4.9: the method its Server passes to create_server and ChannelFor
        # calls; the base makes the request handler and registers it for close(), and the
        # protocol it returns hands us that handler and grpclib's two configurations.
        base = super()._protocol_factory()
        return _Protocol(base.handler, base.config, base.h2_config, self.connections)

    @property
    def port(self) -> int | None:
        """The TCP port bound (the one the kernel chose for port 0); None on a socket path
        or before ``start``."""
        listener = self._server  # grpclib 0.4.9 keeps the asyncio.Server here
        sockets = getattr(listener, "sockets", None) or ()
        if not sockets:
            return None
        name = sockets[0].getsockname()
        return name[1] if isinstance(name, tuple) else None


# -- per connection ------------------------------------------------------------------------


@cache
def _refusal() -> bytes:
    """A server preface and a GOAWAY: what a connection over the cap receives."""
    conn = H2Connection(H2Configuration(client_side=False))
    conn.initiate_connection()
    conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, b"too many connections")
    return conn.data_to_send()


class _Refusal:
    """A connection over the cap. It is answered once the client has spoken (its preface
    and usually its first request), so that the GOAWAY ends that request in the client
    rather than reaching it between its connect and its first stream, which grpclib's
    client does not survive. What the client sends is read and dropped: closing with
    unread data would reset the connection before the client reads the GOAWAY."""

    __slots__ = ("_answered", "_transport")

    def __init__(self, handler: AbstractHandler, transport: asyncio.BaseTransport) -> None:
        handler.close()  # lets grpclib's server forget its handler
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: no asyncio base
        self._answered = False
        asyncio.get_running_loop().call_later(_REFUSAL_GRACE, self._transport.close)

    def received(self) -> None:
        if self._answered:
            return
        self._answered = True
        self._transport.write(_refusal())
        if self._transport.can_write_eof():
            self._transport.write_eof()  # the client closes on the GOAWAY and our EOF
        else:
            self._transport.close()  # TLS: close_notify after the GOAWAY


class _LinearEncoder(Encoder):
    """hpack's encoder, sending long header values as plain literals: its Huffman coder
    is quadratic in a value's length. An error trailer of 16 KiB took 143 ms to encode
    (and the client 3-8 ms to decode), against 0.01 ms plain (measured, 2-core VM); short
    values keep Huffman, which saves them about a fifth."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        headers = list(headers)
        if huffman and any(len(h[1]) > _HUFFMAN_MAX for h in headers):
            huffman = False
        return super().encode(headers, huffman)


_HUFFMAN_MAX: Final = 256


class _Connection(Connection):
    """grpclib's connection state, telling its protocol when the server sends a stream's
    headers or data (what resets the client's ping strikes)."""

    def __init__(
        self,
        h2: H2Connection,
        transport: asyncio.Transport,
        *,
        config: Configuration,
        sent: Callable[[], None],
    ) -> None:
        super().__init__(h2, transport, config=config)
        self._sent = sent

    # grpclib 0.4.9's protocol.Stream calls these after each HEADERS and DATA it sends.
    def headers_send_process(self) -> None:
        self._sent()
        super().headers_send_process()

    def data_send_process(self) -> None:
        self._sent()
        super().data_send_process()

    def limit_streams(self, max_streams: int) -> None:
        # grpclib 0.4.9 keeps the h2 connection in _connection and has no setting for it.
        self._connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.flush()

    def goaway(self, code: ErrorCodes, reason: bytes) -> None:
        """Send GOAWAY and close; grpclib cleans up in ``connection_lost``."""
        try:
            self._connection.close_connection(code, reason)  # grpclib 0.4.9: see above
            self.flush()
        except ProtocolError:
            pass  # the connection is already closing; no GOAWAY then
        self.close()

    def peer(self) -> str:
        # grpclib 0.4.9 deletes _transport on close(), so it may be gone.
        transport = getattr(self, "_transport", None)
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer) if peer else "?"


class _Events(EventsProcessor):
    """grpclib's (synchronous) HTTP/2 event handling, with the connection's limits. Its
    ``processors`` table holds bound methods, so these overrides are what it calls."""

    def __init__(
        self, handler: AbstractHandler, connection: Connection, guarded: _Protocol
    ) -> None:
        super().__init__(handler, connection)
        self._guarded = guarded

    def register(self, stream: H2Stream) -> Callable[[], None]:
        release = super().register(stream)
        guarded = self._guarded
        guarded.stream_opened()

        def release_stream() -> None:
            release()
            guarded.stream_closed()

        return release_stream

    def process_remote_settings_changed(self, event: RemoteSettingsChanged) -> None:
        self._guarded.preface_received()  # the client's first SETTINGS ends its preface
        super().process_remote_settings_changed(event)

    def process_ping_received(self, event: PingReceived) -> None:
        if self._guarded.ping_allowed():
            super().process_ping_received(event)

    def process_request_received(self, event: RequestReceived) -> None:
        if not self._guarded.closed:  # sent away: what it sent after is dropped unread
            super().process_request_received(event)

    def process_stream_reset(self, event: StreamReset) -> None:
        super().process_stream_reset(event)
        if event.remote_reset:
            self._guarded.stream_reset()


class _Protocol(H2Protocol):
    """One connection: grpclib's protocol, admitted under the cap and kept to its limits."""

    connection: _Connection

    def __init__(
        self,
        handler: AbstractHandler,
        config: Configuration,
        h2_config: H2Configuration,
        guard: ConnectionGuard,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self._guard = guard
        self._admitted = False
        self.closed = False
        self._streams = 0
        self._idle: asyncio.TimerHandle | None = None
        self._preface: asyncio.TimerHandle | None = None
        self._pings = PingStrikes()
        self._resets = ResetWindow()
        self._refusal: _Refusal | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            self._refusal = _Refusal(self.handler, transport)
            return
        self._admitted = True
        loop = asyncio.get_running_loop()
        # Casts: uvloop's transports have no asyncio base class, and CoalescingTransport
        # is a Transport by duck typing (it hands what it does not override to the real one).
        coalescing = CoalescingTransport(cast(asyncio.Transport, transport), loop)
        self._connect(cast(asyncio.Transport, coalescing))
        self.connection.limit_streams(self._guard.limits.max_streams)
        self._preface = loop.call_later(
            self._guard.limits.handshake_timeout, self._preface_timed_out
        )
        self._arm_idle()

    def _connect(self, transport: asyncio.Transport) -> None:
        # grpclib 0.4.9's H2Protocol.connection_made, statement for statement, except that
        # it makes our Connection and EventsProcessor: it names its own classes inline.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _set_nodelay(sock)  # grpclib-private: TCP_NODELAY on TCP sockets only

        h2_conn = H2Connection(config=self.h2_config)
        h2_conn.encoder = _LinearEncoder()  # h2 4.x: the connection's public encoder
        h2_conn.initiate_connection()

        initial = h2_conn.local_settings.initial_window_size
        conn_delta = self.config.http2_connection_window_size - initial
        stream_delta = self.config.http2_stream_window_size - initial
        if conn_delta:
            h2_conn.increment_flow_control_window(conn_delta)
        if stream_delta:
            h2_conn.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size}
            )

        self.connection = _Connection(
            h2_conn, transport, config=self.config, sent=self._pings.sent_something
        )
        self.connection.flush()
        self.connection.initialize()

        self.processor = _Events(self.handler, self.connection, self)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            super().data_received(data)
        elif self._refusal is not None:
            self._refusal.received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return  # refused: grpclib never saw this connection
        self._admitted = False
        self._guard.release()
        self.closed = True
        self._cancel_timers()
        super().connection_lost(exc)

    # -- events (from _Events) -----------------------------------------------------------

    def preface_received(self) -> None:
        if self._preface is not None:
            self._preface.cancel()
            self._preface = None

    def stream_opened(self) -> None:
        self._streams += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def stream_closed(self) -> None:
        self._streams -= 1
        if self._streams == 0:
            self._arm_idle()

    def ping_allowed(self) -> bool:
        if self._pings.allow(time.monotonic()):
            return True
        log.warning("closing connection from %s: too many pings", self.connection.peer())
        self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"too_many_pings")
        return False

    def stream_reset(self) -> None:
        if self.closed or not self._resets.exceeded(time.monotonic()):
            return
        log.warning("closing connection from %s: too many stream resets", self.connection.peer())
        self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"too_many_resets")

    # -- timers and closing --------------------------------------------------------------

    def _arm_idle(self) -> None:
        timeout = self._guard.limits.idle_timeout
        if timeout and not self.closed:
            # An empty context: the last stream's handler may be what arms it, and the
            # close it logs is about the connection, not that call (its correlation id).
            self._idle = asyncio.get_running_loop().call_later(
                timeout, self._idle_timed_out, context=contextvars.Context()
            )

    def _preface_timed_out(self) -> None:
        self._preface = None
        log.info("closing connection from %s: no HTTP/2 preface in time", self.connection.peer())
        self._goaway(ErrorCodes.PROTOCOL_ERROR, b"no preface within the handshake timeout")

    def _idle_timed_out(self) -> None:
        self._idle = None
        log.debug("closing connection from %s: idle", self.connection.peer())
        self._goaway(ErrorCodes.NO_ERROR, b"idle")

    def _goaway(self, code: ErrorCodes, reason: bytes) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        self.connection.goaway(code, reason)

    def _cancel_timers(self) -> None:
        for timer in (self._idle, self._preface):
            if timer is not None:
                timer.cancel()
        self._idle = self._preface = None


# -- per request ---------------------------------------------------------------------------


async def read_message(
    stream: Stream[Any, Any],
    limit: int,
    advice: str = "pass big values by ref or raise --max-message-size",
) -> Any:
    """The next request message, or None at the end of the request stream; refuses one
    longer than ``limit`` bytes from its length prefix, having read nothing of its body.

    grpclib 0.4.9's ``Stream.recv_message`` (``grpclib.stream.recv_message``) reads the
    body before any check; this is it with the check first, and it keeps the same counts.
    """
    h2 = _h2_stream(stream)
    prefix = await h2.recv_data(_PREFIX.size)
    if not prefix:
        return None
    if len(prefix) < _PREFIX.size:
        raise BadRequest("the request ended inside a message's length prefix")
    compressed, length = _PREFIX.unpack(prefix)
    if compressed:
        raise BadRequest("compressed messages are not supported")
    if length > limit:
        raise LimitExceeded(
            f"the request message is {length} bytes, over the {limit}-byte limit; {advice}"
        )
    body = await h2.recv_data(length)
    if len(body) < length:
        raise BadRequest("the request ended inside a message")
    # grpclib 0.4.9 Stream privates: its codec, request type, the server's event
    # dispatcher (RecvMessage listeners) and the statistics recv_message keeps.
    message = stream._codec.decode(body, stream._recv_type)
    (message,) = await stream._dispatch.recv_message(message)
    stream._messages_received += 1
    h2.connection.messages_received += 1
    h2.connection.last_message_received = time.monotonic()
    return message


async def recv_bounded(
    stream: Stream[Any, Any],
    limit: int,
    advice: str = "pass big values by ref or raise --max-message-size",
) -> Any:
    """The request's message, refusing one longer than ``limit`` bytes (the refusal ends
    with ``advice``); ``BadRequest`` when the request carried none."""
    message = await read_message(stream, limit, advice)
    if message is None:
        raise BadRequest("the request carried no message")
    return message


def read_through(stream: Stream[Any, Any], recv: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Make ``stream.recv_message()`` (and iterating the stream) call ``recv``: grpclib's
    own handlers (health, reflection) read through it. grpclib makes the ``Stream`` inside
    its request handler, so there is no class to substitute; the instance is patched."""
    stream.recv_message = recv  # type: ignore[method-assign]  # see the docstring


def stop_reading(stream: Stream[Any, Any]) -> None:
    """After the final status went out, tell the client to stop sending the rest of a
    request we will never read (RST_STREAM NO_ERROR, as gRPC specifies)."""
    h2 = _h2_stream(stream)
    if h2.closable:
        h2.reset_nowait()


def connection_of(stream: Stream[Any, Any]) -> object:
    """A key for the connection ``stream`` arrived on, the same for all its streams."""
    return _h2_stream(stream).connection


def _h2_stream(stream: Stream[Any, Any]) -> H2Stream:
    # grpclib 0.4.9: a server Stream keeps its protocol-level stream (HTTP/2 data,
    # reset, its connection) in _stream and offers no public way to it.
    return stream._stream
