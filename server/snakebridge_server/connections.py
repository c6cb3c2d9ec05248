"""Connection limits that grpclib lacks, enforced per connection.

grpclib 0.4.9 accepts any number of connections and keeps each one until its peer leaves
(1500 idle connections held 1500 fds), never times out a client that connects and says
nothing, and answers every PING a client sends. ``ConnectionGuard`` wraps the server's
per-connection protocol factory (the seam ``coalesce.py`` uses; ``Server._protocol_factory``
is grpclib-private, grpclib is pinned, and the e2e tests cover every path) and gives each
connection:

- a place under ``--max-connections``: one more is sent a GOAWAY and closed;
- ``SETTINGS_MAX_CONCURRENT_STREAMS`` = ``--max-streams-per-connection``;
- a deadline for the client's HTTP/2 preface (``--handshake-timeout``);
- an idle timer (``--idle-timeout``), running while the connection has no open stream,
  that ends it with GOAWAY ``NO_ERROR``;
- ping-abuse protection: a client that sends PINGs less than ``PING_MIN_INTERVAL`` apart
  more than ``PING_STRIKES`` times with nothing sent by the server in between is sent
  GOAWAY ``ENHANCE_YOUR_CALM`` ("too_many_pings", as gRPC servers do) and closed;
- rapid-reset protection (CVE-2023-44487): a client that resets more than
  ``RESET_LIMIT`` streams within ``RESET_WINDOW`` seconds (a sliding window) is sent
  GOAWAY ``ENHANCE_YOUR_CALM`` ("too_many_resets") and closed, and the requests still
  queued in what it sent are dropped unread. Opening and resetting streams costs the
  client two frames and the server a handler task each: 50,000 of them stalled other
  clients for 8-11 s and grew the server by ~0.5 GB. A client that cancels its calls
  legitimately resets at the rate its calls finish, far below this.

The server's own keepalive pings are grpclib's (``grpc_configuration``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, cast

from grpclib.config import Configuration
from grpclib.protocol import H2Protocol
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import PingReceived, RemoteSettingsChanged, RequestReceived, StreamReset
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from .config import ServerConfig

log = logging.getLogger("snakebridge.server")

PING_MIN_INTERVAL: Final = 10.0  # seconds; closer pings without server data are strikes
PING_STRIKES: Final = 2  # strikes allowed; the next one closes the connection
RESET_WINDOW: Final = 10.0  # seconds of stream resets counted
RESET_LIMIT: Final = 1000  # resets allowed within RESET_WINDOW; the next one closes
_REFUSAL_LOG_INTERVAL: Final = 1.0  # at most one "refused" warning a second
_REFUSAL_GRACE: Final = 1.0  # seconds a refused client has to read its GOAWAY and leave
_FD_HEADROOM: Final = 256  # fds beyond max_connections: workers' pipes, logs, the listener


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    max_streams: int
    idle_timeout: float  # 0: never
    handshake_timeout: float

    @classmethod
    def from_config(cls, config: ServerConfig) -> ConnectionLimits:
        return cls(
            max_connections=config.max_connections,
            max_streams=config.max_streams_per_connection,
            idle_timeout=config.idle_timeout,
            handshake_timeout=config.handshake_timeout,
        )


def grpc_configuration(config: ServerConfig) -> Configuration:
    """grpclib's server configuration: keepalive pings every ``keepalive_time`` seconds
    while a stream is open, the connection closed when one goes unanswered for
    ``keepalive_timeout``. grpclib would otherwise send at most two pings without data and
    none closer than 300 s apart, which would stretch a short ``keepalive_time``."""
    if config.keepalive_time == 0:
        return Configuration(_keepalive_time=None)
    return Configuration(
        _keepalive_time=config.keepalive_time,
        _keepalive_timeout=config.keepalive_timeout,
        _keepalive_permit_without_calls=False,  # an idle connection meets the idle timeout
        _http2_max_pings_without_data=0,
        _http2_min_sent_ping_interval_without_data=config.keepalive_time,
    )


def raise_open_files_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection is one fd); warn
    when even that cannot hold ``max_connections``. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    if soft < max_connections + _FD_HEADROOM:
        log.warning(
            "the open-files limit (%d) is below --max-connections (%d) plus %d: connections "
            "may fail with EMFILE before the cap refuses them; raise `ulimit -Hn`",
            soft,
            max_connections,
            _FD_HEADROOM,
        )
    return soft


@cache
def _refusal() -> bytes:
    """A server preface and a GOAWAY: what a connection over the cap receives."""
    conn = H2Connection(H2Configuration(client_side=False))
    conn.initiate_connection()
    conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, b"too many connections")
    return conn.data_to_send()


class ConnectionGuard:
    """Counts the server's connections and enforces ``ConnectionLimits`` on each."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self._refused_unlogged = 0
        self._last_refusal_log = -math.inf

    def __repr__(self) -> str:
        return f"<ConnectionGuard open={self.open} refused={self.refused}>"

    def wrap(self, factory: Callable[[], H2Protocol]) -> Callable[[], H2Protocol]:
        """Wrap a protocol factory so each protocol it makes is counted and guarded."""

        def make() -> H2Protocol:
            protocol = factory()
            _Guarded(self, protocol)
            return protocol

        return make

    def _admit(self) -> bool:
        if self.open < self.limits.max_connections:
            self.open += 1
            return True
        self.refused += 1
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d connection(s): %d open, the --max-connections limit",
                self._refused_unlogged,
                self.open,
            )
            self._refused_unlogged = 0
            self._last_refusal_log = now
        return False


