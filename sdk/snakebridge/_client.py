"""The async client: the Runtime API, sessions and the ``Client`` lifecycle, on top of
``_transport`` (which owns the channel and maps its failures). Runs in the client process.

Every ``Call`` RPC is described by one ``Invocation``, built by keyword, and turned into
its wire message in one place (``Client._request``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import os
import secrets
import ssl as _ssl
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import _correlation, _current
from ._defaults import CallDefaults, check_affinity, retry_delay
from ._exchange import CallExchange
from ._gc_release import GcReleaser
from ._refs import Ref, StreamRef
from ._transport import CallMetadata, Transport
from .errors import BridgeError, LimitExceeded, ProtocolMismatch
from .wire import codec
from .wire.constants import (
    CORRELATION_METADATA,
    DEFAULT_HOST,
    DEFAULT_PORT,
    KIND_CLASS,
    KIND_FUNCTION,
    KIND_HELPER,
    KIND_METHOD,
    KIND_MODULE_ATTR,
    KIND_NAMES,
    PROTOCOL_VERSION,
)
from .wire.messages import CallReplyWire, CallRequestWire, StreamBatchWire, StreamRequestWire
from .wire.pb import v1 as pb
from .wire.text import call_label

if TYPE_CHECKING:
    from .codegen.model import ModuleInfo

__all__ = ["Client", "ModuleProxy", "RemoteStream", "Session"]

_ADDRESS_ENV: Final = "SNAKEBRIDGE_ADDRESS"
_T = TypeVar("_T")


# Not frozen: a frozen dataclass pays object.__setattr__ per field, 3.6 us against 1.2 us
# to build one (measured), on every call. Nothing changes an Invocation once built.
@dataclass(slots=True, kw_only=True)
class Invocation:
    """One ``Call`` RPC as the Runtime API asks for it, before encoding: keyword-only, so
    no two of its fields can trade places. ``Client._request`` turns it into the wire
    message (and validates ``args``, ``kwargs``, ``affinity`` and ``timeout``)."""

    kind: int  # wire.constants.KIND_*
    module: str  # "" for methods, helpers and dotted paths
    name: str  # function, class, method, attribute or helper name (may be dotted)
    session_id: str
    args: Sequence[Any] | None  # None with kwargs None: no arguments at all (attributes)
    kwargs: Mapping[str, Any] | None
    target_ref: str = ""  # the ref a method runs on
    pool: str | None = None
    timeout: float | None = None  # None: the client's default
    idempotent: bool = False
    affinity: str | None = None


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
            Invocation(
                kind=KIND_FUNCTION, module=module, name=function,
                session_id=self._session_id(session), args=args, kwargs=kwargs,
                pool=pool, timeout=timeout, idempotent=idempotent, affinity=affinity,
            )
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
            Invocation(
                kind=KIND_CLASS, module=module, name=cls,
                session_id=self._session_id(session), args=args, kwargs=kwargs,
                pool=pool, timeout=timeout, affinity=affinity,
            )
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
            Invocation(
                kind=KIND_METHOD, module="", name=method, target_ref=_ref_id(ref),
                session_id=_ref_session(ref, session), args=args, kwargs=kwargs,
                timeout=timeout,
            )
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
            Invocation(
                kind=KIND_MODULE_ATTR, module=module, name=name,
                session_id=self._session_id(session), args=None, kwargs=None,
                pool=pool, timeout=timeout,
            )
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
        affinity: str | None = None,
    ) -> Any:
        """Call a helper the server operator registered (``bridge-server --helpers``)."""
        return await self._client._invoke(
            Invocation(
                kind=KIND_HELPER, module="", name=name,
                session_id=self._session_id(session), args=args, kwargs=kwargs,
                pool=pool, timeout=timeout, idempotent=idempotent, affinity=affinity,
            )
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
        affinity: str | None = None,
    ) -> RemoteStream:
        """Iterate a remote iterable: ``async for item in client.stream("mod", "gen", [..])``.

        ``stream(ref)`` iterates a ``StreamRef`` (or any ref to an iterable) and
        ``stream(ref, "method", [...])`` the result of a method on it. Sync and async
        generators both work. Items arrive in batches over one server-streaming RPC; the
        worker produces only while you consume. Leaving the loop early (or the ``async
        with`` block) closes the remote generator: its ``finally`` blocks run.
        ``timeout`` bounds the whole iteration: once it has passed, asking for the next
        item raises ``CallTimeout`` even if items are buffered locally (the client's and
        ``defaults()``' timeouts do not apply to streams). ``affinity`` places the stream
        as it places a call.
        """
        call, timeout = self._stream_request(
            module_or_ref, function, args, kwargs,
            session=session, pool=pool, timeout=timeout, affinity=affinity,
        )  # fmt: skip
        return RemoteStream(self._client, call, timeout)

    def _stream_request(
        self,
        module_or_ref: str | Ref,
        function: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        *,
        session: str | Session | None,
        pool: str | None,
        timeout: float | None,
        affinity: str | None = None,
    ) -> tuple[CallRequestWire, float | None]:
        """The ``Stream`` RPC's call for ``stream()`` (and ``SyncClient.stream``), and its
        checked timeout; raises for what the server would refuse anyway."""
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
            Invocation(
                kind=kind, module=module, name=function, target_ref=target,
                session_id=session_id, args=args, kwargs=kwargs, pool=pool, timeout=timeout,
                affinity=affinity,
            )
        )  # fmt: skip
        # Only an explicit timeout bounds a stream: the client's per-call default would
        # cut long iterations short.
        call.timeout = timeout or 0.0
        return call, timeout

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


def _what(req: CallRequestWire) -> str:
    """How a timeout names the call: ``call math.sqrt``, ``method most_common``."""
    return call_label(KIND_NAMES.get(req.kind, ""), req.module, req.name)


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
    most 1 GiB (docs/wire.md, section 3.5). With ``release_on_gc`` (the default), a
    ``Ref`` or ``StreamRef`` Python garbage-collects is released on the server within
    about a second, in batches, by a background task of the client (``False``: refs live
    until released or their session ends). Use as ``async with Client(...) as client:``;
    leaving releases the auto session and closes the client. Inside the block the client is
    the task's current client, which generated bindings call through (docs/codegen.md). A
    client opens its connection on first use (``connect()``, which ``async with`` calls,
    also checks the protocol version); once closed, every RPC through it raises
    ``ClientClosed``: it never reconnects.

    ``batching`` (default True) sends ``call``, ``call_class``, ``call_method``,
    ``call_helper`` and ``get_module_attr`` over one long-lived ``Exchange`` stream instead
    of one unary ``Call`` RPC each (``batching=False``): the calls ready in the same loop
    iteration leave as one message and results come back as each finishes (docs/wire.md,
    Exchange). Every per-call behaviour stays
    (timeouts, cancelling one call, error classes, idempotent retry, affinity,
    correlation ids); it is much faster with many calls in flight (docs/performance.md).
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
        release_on_gc: bool = True,
        batching: bool = True,
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
        #: otherwise; None: the client makes one per RPC.
        self.correlation_id = _correlation.check_correlation_id(correlation_id)
        self._cid_prefix = f"sbc-{secrets.token_hex(4)}-"
        self._cid_counter = itertools.count(1)
        self._transport = Transport(self.address, ssl)
        self._metadata = {"authorization": f"Bearer {token}"} if token else None
        self.timeout = _check_timeout(timeout)
        # What the innermost ``defaults()`` block of this task or thread set (None: none).
        self._defaults: contextvars.ContextVar[CallDefaults | None] = contextvars.ContextVar(
            "snakebridge_call_defaults", default=None
        )
        self._auto_session: str | None = None
        # Refs this client garbage-collects are released remotely, in batches, by a
        # background task it owns (``_gc_release``); None: left to their sessions.
        self._gc = GcReleaser(self._release_collected) if release_on_gc else None
        self._client = self
        self.server_version: str | None = None
        #: ``batching=True``: calls go over one ``Exchange`` stream (micro-batched).
        self._exchange = CallExchange(self._transport, self._stream_metadata) if batching else None
        self._current_tokens: list[Any] = []  # contextvars tokens of open 'async with'

    @classmethod
    def over_channel(cls, channel: Any, address: str = "in-memory", **options: Any) -> Client:
        """A client whose RPCs go through ``channel``, a grpclib ``Channel`` opened and
        closed by its owner, not a connection of its own: for tests that serve the
        bridge in memory (``grpclib.testing.ChannelFor``, as ``serve_in_memory`` in
        ``snakebridge_server.testing`` does). ``address`` only names it in messages;
        ``options`` are ``Client``'s keyword arguments."""
        client = cls(address, **options)
        client._transport = Transport(address, None, channel=channel)
        if client._exchange is not None:
            client._exchange = CallExchange(client._transport, client._stream_metadata)
        return client

    def __repr__(self) -> str:
        return f"<Client {self.address}>"

    def _stream_metadata(self) -> CallMetadata:
        """The metadata of an ``Exchange`` stream, asked when one opens: authorization only
        (each call carries its own correlation id)."""
        return self._metadata, None

    def _call_metadata(self, deadline: bool = False) -> CallMetadata:
        """The metadata of one RPC, and the correlation id in it: the caller's; else,
        for an RPC with a client-side ``deadline``, one this client makes
        (``sbc-<random>-<n>``), so that a timeout raised on the client names the id the
        server logged; else none (the server makes one: an extra header costs about
        20-40 µs of hpack per RPC, measured on a 2-core VM)."""
        cid = _correlation.current() or self.correlation_id
        if cid is None:
            if not deadline:
                return self._metadata, None
            cid = self._new_cid()
        return {**(self._metadata or {}), CORRELATION_METADATA: cid}, cid

    def _new_cid(self) -> str:
        """A correlation id this client makes (``sbc-<random>-<n>``)."""
        return f"{self._cid_prefix}{next(self._cid_counter)}"

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        try:
            await self.connect()
        except BaseException:
            # Closes the channel, not the client: the caller never had it, so entering
            # again (a retry loop on one Client) tries afresh, as it always did.
            await self._shut(for_good=False)
            raise
        # The current client of this task for generated bindings, until the block ends.
        self._current_tokens.append(_current.enter(self))
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._current_tokens:
            _current.leave(self._current_tokens.pop())
        await self.close()

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
        """Release the auto session (best effort) and close the connection, for good:
        every later RPC raises ``ClientClosed``. Calling it again does nothing.

        Never raises for a broken connection: after the server died there is nothing
        left to close, which is what closing asks for.
        """
        await self._shut(for_good=True)

    async def _shut(self, *, for_good: bool) -> None:
        if self._gc is not None:
            await self._gc.close()
        try:
            if self._auto_session is not None and self._transport.connected:
                session, self._auto_session = self._auto_session, None
                await asyncio.shield(self._release_quietly(session))
        finally:
            if self._exchange is not None:
                await self._exchange.close()
                if not for_good:
                    self._exchange = CallExchange(self._transport, self._stream_metadata)
            self._transport.close(for_good=for_good)

    async def _release_quietly(self, session_id: str) -> None:
        try:
            await self.release_session(session_id, timeout=5.0)
        except (TimeoutError, BridgeError):
            pass

    # -- sessions -----------------------------------------------------------------------

    def _session_id(self, session: str | Session | None) -> str:
        if session is not None:
            return _session_value(session)
        defaults = self._defaults.get()
        if defaults is not None and defaults.session is not None:
            return defaults.session
        return self.current_session()

    @contextlib.contextmanager
    def defaults(
        self,
        *,
        timeout: float | None = None,
        pool: str | None = None,
        session: str | Session | None = None,
        affinity: str | None = None,
    ) -> Iterator[CallDefaults]:
        """Defaults for the calls made inside the ``with`` block, by this task (or
        thread) and the tasks it starts there: ``with client.defaults(timeout=5,
        pool="gpu"):``. An argument of the call itself wins; what the block leaves None
        comes from an enclosing block, then from the client. ``session`` is used by the
        client's own methods (a ``Session``'s calls stay in that session); ``timeout`` does
        not bound streams (only ``stream(timeout=)`` does)."""
        scoped = CallDefaults(
            timeout=_check_timeout(timeout),
            pool=pool,
            session=None if session is None else _session_value(session),
            affinity=check_affinity(affinity),
        ).over(self._defaults.get())
        token = self._defaults.set(scoped)
        try:
            yield scoped
        finally:
            self._defaults.reset(token)

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

    async def introspect(
        self,
        module: str,
        *,
        names: Sequence[str] = (),
        submodules: Sequence[str] = (),
        pool: str | None = None,
        timeout: float | None = 60.0,
        version_only: bool = False,
    ) -> ModuleInfo:
        """Describe ``module`` as a worker of ``pool`` sees it (under its sandbox and call
        policy): its functions, classes and constants (only ``names``, if given) and
        ``submodules`` (relative names), for ``snakebridge generate``. An unknown module or
        name raises ``RemoteError`` (``ModuleNotFoundError``, ``AttributeError``)."""
        from .codegen.model import module_info

        req = pb.IntrospectRequest(
            protocol_version=PROTOCOL_VERSION,
            module=module,
            names=list(names),
            submodules=list(submodules),
            pool=pool or "",
            timeout=_check_timeout(timeout) or 0.0,
            version_only=version_only,
        )
        reply: pb.IntrospectReply = await self._unary(
            "Introspect", req, pb.IntrospectRequest, pb.IntrospectReply, timeout
        )
        raw = codec.decode(reply.description, limits=self._limits)
        try:
            return module_info(raw)
        except ValueError as exc:
            raise ProtocolMismatch(f"a malformed module description: {exc}") from None

    # -- plumbing -----------------------------------------------------------------------

    def _effective_timeout(self, timeout: float | None) -> float | None:
        """The per-call timeout, else the ``defaults()`` block's, else the client's;
        validated."""
        if timeout is None:
            defaults = self._defaults.get()
            timeout = (
                self.timeout if defaults is None or defaults.timeout is None else (defaults.timeout)
            )
        return _check_timeout(timeout)

    def _make_ref(self, payload: codec.RefPayload) -> Ref:
        ref = (StreamRef if payload.stream else Ref)(payload, self)
        return ref if self._gc is None else self._gc.adopt(ref)

    async def _release_collected(self, session_id: str, ref_ids: list[str]) -> int:
        """One ``ReleaseRef`` for refs the client garbage-collected (``_gc_release``)."""
        req = pb.ReleaseRefRequest(
            protocol_version=PROTOCOL_VERSION, ref_ids=ref_ids, session_id=session_id
        )
        reply = await self._unary("ReleaseRef", req, pb.ReleaseRefRequest, pb.ReleaseRefReply, 10.0)
        return int(reply.released)

    def _decode(self, data: bytes) -> Any:
        return codec.decode(data, limits=self._limits, ref_factory=self._make_ref)

    async def _invoke(self, invocation: Invocation) -> Any:
        """Send one ``Call`` (on the ``Exchange`` stream with ``batching=True``) and decode
        its result."""
        req = self._request(invocation)
        if invocation.idempotent:
            return self._decode(await self._retrying(req))
        try:
            result = await self._send_call(req)
        except LimitExceeded:
            # Over a ref cap while refs we dropped wait to be released: release them now
            # and try once more.
            if self._gc is None or not await self._gc.flush():
                raise
            result = await self._send_call(req)
        return self._decode(result)

    async def _send_call(self, req: CallRequestWire) -> bytes:
        """One call, its result bytes: on the ``Exchange`` stream (``batching=True``), else
        one unary ``Call`` RPC."""
        if self._exchange is not None:
            cid = _correlation.current() or self.correlation_id
            if cid is None and req.timeout:
                cid = self._new_cid()  # so that a client-side timeout names the server's id
            return await self._exchange.call(req, cid, req.timeout or None, _what(req))
        reply = await self._unary(
            "Call", req, CallRequestWire, CallReplyWire, req.timeout or None, _what(req)
        )
        return reply.result

    async def _retrying(self, req: CallRequestWire) -> bytes:
        """An idempotent call, retried after a retryable error on the schedule of
        ``_defaults.RETRY_BACKOFF``, within its timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.timeout if req.timeout else None
        attempt = 0
        while True:
            try:
                return await self._send_call(req)
            except BridgeError as exc:
                attempt += 1
                delay = retry_delay(attempt, exc)
                if delay is None:
                    raise
                if deadline is not None:
                    left = deadline - loop.time() - delay
                    if left <= 0:
                        raise
                    req.timeout = left
            await asyncio.sleep(delay)

    def _request(self, invocation: Invocation) -> CallRequestWire:
        """The wire message of ``invocation``; raises ``TypeError``/``ValueError`` (and
        ``SerializationError``) for what the server would refuse anyway."""
        args, kwargs, affinity = invocation.args, invocation.kwargs, invocation.affinity
        ref_ids: list[str] = []
        if args is None and kwargs is None:
            encoded = b""
        else:
            if isinstance(args, str | bytes) or not isinstance(args, Sequence):
                raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
            if kwargs is not None and not all(isinstance(k, str) for k in kwargs):
                raise TypeError("kwargs keys must be strings")
            encoded = codec.encode([list(args), dict(kwargs or {})], ref_ids=ref_ids)
        pool, timeout = invocation.pool, invocation.timeout
        defaults = self._defaults.get()
        if defaults is not None:  # inside a ``defaults()`` block
            pool = pool or defaults.pool
            affinity = defaults.affinity if affinity is None else affinity
            timeout = defaults.timeout if timeout is None else timeout
        if affinity:
            check_affinity(affinity)
        timeout = _check_timeout(self.timeout if timeout is None else timeout)
        return CallRequestWire(
            protocol_version=PROTOCOL_VERSION,
            kind=invocation.kind,
            module=invocation.module,
            name=invocation.name,
            session_id=invocation.session_id,
            target_ref=invocation.target_ref,
            args=encoded,
            arg_refs=ref_ids,
            timeout=timeout or 0.0,
            idempotent=invocation.idempotent,
            pool=pool or "",
            affinity=affinity or "",
        )

    def _stream_items(self, call: CallRequestWire, timeout: float | None) -> AsyncIterator[Any]:
        """The items of one ``Stream`` RPC; the RPC starts when iteration does."""
        decode = self._decode

        def items_of(batch: StreamBatchWire) -> Any:  # a list: codec.decode is untyped
            return decode(batch.result)

        return self._server_stream(call, timeout, items_of)

    def _stream_batches(
        self, call: CallRequestWire, timeout: float | None
    ) -> AsyncIterator[list[Any]]:
        """The batches of one ``Stream`` RPC, each a list of items (``SyncClient`` takes a
        batch per hop to its loop thread, not an item)."""
        decode = self._decode

        def batch_of(batch: StreamBatchWire) -> list[Any]:
            return [decode(batch.result)]

        return self._server_stream(call, timeout, batch_of)

    def _server_stream(
        self,
        call: CallRequestWire,
        timeout: float | None,
        items_of: Callable[[StreamBatchWire], Iterable[Any]],
    ) -> AsyncIterator[Any]:
        return self._transport.server_stream(
            "Stream",
            StreamRequestWire(protocol_version=PROTOCOL_VERSION, call=call),
            StreamRequestWire,
            StreamBatchWire,
            timeout,
            lambda: self._call_metadata(bool(timeout)),
            items_of,
            f"the stream of {_what(call)}",
        )

    def _unary(
        self, method: str, request: Any, req_type: type[Any], reply_type: type[_T],
        timeout: float | None, what: str = "",
    ) -> Coroutine[Any, Any, _T]:  # fmt: skip
        """One unary RPC with this client's metadata (a plain function returning the
        transport's coroutine: no extra frame per call); ``what`` names the call in a
        timeout's message."""
        return self._transport.unary(
            method,
            request,
            req_type,
            reply_type,
            timeout,
            self._call_metadata(bool(timeout)),
            what,
        )
