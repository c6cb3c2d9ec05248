"""The SDK's transport: one grpclib channel, its RPCs, and what their failures become.
Runs in the client process.

The only module of the SDK that imports grpclib or h2 (``wire.h2_repr`` aside, which both
sides install), and the only one that reads grpclib's private attributes: each such read
says why and for which grpclib version (the version is pinned in pyproject.toml).

- ``Transport``: the lazily opened channel (with a connection-wide flow-control window),
  a unary RPC, a server-streaming RPC and a bidirectional one (``bidi``, which
  ``_exchange`` drives), and ``close``, after which it refuses every RPC.
- ``RpcErrors``: the one context manager that maps whatever escapes an RPC to the SDK's
  errors and tags each with the RPC's correlation id.

::

    Client (Runtime API, sessions, lifecycle)      _client.py
      └── Transport.unary / server_stream          _transport.py
            └── with RpcErrors(...)                 grpclib, h2, sockets, TLS -> errors.*
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, TypeVar

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.metadata import decode_metadata
from h2.exceptions import H2Error

from .errors import (
    BridgeError,
    CallCancelled,
    CallTimeout,
    ClientClosed,
    ConnectionFailed,
    RemoteError,
    Unauthenticated,
)
from .wire import trailer
from .wire.constants import DEFAULT_HOST, DEFAULT_PORT, SERVICE
from .wire.h2_repr import use_cheap_data_frame_repr
from .wire.text import timed_out

use_cheap_data_frame_repr()

__all__ = ["RpcErrors", "Transport", "is_transport_failure", "parse_address"]

#: The metadata of one RPC and the correlation id in it (None: the server makes one).
CallMetadata = tuple[Mapping[str, str] | None, str | None]

_CONNECTION_WINDOW: Final = 1 << 30
_Reply = TypeVar("_Reply")

_STATUS_FALLBACK: Final[dict[Status, type[BridgeError]]] = {
    Status.DEADLINE_EXCEEDED: CallTimeout,
    Status.CANCELLED: CallCancelled,
    Status.UNAVAILABLE: ConnectionFailed,
    Status.UNAUTHENTICATED: Unauthenticated,
}


def parse_address(address: str) -> tuple[str | None, int | None, str | None]:
    """``host:port``, ``[v6]:port`` or ``unix:///abs/path`` -> (host, port, path)."""
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(f"unix socket address must be absolute: {address!r}")
        return None, None, path
    scheme, sep, _ = address.partition("://")
    if sep:
        raise ValueError(
            f"bad address {address!r}: a {scheme}:// URL is not an address; use HOST:PORT "
            "(e.g. 127.0.0.1:50051) or unix:///abs/path.sock, and pass ssl= for TLS"
        )
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, DEFAULT_PORT, None
    if not port.isdigit():
        raise ValueError(f"bad address {address!r}: expected HOST:PORT or unix:///path")
    return host.strip("[]") or DEFAULT_HOST, int(port), None


def _error_from_grpc(
    exc: GRPCError, trailers: Mapping[str, Any] | None, correlation_id: str | None = None
) -> BridgeError:
    """The error a failed RPC raises; its ``correlation_id`` is the one the server reports
    (it made one if we sent none), else the one we sent."""
    error = _error_from_trailers(exc, trailers)
    return error if error.correlation_id else _tagged(error, correlation_id)


def _tagged(error: BridgeError, correlation_id: str | None) -> BridgeError:
    """``error`` raised on the client side, with the correlation id the RPC sent."""
    if correlation_id:
        error.correlation_id = correlation_id
    return error


def _error_from_trailers(exc: GRPCError, trailers: Mapping[str, Any] | None) -> BridgeError:
    error = trailer.unpack(trailers)
    if error is not None:
        return error
    cls = _STATUS_FALLBACK.get(exc.status, BridgeError)
    return cls(f"{exc.status.name}: {exc.message or ''}".rstrip(": "))