class _Refusal:
    """A connection over the cap. It is answered once the client has spoken (its preface
    and usually its first request), so that the GOAWAY ends that request in the client
    rather than reaching it between its connect and its first stream, which grpclib's
    client does not survive. What the client sends is read and dropped: closing with
    unread data would reset the connection before the client reads the GOAWAY."""

    __slots__ = ("_answered", "_transport")

    def __init__(self, protocol: H2Protocol, transport: asyncio.BaseTransport) -> None:
        protocol.handler.close()  # lets grpclib's server forget its handler
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


class _Guarded:
    """One connection's limits: hooks into its ``H2Protocol`` once it is made."""

    __slots__ = (
        "_admitted",
        "_closed",
        "_guard",
        "_idle",
        "_last_ping",
        "_preface",
        "_protocol",
        "_refusal",
        "_resets",
        "_streams",
        "_strikes",
    )

    def __init__(self, guard: ConnectionGuard, protocol: H2Protocol) -> None:
        self._guard = guard
        self._protocol = protocol
        self._admitted = False
        self._closed = False
        self._streams = 0
        self._idle: asyncio.TimerHandle | None = None
        self._preface: asyncio.TimerHandle | None = None
        self._last_ping: float | None = None
        self._strikes = 0
        self._resets: deque[float] = deque(maxlen=RESET_LIMIT + 1)  # times of recent resets
        self._refusal: _Refusal | None = None
        connection_made = protocol.connection_made
        connection_lost = protocol.connection_lost
        data_received = protocol.data_received

        def made(transport: asyncio.BaseTransport) -> None:
            if not guard._admit():
                self._refusal = _Refusal(protocol, transport)
                return
            self._admitted = True
            connection_made(transport)
            self._start()

        def lost(exc: BaseException | None) -> None:
            if not self._admitted:
                return  # refused: grpclib never saw this connection
            self._admitted = False
            guard.open -= 1
            self._closed = True
            self._cancel_timers()
            connection_lost(exc)

        def received(data: bytes) -> None:
            if self._admitted:
                data_received(data)
            elif self._refusal is not None:
                self._refusal.received()

        # Set before the transport exists: uvloop binds data_received when it is created.
        protocol.data_received = received  # type: ignore[method-assign]
        protocol.connection_made = made  # type: ignore[method-assign]
        protocol.connection_lost = lost  # type: ignore[method-assign]

    # -- hooks ---------------------------------------------------------------------------

    def _start(self) -> None:
        protocol = self._protocol
        limits = self._guard.limits
        h2 = protocol.connection._connection
        h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_streams})
        protocol.connection.flush()

        processor = protocol.processor
        processors: dict[type, Any] = processor.processors
        on_settings = processors[RemoteSettingsChanged]
        on_ping = processors[PingReceived]
        on_request = processors[RequestReceived]
        on_reset = processors[StreamReset]

        def settings(event: RemoteSettingsChanged) -> None:
            if self._preface is not None:  # the client's first SETTINGS ends its preface
                self._preface.cancel()
                self._preface = None
            on_settings(event)

        def ping(event: PingReceived) -> None:
            if self._ping_allowed():
                on_ping(event)

        def request(event: RequestReceived) -> None:
            if not self._closed:  # sent away: what it sent after is dropped unread
                on_request(event)

        def reset(event: StreamReset) -> None:
            on_reset(event)
            if event.remote_reset and not self._closed:
                self._count_reset()

        processors[RemoteSettingsChanged] = settings
        processors[PingReceived] = ping
        processors[RequestReceived] = request
        processors[StreamReset] = reset

        register = processor.register

        def register_stream(stream: Any) -> Callable[[], None]:
            release = register(stream)
            self._stream_opened()

            def release_stream() -> None:
                release()
                self._stream_closed()

            return release_stream

        processor.register = register_stream  # type: ignore[method-assign]

        connection = protocol.connection
        headers_sent, data_sent = connection.headers_send_process, connection.data_send_process

        def on_headers_sent() -> None:
            self._sent_something()
            headers_sent()

        def on_data_sent() -> None:
            self._sent_something()
            data_sent()

        connection.headers_send_process = on_headers_sent  # type: ignore[method-assign]
        connection.data_send_process = on_data_sent  # type: ignore[method-assign]

        loop = asyncio.get_running_loop()
        self._preface = loop.call_later(limits.handshake_timeout, self._preface_timed_out)
        self._arm_idle()

    def _stream_opened(self) -> None:
        self._streams += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _stream_closed(self) -> None:
        self._streams -= 1
        if self._streams == 0:
            self._arm_idle()

    def _arm_idle(self) -> None:
        timeout = self._guard.limits.idle_timeout
        if timeout and not self._closed:
            # An empty context: the last stream's handler may be what arms it, and the
            # close it logs is about the connection, not that call (its correlation id).
            self._idle = asyncio.get_running_loop().call_later(
                timeout, self._idle_timed_out, context=contextvars.Context()
            )

    def _sent_something(self) -> None:
        self._strikes = 0
        self._last_ping = None

    def _ping_allowed(self) -> bool:
        now = time.monotonic()
        last, self._last_ping = self._last_ping, now
        if last is not None and now - last < PING_MIN_INTERVAL:
            self._strikes += 1
            if self._strikes > PING_STRIKES:
                log.warning("closing connection from %s: too many pings", self._peer())
                self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"too_many_pings")
                return False
        return True

    def _count_reset(self) -> None:
        now = time.monotonic()
        resets = self._resets
        resets.append(now)
        while resets[0] < now - RESET_WINDOW:
            resets.popleft()
        if len(resets) > RESET_LIMIT:
            log.warning("closing connection from %s: too many stream resets", self._peer())
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"too_many_resets")

    # -- closing -------------------------------------------------------------------------

    def _preface_timed_out(self) -> None:
        self._preface = None
        log.info("closing connection from %s: no HTTP/2 preface in time", self._peer())
        self._goaway(ErrorCodes.PROTOCOL_ERROR, b"no preface within the handshake timeout")

    def _idle_timed_out(self) -> None:
        self._idle = None
        log.debug("closing connection from %s: idle", self._peer())
        self._goaway(ErrorCodes.NO_ERROR, b"idle")

    def _goaway(self, code: ErrorCodes, reason: bytes) -> None:
        """Send GOAWAY and close; grpclib cleans up in ``connection_lost``."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timers()
        connection = self._protocol.connection
        try:
            connection._connection.close_connection(code, reason)
            connection.flush()
        except ProtocolError:
            pass  # the connection is already closing; no GOAWAY then
        connection.close()

    def _cancel_timers(self) -> None:
        for timer in (self._idle, self._preface):
            if timer is not None:
                timer.cancel()
        self._idle = self._preface = None

    def _peer(self) -> str:
        transport = getattr(self._protocol.connection, "_transport", None)
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer) if peer else "?"
