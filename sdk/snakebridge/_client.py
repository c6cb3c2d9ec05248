"""The async client: the Runtime API over one grpclib channel."""

from __future__ import annotations

import asyncio
import os
import ssl as _ssl
import time
import uuid
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.metadata import decode_metadata
from h2.exceptions import H2Error

from . import _correlation
from ._refs import Ref, StreamRef
from .errors import (
    BridgeError,
    CallCancelled,
    CallTimeout,
    ConnectionFailed,
    ProtocolMismatch,
    Unauthenticated,
)
from .wire import codec, trailer
from .wire.constants import (
    AFFINITY_STRICT,
    CORRELATION_METADATA,
    DEFAULT_HOST,
    DEFAULT_PORT,
    KIND_CLASS,
    KIND_FUNCTION,
    KIND_HELPER,
    KIND_METHOD,
    KIND_MODULE_ATTR,
    PROTOCOL_VERSION,
    SERVICE,
)
from .wire.h2_repr import use_cheap_data_frame_repr
from .wire.messages import CallReplyWire, CallRequestWire, StreamBatchWire, StreamRequestWire
from .wire.pb import v1 as pb

use_cheap_data_frame_repr()

__all__ = ["Client", "ModuleProxy", "RemoteStream", "Session"]

_ADDRESS_ENV: Final = "SNAKEBRIDGE_ADDRESS"
_CONNECTION_WINDOW: Final = 1 << 30
_T = TypeVar("_T")

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


def _is_transport_failure(exc: BaseException) -> bool:
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


class _RpcErrors:
    """Maps whatever escapes one RPC to the SDK's errors: the one place that knows what
    grpclib and the layers under it raise.

    ``GRPCError`` becomes the class the error trailer names, grpclib's deadline
    ``CallTimeout``, every transport failure ``ConnectionFailed`` (with the address, the
    method and the raw exception as ``__cause__``), grpclib's ``ProtocolError`` a plain
    ``BridgeError``. All carry the RPC's correlation id. ``BridgeError`` and every
    ``BaseException`` that is not an ``Exception`` (``CancelledError``, ``GeneratorExit``)
    pass through untouched, as does anything else (an SDK bug shows as itself).
    """

    __slots__ = ("_cid", "_client", "_method", "_timeout_message", "stream")

    def __init__(self, client: Client, method: str, cid: str | None, timeout_message: str) -> None:
        self._client = client
        self._method = method
        self._cid = cid
        self._timeout_message = timeout_message
        #: The grpclib stream, once opened: its trailers name the error class.
        self.stream: Any = None

    def __enter__(self) -> _RpcErrors:
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, BridgeError) or not isinstance(exc, Exception):
            return
        error: BridgeError
        if isinstance(exc, GRPCError):
            # Also raised on the way out (e.g. the server refused a request it did not
            # read and reset the stream while we were still sending it).
            raise _error_from_grpc(exc, _trailers_of(self.stream), self._cid) from None
        if _is_transport_failure(exc):
            error = self._client._connection_failed(self._method, exc)
        elif isinstance(exc, TimeoutError):
            raise _tagged(CallTimeout(self._timeout_message), self._cid) from None
        elif isinstance(exc, ProtocolError):
            error = BridgeError(f"{self._method}: gRPC protocol error: {exc}")
        else:
            return
        raise _tagged(error, self._cid) from exc


def _trailers_of(stream: Any) -> Mapping[str, Any] | None:
    """The status trailers of a finished client stream, decoded. When grpclib raises from
    a reset stream it reads the raw trailers-only HEADERS itself and never fills
    ``trailing_metadata``, so decode them here (grpclib is pinned: see pyproject)."""
    if stream is None:
        return None
    if stream.trailing_metadata is not None:
        return stream.trailing_metadata  # type: ignore[no-any-return]
    h2 = getattr(stream, "_stream", None)
    raw = getattr(h2, "trailers", None) or getattr(h2, "headers", None)
    return decode_metadata(raw) if raw else None