#: Raised by the layers under grpclib when the connection fails: sockets and TLS
#: (``OSError``, ``ConnectionError``, ``ssl.SSLError``), a stream cut short
#: (``asyncio.IncompleteReadError`` is an ``EOFError``), HTTP/2 state errors on a connection
#: that is going away (``h2.exceptions.*``), and grpclib's own "stream reset / connection
#: lost" (``StreamTerminatedError``).
_TRANSPORT_ERRORS: Final = (StreamTerminatedError, OSError, EOFError, H2Error)
#: Modules whose unexpected exceptions are transport failures too. grpclib 0.4.9 deletes
#: ``Connection._transport`` when a connection closes and then uses it if the close (a
#: GOAWAY, a reset) lands between connect and the first stream, or under a call:
#: ``AttributeError: 'Connection' object has no attribute '_transport'``. Its asserts
#: and h2's internals fail the same way on a dead connection.
_TRANSPORT_MODULES: Final = ("grpclib.", "h2.", "hpack.", "hyperframe.")


def _received_goaway(channel: Any) -> bool:
    """Whether the server sent this channel's connection a GOAWAY. grpclib 0.4.9 private:
    ``Channel._protocol`` (an ``H2Protocol``) ``.connection._connection`` is the h2
    ``H2Connection``, whose state machine becomes CLOSED only on a GOAWAY sent or
    received, and grpclib's client never sends one. A grpclib that moves them loses the
    finer message, never the error."""
    protocol = getattr(channel, "_protocol", None)
    h2 = getattr(getattr(protocol, "connection", None), "_connection", None)
    state = getattr(getattr(h2, "state_machine", None), "state", None)
    return getattr(state, "name", "") == "CLOSED"


def is_transport_failure(exc: BaseException) -> bool:
    """True when ``exc`` means the connection failed under an RPC (not a deadline, a
    status, a cancellation or a bug in the SDK)."""
    if not isinstance(exc, Exception) or isinstance(exc, GRPCError | ProtocolError):
        return False
    if isinstance(exc, TimeoutError):
        # grpclib's deadline has no errno; a connect that timed out (ETIMEDOUT) has one.
        return exc.errno is not None
    if isinstance(exc, _TRANSPORT_ERRORS):
        return True
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return isinstance(module, str) and module.startswith(_TRANSPORT_MODULES)


def _trailers_of(stream: Any) -> Mapping[str, Any] | None:
    """The status trailers of a finished client stream, decoded."""
    if stream is None:
        return None
    if stream.trailing_metadata is not None:
        return stream.trailing_metadata  # type: ignore[no-any-return]
    # grpclib 0.4.9 private: when it raises from a reset stream it reads the raw
    # trailers-only HEADERS itself (``client.Stream._stream``, a ``protocol.Stream`` with
    # ``headers``/``trailers``) and never fills ``trailing_metadata``; the error trailer
    # naming the class is only there. Read defensively: a grpclib upgrade that moves them
    # loses the precise class (the status fallback still applies), never the call.
    h2 = getattr(stream, "_stream", None)
    raw = getattr(h2, "trailers", None) or getattr(h2, "headers", None)
    return decode_metadata(raw) if raw else None


class RpcErrors:
    """Maps whatever escapes one RPC to the SDK's errors, tagged with the RPC's
    correlation id: the one place that knows what grpclib and the layers under it raise.

    ``GRPCError`` becomes the class the error trailer names, grpclib's deadline
    ``CallTimeout``, every transport failure ``ConnectionFailed`` (with the address, the
    method and the raw exception as ``__cause__``), grpclib's ``ProtocolError`` a plain
    ``BridgeError``. ``BridgeError`` and every ``BaseException`` that is not an
    ``Exception`` (``CancelledError``, ``GeneratorExit``) pass through untouched, as does
    anything else (an SDK bug shows as itself).
    """

    __slots__ = ("_cid", "_method", "_timeout_message", "_transport", "pending", "stream")

    def __init__(
        self, transport: Transport, method: str, cid: str | None, timeout_message: str
    ) -> None:
        self._transport = transport
        self._method = method
        self._cid = cid
        self._timeout_message = timeout_message
        #: The grpclib stream, once opened: its trailers name the error class.
        self.stream: Any = None
        #: A RemoteError to raise after the ``with`` block (``raise_pending``).
        self.pending: RemoteError | None = None

    def __enter__(self) -> RpcErrors:
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if exc is None or isinstance(exc, BridgeError) or not isinstance(exc, Exception):
            return None
        error: BridgeError
        if isinstance(exc, GRPCError):
            # Also raised on the way out (e.g. the server refused a request it did not
            # read and reset the stream while we were still sending it).
            error = _error_from_grpc(exc, _trailers_of(self.stream), self._cid)
            if isinstance(error, RemoteError):
                # Raised here, it would get the GRPCError as __context__ over the remote
                # chain it carries: the caller raises it after the with block instead.
                self.pending = error
                return True
            raise error from None
        if is_transport_failure(exc):
            error = self._transport.connection_failed(self._method, exc)
        elif isinstance(exc, TimeoutError):
            raise _tagged(CallTimeout(self._timeout_message), self._cid) from None
        elif isinstance(exc, ProtocolError):
            error = BridgeError(f"{self._method}: gRPC protocol error: {exc}")
        else:
            return None
        raise _tagged(error, self._cid) from exc

    def raise_pending(self) -> None:
        """Raise the remote error ``__exit__`` held back, outside any ``except``."""
        if self.pending is not None:
            error, self.pending = self.pending, None
            raise error