@dataclass(frozen=True, slots=True)
class HelperInfo:
    """A helper the server exposes to ``call_helper``, as ``Client.helpers()`` lists it."""

    name: str
    signature: str  # e.g. "(a: int, b: int) -> int"; "" when the callable has none
    doc: str  # its docstring, cut to 2048 characters; "" when it has none


class _Runtime:
    """The Runtime API, shared by ``Client`` (auto session) and ``Session``."""

    _client: Client

    def _session_id(self, session: str | Session | None) -> str:
        raise NotImplementedError

    async def call(
        self,
        module: str,
        function: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        session: str | Session | None = None,
        pool: str | None = None,
        timeout: float | None = None,
        idempotent: bool = False,
        affinity: str | None = None,
    ) -> Any:
        """``module.function(*args, **kwargs)`` in a worker; returns the decoded result.

        ``function`` may be dotted (``"Path.home"``). Unencodable results come back as
        ``Ref``s in place; iterators as ``StreamRef``s.
        """
        return await self._client._invoke(
            KIND_FUNCTION, module, function, "", args, kwargs,
            self._session_id(session), pool, timeout, idempotent, affinity,
        )  # fmt: skip

    async def call_dynamic(
        self,
        path: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """``call`` with one dotted path: ``call_dynamic("os.path.join", ["a", "b"])``."""
        return await self.call("", path, args, kwargs, **options)

    async def call_class(
        self,
        module: str,
        cls: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        session: str | Session | None = None,
        pool: str | None = None,
        timeout: float | None = None,
        affinity: str | None = None,
    ) -> Ref:
        """Instantiate ``module.cls(*args, **kwargs)``; always returns a ``Ref``."""
        ref: Ref = await self._client._invoke(
            KIND_CLASS, module, cls, "", args, kwargs,
            self._session_id(session), pool, timeout, False, affinity,
        )  # fmt: skip
        return ref

    async def call_method(
        self,
        ref: Ref,
        method: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        session: str | Session | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``ref.method(*args, **kwargs)`` in the worker that holds ``ref``.

        (No ``idempotent=``: a method call depends on its worker's object, so it is never
        retried elsewhere after a crash; it fails with ``SessionLost`` instead.)
        """
        return await self._client._invoke(
            KIND_METHOD, "", method, _ref_id(ref), args, kwargs,
            _ref_session(ref, session), None, timeout, False, None,
        )  # fmt: skip

    async def get_attr(
        self, ref: Ref, name: str, *, session: str | Session | None = None,
        timeout: float | None = None,
    ) -> Any:  # fmt: skip
        """``ref.name`` (may be dotted)."""
        timeout = self._client._effective_timeout(timeout)
        req = pb.GetAttrRequest(
            protocol_version=PROTOCOL_VERSION,
            target_ref=_ref_id(ref),
            name=name,
            session_id=_ref_session(ref, session),
            timeout=timeout or 0.0,
        )
        reply = await self._client._unary("GetAttr", req, pb.GetAttrRequest, CallReplyWire, timeout)
        return self._client._decode(reply.result)

    async def set_attr(
        self, ref: Ref, name: str, value: Any, *, session: str | Session | None = None,
        timeout: float | None = None,
    ) -> None:  # fmt: skip
        """``ref.name = value``."""
        timeout = self._client._effective_timeout(timeout)
        ref_ids: list[str] = []
        encoded = codec.encode(value, ref_ids=ref_ids)
        req = pb.SetAttrRequest(
            protocol_version=PROTOCOL_VERSION,
            target_ref=_ref_id(ref),
            name=name,
            value=encoded,
            arg_refs=ref_ids,
            session_id=_ref_session(ref, session),
            timeout=timeout or 0.0,
        )
        await self._client._unary("SetAttr", req, pb.SetAttrRequest, CallReplyWire, timeout)

    async def get_module_attr(
        self, module: str, name: str, *, session: str | Session | None = None,
        pool: str | None = None, timeout: float | None = None,
    ) -> Any:  # fmt: skip
        """``module.name`` without calling it."""
        return await self._client._invoke(
            KIND_MODULE_ATTR, module, name, "", None, None,
            self._session_id(session), pool, timeout, False, None,
        )  # fmt: skip

    async def call_helper(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        session: str | Session | None = None,
        pool: str | None = None,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """Call a helper the server operator registered (``bridge-server --helpers``)."""
        return await self._client._invoke(
            KIND_HELPER, "", name, "", args, kwargs,
            self._session_id(session), pool, timeout, idempotent, None,
        )  # fmt: skip

    def stream(
        self,
        module_or_ref: str | Ref,
        function: str = "",
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        session: str | Session | None = None,
        pool: str | None = None,
        timeout: float | None = None,
    ) -> RemoteStream:
        """Iterate a remote iterable: ``async for item in client.stream("mod", "gen", [..])``.

        ``stream(ref)`` iterates a ``StreamRef`` (or any ref to an iterable) and
        ``stream(ref, "method", [...])`` the result of a method on it. Sync and async
        generators both work. Items arrive in batches over one server-streaming RPC; the
        worker produces only while you consume. Leaving the loop early (or the ``async
        with`` block) closes the remote generator: its ``finally`` blocks run.
        ``timeout`` bounds the whole iteration: once it has passed, asking for the next
        item raises ``CallTimeout`` even if items are buffered locally.
        """
        timeout = _check_timeout(timeout)
        if isinstance(module_or_ref, Ref):
            kind, module, target = KIND_METHOD, "", _ref_id(module_or_ref)
            session_id = _ref_session(module_or_ref, session)
        elif isinstance(module_or_ref, str) and function:
            kind, module, target = KIND_FUNCTION, module_or_ref, ""
            session_id = self._session_id(session)
        else:
            raise TypeError("stream() takes (module, function, ...) or (ref[, method, ...])")
        call = self._client._request(
            kind, module, function, target, args, kwargs,
            session_id, pool, timeout, False, None,
        )  # fmt: skip
        # Only an explicit timeout bounds a stream: the client's per-call default would
        # cut long iterations short.
        call.timeout = timeout or 0.0
        return RemoteStream(self._client, call, timeout)

    async def stream_next(
        self, stream_ref: StreamRef, *, session: str | Session | None = None,
        timeout: float | None = None,
    ) -> Any:  # fmt: skip
        """The next item of ``stream_ref`` (one RPC); ``StopAsyncIteration`` when exhausted,
        like ``anext()``. An exhausted StreamRef is released on the server."""
        ref_id = _ref_id(stream_ref)
        req = pb.StreamNextRequest(
            protocol_version=PROTOCOL_VERSION,
            stream_ref=ref_id,
            session_id=_ref_session(stream_ref, session),
            timeout=self._client._effective_timeout(timeout) or 0.0,
        )
        reply = await self._client._unary(
            "StreamNext", req, pb.StreamNextRequest, pb.StreamNextReply, timeout
        )
        if reply.done:
            stream_ref._mark_released()
            raise StopAsyncIteration
        return self._client._decode(reply.item)

    async def stream_len(
        self, stream_ref: Ref, *, session: str | Session | None = None,
        timeout: float | None = None,
    ) -> int:  # fmt: skip
        """``len()`` of the remote object: the underlying iterable's length where it has
        one; a remote ``TypeError`` otherwise (generators have none)."""
        length: int = await self.call(
            "builtins", "len", [stream_ref], session=session, timeout=timeout
        )
        return length

    async def stream_dynamic(
        self,
        module: str,
        function: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        session: str | Session | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Iterate with one ``StreamNext`` RPC per item (the Runtime API's dynamic path).

        Correct but slow: prefer ``stream``, which batches. The function's result must be
        an iterator (a ``StreamRef``); a ref to an iterable is iterated via ``iter()``.
        """
        result = await self.call(module, function, args, kwargs, session=session, timeout=timeout)
        if isinstance(result, Ref) and not isinstance(result, StreamRef):
            result = await self.call("builtins", "iter", [result], session=session)
        if not isinstance(result, StreamRef):
            raise TypeError(
                f"{module}.{function} returned {type(result).__name__}, not an iterator"
            )
        while True:
            try:
                yield await self.stream_next(result, session=session, timeout=timeout)
            except StopAsyncIteration:
                return

    def module(self, name: str, **options: Any) -> ModuleProxy:
        """A proxy whose attributes are awaitable callables: ``await np.linalg.norm(x)``."""
        return ModuleProxy(self, name, "", options)


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return timeout


def _ref_id(ref: Ref) -> str:
    if not isinstance(ref, Ref):
        raise TypeError(f"expected a snakebridge Ref, got {type(ref).__name__}")
    ref._check()
    return ref.id


def _ref_session(ref: Ref, session: str | Session | None) -> str:
    """The session a call on ``ref`` runs in: the ref's own unless ``session`` names one.
    The server lets only the session that owns a ref use it."""
    return ref.session_id if session is None else _session_value(session)


class RemoteStream:
    """A running remote iteration: an async iterator and an async context manager.

    ``async with client.stream(...) as items: async for item in items: ...`` closes the
    remote generator deterministically on exit; a plain ``async for`` closes it when the
    loop is left (the iterator is finalized at once in CPython).
    """

    __slots__ = ("_items",)

    def __init__(self, client: Client, call: CallRequestWire, timeout: float | None) -> None:
        self._items = client._stream_items(call, timeout)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items

    async def __anext__(self) -> Any:
        return await self._items.__anext__()

    async def __aenter__(self) -> RemoteStream:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop iterating: the server closes the generator in the worker."""
        await self._items.aclose()  # type: ignore[attr-defined]


class ModuleProxy:
    """``client.module("numpy").linalg.norm`` -> an awaitable callable; awaiting an
    attribute without calling it fetches its value (``await client.module("math").pi``)."""

    __slots__ = ("_module", "_options", "_path", "_runtime")

    def __init__(self, runtime: _Runtime, module: str, path: str, options: dict[str, Any]):
        self._runtime = runtime
        self._module = module
        self._path = path
        self._options = options

    def __getattr__(self, name: str) -> ModuleProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        path = f"{self._path}.{name}" if self._path else name
        return ModuleProxy(self._runtime, self._module, path, self._options)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._path:
            raise TypeError(f"module {self._module!r} is not callable")
        return await self._runtime.call(self._module, self._path, args, kwargs, **self._options)

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._path:
            raise TypeError("await an attribute of the module, not the module itself")
        opts = {k: v for k, v in self._options.items() if k in ("session", "pool", "timeout")}
        return self._runtime.get_module_attr(self._module, self._path, **opts).__await__()

    def __repr__(self) -> str:
        return f"<ModuleProxy {self._module}{'.' + self._path if self._path else ''}>"


class Session(_Runtime):
    """An explicit session: refs created through it are freed together on exit."""

    def __init__(self, client: Client, session_id: str) -> None:
        self._client = client
        self.id = session_id

    def _session_id(self, session: str | Session | None) -> str:
        return self.id if session is None else _session_value(session)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client._release_quietly(self.id)

    async def release(self) -> int:
        return await self._client.release_session(self.id)

    def __repr__(self) -> str:
        return f"<Session {self.id}>"


def _session_value(session: str | Session) -> str:
    return session.id if isinstance(session, Session) else str(session)


class Client(_Runtime):
    """A connection to a ``bridge-server``.

    ``address`` is ``HOST:PORT`` or ``unix:///abs/path.sock``; it defaults to
    ``$SNAKEBRIDGE_ADDRESS``, then ``127.0.0.1:50051``. ``timeout`` is the default
    per-call timeout in seconds (None: the server's default). ``token`` is sent as
    ``authorization: Bearer`` metadata, for servers started with ``--token-file``;
    ``ssl`` is an ``ssl.SSLContext`` for a server started with ``--tls-cert`` (the client
    adds ALPN ``h2`` to it; load a client certificate into it for ``--tls-client-ca``).
    ``correlation_id`` is sent with every RPC (``snakebridge.correlation_id()`` blocks
    override it); without one the server makes an id per RPC. ``max_decoded_size`` bounds
    the memory a result or stream batch may decode into, in bytes: past it the call raises
    ``SerializationError`` before the memory is spent. None (the default) applies the
    limits the server applies to arguments: 32 MiB plus 16 bytes per received byte, at
    most 1 GiB (docs/wire.md, section 3.5). Use as ``async with Client(...) as client:``;
    leaving releases the auto session.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        max_decoded_size: int | None = None,
    ) -> None:
        self.address = address or os.environ.get(_ADDRESS_ENV) or f"{DEFAULT_HOST}:{DEFAULT_PORT}"
        # An explicit size replaces the ratio: how results are shaped is the remote
        # code's business, how much memory they may take is the caller's.
        self._limits = (
            codec.DEFAULT_LIMITS
            if max_decoded_size is None
            else codec.Limits(max_decoded_size=max_decoded_size, max_expansion=0)
        )
        #: Sent with every RPC unless a ``snakebridge.correlation_id()`` block says
        #: otherwise; None lets the server make one per RPC.
        self.correlation_id = _correlation.check_correlation_id(correlation_id)
        self._host, self._port, self._path = parse_address(self.address)
        if ssl is not None:
            ssl.set_alpn_protocols(["h2"])  # gRPC is HTTP/2; TLS servers may insist on ALPN
        self._ssl = ssl
        self._metadata = {"authorization": f"Bearer {token}"} if token else None
        self.timeout = _check_timeout(timeout)
        self._channel: Channel | None = None
        self._auto_session: str | None = None
        self._client = self
        self.server_version: str | None = None

    def __repr__(self) -> str:
        return f"<Client {self.address}>"

    def _call_metadata(self) -> tuple[dict[str, str] | None, str | None]:
        """The metadata of one RPC, and the correlation id in it."""
        cid = _correlation.current() or self.correlation_id
        if cid is None:
            return self._metadata, None
        return {**(self._metadata or {}), CORRELATION_METADATA: cid}, cid

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _ensure_channel(self) -> Channel:
        if self._channel is None:
            # grpclib's connection window equals one stream's (4 MiB), so one stream the
            # app is not reading would stall every other reply on this client. Each stream
            # stays bounded by its own 4 MiB window.
            config = Configuration(http2_connection_window_size=_CONNECTION_WINDOW)
            if self._path is not None:
                self._channel = Channel(path=self._path, ssl=self._ssl, config=config)
            else:
                self._channel = Channel(self._host, self._port, ssl=self._ssl, config=config)
        return self._channel

    async def connect(self) -> None:
        """Open the connection and check the server speaks our protocol version."""
        info = await self.describe()
        if info.protocol_version != PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"server speaks protocol {info.protocol_version}, "
                f"this SDK speaks {PROTOCOL_VERSION}; upgrade the older side"
            )
        self.server_version = info.server_version

    async def close(self) -> None:
        """Release the auto session (best effort) and close the connection.

        Never raises for a broken connection: after the server died there is nothing
        left to close, which is what closing asks for.
        """
        if self._channel is None:
            return
        try:
            if self._auto_session is not None:
                session, self._auto_session = self._auto_session, None
                await asyncio.shield(self._release_quietly(session))
        finally:
            channel, self._channel = self._channel, None
            try:
                channel.close()
            except Exception as exc:
                if not _is_transport_failure(exc):
                    raise

    async def _release_quietly(self, session_id: str) -> None:
        try:
            await self.release_session(session_id, timeout=5.0)
        except (TimeoutError, BridgeError):
            pass

    # -- sessions -----------------------------------------------------------------------

    def _session_id(self, session: str | Session | None) -> str:
        return self.current_session() if session is None else _session_value(session)

    def current_session(self) -> str:
        """The auto session's id, created on first use."""
        if self._auto_session is None:
            self._auto_session = uuid.uuid4().hex
        return self._auto_session

    def clear_auto_session(self) -> None:
        """Forget the auto session without releasing it; the next call starts a new one."""
        self._auto_session = None

    async def release_auto_session(self) -> int:
        """Release the auto session's refs on the server and start afresh."""
        if self._auto_session is None:
            return 0
        session, self._auto_session = self._auto_session, None
        return await self.release_session(session)

    def session(self, session_id: str | None = None) -> Session:
        """An explicit session, released when its ``async with`` block exits."""
        return Session(self, session_id or uuid.uuid4().hex)

    async def release_session(
        self, session_id: str | Session, *, timeout: float | None = None
    ) -> int:
        """Free every ref of the session on every worker; returns how many were freed."""
        req = pb.ReleaseSessionRequest(
            protocol_version=PROTOCOL_VERSION, session_id=_session_value(session_id)
        )
        reply = await self._unary(
            "ReleaseSession",
            req,
            pb.ReleaseSessionRequest,
            pb.ReleaseSessionReply,
            self._effective_timeout(timeout),
        )
        return int(reply.released_refs)

    async def release_ref(self, *refs: Ref, timeout: float | None = None) -> int:
        """Free remote objects. Released refs fail locally with ``RefNotFound`` afterwards."""
        live = [r for r in refs if isinstance(r, Ref) and not r.released]
        if len(live) != len(refs) and any(not isinstance(r, Ref) for r in refs):
            raise TypeError("release_ref takes Ref objects")
        if not live:
            return 0
        # The server frees a ref only for the session that owns it: one request per session.
        by_session: dict[str, list[Ref]] = {}
        for ref in live:
            by_session.setdefault(ref.session_id, []).append(ref)
        released = 0
        for session_id, group in by_session.items():
            req = pb.ReleaseRefRequest(
                protocol_version=PROTOCOL_VERSION,
                ref_ids=[r.id for r in group],
                session_id=session_id,
            )
            reply = await self._unary(
                "ReleaseRef",
                req,
                pb.ReleaseRefRequest,
                pb.ReleaseRefReply,
                self._effective_timeout(timeout),
            )
            for ref in group:
                ref._mark_released()
            released += int(reply.released)
        return released

    async def describe(self, *, timeout: float | None = 10.0) -> pb.DescribeReply:
        """Server version, protocol version, pools and their workers."""
        req = pb.DescribeRequest(protocol_version=PROTOCOL_VERSION)
        reply: pb.DescribeReply = await self._unary(
            "Describe", req, pb.DescribeRequest, pb.DescribeReply, _check_timeout(timeout)
        )
        return reply

    async def helpers(
        self, *, pool: str | None = None, timeout: float | None = 10.0
    ) -> list[HelperInfo]:
        """The helpers ``call_helper`` can reach in ``pool`` (default: the server's default
        pool), sorted by name."""
        req = pb.ListHelpersRequest(protocol_version=PROTOCOL_VERSION, pool=pool or "")
        reply: pb.ListHelpersReply = await self._unary(
            "ListHelpers", req, pb.ListHelpersRequest, pb.ListHelpersReply, _check_timeout(timeout)
        )
        return [HelperInfo(h.name, h.signature, h.doc) for h in reply.helpers]

    # -- plumbing -----------------------------------------------------------------------

    def _effective_timeout(self, timeout: float | None) -> float | None:
        """The per-call timeout, else the client's default; validated."""
        return _check_timeout(self.timeout if timeout is None else timeout)

    def _make_ref(self, payload: codec.RefPayload) -> Ref:
        return (StreamRef if payload.stream else Ref)(payload, self)

    def _decode(self, data: bytes) -> Any:
        return codec.decode(data, limits=self._limits, ref_factory=self._make_ref)

    async def _invoke(self, *fields: Any) -> Any:
        """Send one ``Call`` built by ``_request(*fields)`` and decode its result."""
        req = self._request(*fields)
        reply = await self._unary("Call", req, CallRequestWire, CallReplyWire, req.timeout or None)
        return self._decode(reply.result)

    def _request(
        self,
        kind: int,
        module: str,
        name: str,
        target_ref: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        session_id: str,
        pool: str | None,
        timeout: float | None,
        idempotent: bool,
        affinity: str | None,
    ) -> CallRequestWire:
        ref_ids: list[str] = []
        if args is None and kwargs is None:
            encoded = b""
        else:
            if isinstance(args, str | bytes) or not isinstance(args, Sequence):
                raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
            if kwargs is not None and not all(isinstance(k, str) for k in kwargs):
                raise TypeError("kwargs keys must be strings")
            encoded = codec.encode([list(args), dict(kwargs or {})], ref_ids=ref_ids)
        if affinity not in (None, "", AFFINITY_STRICT):
            raise ValueError(f"affinity must be None or 'strict', not {affinity!r}")
        timeout = self._effective_timeout(timeout)
        return CallRequestWire(
            protocol_version=PROTOCOL_VERSION,
            kind=kind,
            module=module,
            name=name,
            session_id=session_id,
            target_ref=target_ref,
            args=encoded,
            arg_refs=ref_ids,
            timeout=timeout or 0.0,
            idempotent=idempotent,
            pool=pool or "",
            affinity=affinity or "",
        )

    async def _stream_items(
        self, call: CallRequestWire, timeout: float | None
    ) -> AsyncIterator[Any]:
        channel = self._ensure_channel()
        req = StreamRequestWire(protocol_version=PROTOCOL_VERSION, call=call)
        decode = self._decode
        metadata, cid = self._call_metadata()
        with _RpcErrors(self, "Stream", cid, "the stream did not finish within its timeout") as rpc:
            rpc.stream = stream = channel.request(
                SERVICE + "Stream",
                Cardinality.UNARY_STREAM,
                StreamRequestWire,
                StreamBatchWire,
                timeout=timeout,
                metadata=metadata,
            )
            async with stream:
                await stream.send_message(req, end=True)
                if timeout is None:
                    while (batch := await stream.recv_message()) is not None:
                        for item in decode(batch.result):
                            yield item
                else:
                    # grpclib checks the deadline only while it waits for a batch; a batch
                    # holds up to 8192 items, which a slow consumer may take seconds to
                    # drain. Check it again each time the consumer asks for an item.
                    clock = time.monotonic
                    deadline = clock() + timeout
                    while (batch := await stream.recv_message()) is not None:
                        for item in decode(batch.result):
                            if clock() >= deadline:
                                # Raised inside the request: grpclib resets the stream on
                                # the way out, so the server closes the generator.
                                raise TimeoutError
                            yield item
                await stream.recv_trailing_metadata()

    def _connection_failed(self, method: str, exc: BaseException) -> ConnectionFailed:
        raw = f"{type(exc).__name__}: {exc}".rstrip(": ")
        closed = isinstance(exc, StreamTerminatedError) or not isinstance(exc, _TRANSPORT_ERRORS)
        if closed:
            raw = f"the connection closed ({raw})"
        message = f"{method} to {self.address} failed: {raw}"
        if self._ssl is None and closed:
            # A TLS server drops a plaintext client's HTTP/2 preface without a word.
            message += " (if the server serves TLS, pass Client(..., ssl=ssl_context))"
        return ConnectionFailed(message)

    async def _unary(
        self, method: str, request: Any, req_type: type[Any], reply_type: type[_T],
        timeout: float | None,
    ) -> _T:  # fmt: skip
        channel = self._ensure_channel()
        metadata, cid = self._call_metadata()
        with _RpcErrors(self, method, cid, f"{method} did not finish within {timeout}s") as rpc:
            rpc.stream = stream = channel.request(
                SERVICE + method,
                Cardinality.UNARY_UNARY,
                req_type,
                reply_type,
                timeout=timeout,
                metadata=metadata,
            )
            async with stream:
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
                await stream.recv_trailing_metadata()
        if reply is None:
            raise BridgeError(f"{method}: the server sent no reply message")
        return reply