class Transport:
    """One server address, one grpclib channel opened on first use, until ``close()``.

    Every RPC goes through ``unary`` or ``server_stream``; after ``close()`` both raise
    ``ClientClosed`` before anything is sent, so a closed client never reconnects.
    """

    __slots__ = ("_channel", "_closed", "_host", "_lent", "_path", "_port", "_ssl", "address")

    def __init__(
        self, address: str, ssl: _ssl.SSLContext | None, *, channel: Channel | None = None
    ) -> None:
        """``channel``: one opened elsewhere (``grpclib.testing.ChannelFor``, for the
        in-memory harness ``snakebridge_server.testing``), used instead of connecting to
        ``address``; its owner closes it, so ``close()`` only stops using it."""
        self.address = address
        self._host, self._port, self._path = parse_address(address)
        if ssl is not None:
            ssl.set_alpn_protocols(["h2"])  # gRPC is HTTP/2; TLS servers may insist on ALPN
        self._ssl = ssl
        self._lent = channel
        self._channel: Channel | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called: every RPC raises ``ClientClosed``."""
        return self._closed

    @property
    def connected(self) -> bool:
        """True while a channel is open (it is opened by the first RPC)."""
        return self._channel is not None

    def _ensure_channel(self, method: str, cid: str | None) -> Channel:
        channel = self._channel
        if channel is not None:
            return channel
        if self._closed:
            raise _tagged(
                ClientClosed(f"{method} on a closed Client ({self.address}); make a new one"),
                cid,
            )
        if self._lent is not None:
            self._channel = self._lent
            return self._lent
        # grpclib's connection window equals one stream's (4 MiB), so one stream the app
        # is not reading would stall every other reply on this client. Each stream stays
        # bounded by its own 4 MiB window.
        config = Configuration(http2_connection_window_size=_CONNECTION_WINDOW)
        if self._path is not None:
            channel = Channel(path=self._path, ssl=self._ssl, config=config)
        else:
            channel = Channel(self._host, self._port, ssl=self._ssl, config=config)
        self._channel = channel
        return channel

    def close(self, *, for_good: bool = True) -> None:
        """Close the channel; ``for_good`` also refuses every later RPC (else the next
        one opens a new channel). Never raises for a broken connection: after the server
        died there is nothing left to close."""
        self._closed = self._closed or for_good
        channel, self._channel = self._channel, None
        if channel is None or channel is self._lent:
            return
        try:
            channel.close()
        except Exception as exc:
            if not is_transport_failure(exc):
                raise

    def connection_failed(self, method: str, exc: BaseException) -> ConnectionFailed:
        """The ``ConnectionFailed`` for transport failure ``exc`` under ``method``."""
        raw = f"{type(exc).__name__}: {exc}".rstrip(": ")
        closed = isinstance(exc, StreamTerminatedError) or not isinstance(exc, _TRANSPORT_ERRORS)
        if closed:
            raw = f"the connection closed ({raw})"
        message = f"{method} to {self.address} failed: {raw}"
        if closed and ("GOAWAY" in raw or _received_goaway(self._channel)):
            # The server spoke HTTP/2 and sent GOAWAY: not a TLS server dropping us.
            message += (
                "; the server ended the connection (HTTP/2 GOAWAY): it may be at its "
                "--max-connections limit, shutting down, or closing an idle connection; retry"
            )
        elif self._ssl is None and closed:
            # A TLS server drops a plaintext client's HTTP/2 preface without a word.
            message += " (if the server serves TLS, pass Client(..., ssl=ssl_context))"
        return ConnectionFailed(message)

    async def unary(
        self,
        method: str,
        request: Any,
        req_type: type[Any],
        reply_type: type[_Reply],
        timeout: float | None,
        metadata: CallMetadata,
        what: str = "",
    ) -> _Reply:
        """One unary RPC: ``request`` in, the reply message out, failures mapped.
        ``what`` names the call in a timeout's message (default: the method)."""
        headers, cid = metadata
        channel = self._ensure_channel(method, cid)
        message = timed_out(what or method, timeout)
        with RpcErrors(self, method, cid, message) as rpc:
            rpc.stream = stream = channel.request(
                SERVICE + method,
                Cardinality.UNARY_UNARY,
                req_type,
                reply_type,
                timeout=timeout,
                metadata=headers,
            )
            async with stream:
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
                await stream.recv_trailing_metadata()
        rpc.raise_pending()
        if reply is None:
            raise BridgeError(f"{method}: the server sent no reply message")
        return reply

    async def server_stream(
        self,
        method: str,
        request: Any,
        req_type: type[Any],
        reply_type: type[_Reply],
        timeout: float | None,
        metadata: Callable[[], CallMetadata],
        items_of: Callable[[_Reply], Iterable[Any]],
        what: str = "the stream",
    ) -> AsyncIterator[Any]:
        """One server-streaming RPC, as the items ``items_of`` finds in each reply.

        ``metadata`` is asked when iteration starts (where the RPC is made). ``timeout``
        bounds the whole iteration and is checked before each item, not only while a
        reply is awaited. Leaving early resets the stream.
        """
        headers, cid = metadata()
        channel = self._ensure_channel(method, cid)
        message = timed_out(what, timeout)
        with RpcErrors(self, method, cid, message) as rpc:
            rpc.stream = stream = channel.request(
                SERVICE + method,
                Cardinality.UNARY_STREAM,
                req_type,
                reply_type,
                timeout=timeout,
                metadata=headers,
            )
            async with stream:
                await stream.send_message(request, end=True)
                if timeout is None:
                    while (reply := await stream.recv_message()) is not None:
                        for item in items_of(reply):
                            yield item
                else:
                    # grpclib checks the deadline only while it waits for a reply; a reply
                    # holds up to 8192 items, which a slow consumer may take seconds to
                    # drain. Check it again each time the consumer asks for an item.
                    clock = time.monotonic
                    deadline = clock() + timeout
                    while (reply := await stream.recv_message()) is not None:
                        for item in items_of(reply):
                            if clock() >= deadline:
                                # Raised inside the request: grpclib resets the stream on
                                # the way out, so the server closes the generator.
                                raise TimeoutError
                            yield item
                await stream.recv_trailing_metadata()
        rpc.raise_pending()

    async def bidi(
        self,
        method: str,
        req_type: type[Any],
        reply_type: type[_Reply],
        metadata: CallMetadata,
        next_request: Callable[[], Awaitable[Any]],
        on_reply: Callable[[_Reply], None],
    ) -> None:
        """One bidirectional RPC: sends what ``next_request`` returns until it returns None
        (then half-closes), hands each reply to ``on_reply``, and returns when the server
        ends the stream with OK; any other end raises the mapped error. Cancelling it
        resets the stream."""
        headers, cid = metadata
        channel = self._ensure_channel(method, cid)
        with RpcErrors(self, method, cid, f"{method} did not finish within its deadline") as rpc:
            rpc.stream = stream = channel.request(
                SERVICE + method,
                Cardinality.STREAM_STREAM,
                req_type,
                reply_type,
                metadata=headers,
            )
            async with stream:
                await stream.send_request()

                async def send_all() -> None:
                    while (request := await next_request()) is not None:
                        await stream.send_message(request)
                    await stream.end()

                async def receive_all() -> None:
                    while (reply := await stream.recv_message()) is not None:
                        on_reply(reply)
                    await stream.recv_trailing_metadata()

                loop = asyncio.get_running_loop()
                sender, receiver = loop.create_task(send_all()), loop.create_task(receive_all())
                try:
                    await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
                    if sender.done() and sender.exception() is None:
                        await receiver  # half-closed: the server answers what is running
                    for task in (receiver, sender):
                        if task.done():
                            task.result()  # raises the first failure
                finally:
                    for task in (sender, receiver):
                        task.cancel()
                    await asyncio.wait({sender, receiver})
        rpc.raise_pending()
