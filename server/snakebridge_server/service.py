"""The gRPC face of the bridge (grpclib handlers). Runs in the server.

Each method is decode → ``Bridge`` → encode: ``_guard`` reads the request message (bounded,
``grpc_server.recv_bounded``), hands it to the method, sends what the method returns, and
maps every ``BridgeError`` to a gRPC status plus the ``snakebridge-error-bin`` trailer in
one place. The hot messages are hand-encoded (``snakebridge.wire.messages``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from snakebridge import __version__
from snakebridge.errors import (
    BadRequest,
    BridgeError,
    CallCancelled,
    PoolUnavailable,
    RemoteError,
)
from snakebridge.wire import codec, trailer
from snakebridge.wire.constants import (
    CORRELATION_METADATA,
    KIND_GET_ATTR,
    KIND_NAMES,
    KIND_SET_ATTR,
    PROTOCOL_VERSION,
    SERVICE,
)
from snakebridge.wire.messages import (
    CallReplyWire,
    CallRequestWire,
    ExchangeReplyWire,
    ExchangeRequestWire,
    StreamBatchWire,
    StreamRequestWire,
    WireError,
)
from snakebridge.wire.pb import v1 as pb
from snakebridge.wire.text import clip

from .auth import TENANT, Identities
from .bridge import Bridge, check_protocol
from .exchange import ExchangeStream, serve_exchange
from .grpc_server import recv_bounded, stop_reading
from .logs import CALL, CallInfo, valid_correlation_id
from .metrics import Metrics, batch_items
from .snapshot import BridgeSnapshot

log = logging.getLogger("snakebridge.service")

_MAX_STATUS_MESSAGE = 2048
_ENVELOPE = 4 * 1024 * 1024  # names, ids and up to 10,000 arg_refs (see bridge.MAX_*)


def error_trailer(exc: BridgeError) -> dict[str, bytes]:
    info = CALL.get()
    return trailer.pack(exc, info.correlation_id if info is not None else None)


def size_advice(max_message_size: int) -> str:
    """What a client whose message is too large can do: raising ``--max-message-size``
    only helps below the codec's decode limit (64 MiB), its maximum."""
    if max_message_size < codec.DEFAULT_LIMITS.max_size:
        return "pass big values by ref or raise --max-message-size"
    return (
        f"pass big values by ref or in pieces ({max_message_size} bytes, the most "
        "--max-message-size allows, is already the limit)"
    )


def status_message(exc: BridgeError) -> str:
    """The human-readable ``grpc-message``: a remote error's type and message (its
    ``str()`` is the message alone), any other error's message."""
    if isinstance(exc, RemoteError) and exc.type_name:
        return f"{exc.type_name}: {exc.message}"
    return str(exc)


async def send_error(stream: Stream[Any, Any], exc: BridgeError) -> None:
    await stream.send_trailing_metadata(
        status=Status(int(exc.grpc_status)),
        status_message=clip(status_message(exc), _MAX_STATUS_MESSAGE),
        metadata=error_trailer(exc),
    )


Rpc = Callable[[Stream[Any, Any]], Awaitable[None]]
_Req = TypeVar("_Req")
_Rep = TypeVar("_Rep")
#: A server-streaming method's way to send one reply message.
Send = Callable[[_Rep], Awaitable[None]]


class BridgeService:
    """``snakebridge.v1.Bridge`` implemented over a ``Bridge``."""

    def __init__(self, bridge: Bridge, identities: Identities | None = None) -> None:
        """``identities`` tells tenants apart (``auth``); without it, one tenant."""
        self.bridge = bridge
        self.identities = identities or Identities()
        self.draining = False
        self._active: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._shut_down: set[asyncio.Task[Any]] = set()  # stragglers cancelled by drain()
        # Argument bytes plus the request's own (bounded) fields.
        self.max_request = bridge.config.max_message_size + _ENVELOPE
        self.size_advice = size_advice(bridge.config.max_message_size)
        self.metrics = Metrics() if bridge.config.metrics else None
        # Ids the server makes for calls that come without one: unique per run, cheap.
        self._cid_prefix = f"sb-{secrets.token_hex(4)}-"
        self._cid_seq = itertools.count(1)
        #: The open ``Exchange`` streams, which the drain ends once their calls are done.
        self.exchanges: set[ExchangeStream] = set()

    def _unary(
        self, fn: Callable[[_Req], Awaitable[_Rep]], request: type[_Req], reply: type[_Rep]
    ) -> Handler:
        return Handler(self._guard(fn, unary=True), Cardinality.UNARY_UNARY, request, reply)

    def _streaming(
        self,
        fn: Callable[[_Req, Send[_Rep]], Awaitable[None]],
        request: type[_Req],
        reply: type[_Rep],
    ) -> Handler:
        return Handler(self._guard(fn, unary=False), Cardinality.UNARY_STREAM, request, reply)

    def _guard(self, fn: Callable[..., Awaitable[Any]], *, unary: bool) -> Rpc:
        """The grpclib handler of a method: read its request, run it, send its reply (or,
        ``unary=False``, give it a way to send replies); map errors to statuses, refuse
        work while draining, and keep track of running handlers so a drain can wait."""

        rpc = fn.__name__  # the metrics "kind" until the request says better

        async def handler(stream: Stream[Any, Any]) -> None:
            started = time.perf_counter()
            sent = stream.metadata.get(CORRELATION_METADATA) if stream.metadata else None
            bad_cid = sent is not None and not (type(sent) is str and valid_correlation_id(sent))
            cid = sent if type(sent) is str and not bad_cid else ""
            if not cid:
                cid = self.new_correlation_id()
            info = CallInfo(cid, rpc)
            CALL.set(info)  # this task's context only: grpclib runs each RPC in a task
            self._set_tenant(stream)
            status = "ok"
            if self.draining:
                await send_error(stream, PoolUnavailable("the server is shutting down"))
                self._observe(info, "PoolUnavailable", time.perf_counter() - started)
                return
            task = asyncio.current_task()
            assert task is not None
            self._active.add(task)
            self._idle.clear()
            try:
                if bad_cid:
                    raise BadRequest(f"{CORRELATION_METADATA} must be 1-128 printable ASCII")
                request = await recv_bounded(stream, self.max_request, self.size_advice)
                if unary:
                    await stream.send_message(await fn(request))
                else:
                    await fn(request, stream.send_message)
            except BridgeError as exc:
                status = trailer.public_name(exc)
                await send_error(stream, exc)
                stop_reading(stream)  # e.g. the unread rest of an oversized request
            except WireError as exc:
                status = "BadRequest"
                await send_error(stream, BadRequest(f"malformed request: {exc}"))
            except asyncio.CancelledError:
                status = "CallCancelled"
                if task not in self._shut_down:
                    raise  # the client went away or its deadline passed
                # The drain gave up on it: still answer, with a status, not a dropped stream.
                await send_error(
                    stream, CallCancelled("the server shut down before the call finished")
                )
            except BaseException:
                status = "BridgeError"
                raise
            finally:
                self._active.discard(task)
                if not self._active:
                    self._idle.set()
                self._observe(info, status, time.perf_counter() - started)

        handler.__name__ = fn.__name__
        return handler

    def new_correlation_id(self) -> str:
        """An id for a call that came without one: unique per server run, cheap."""
        return f"{self._cid_prefix}{next(self._cid_seq)}"

    def call_started(self, task: asyncio.Task[Any]) -> None:
        """A call of an ``Exchange`` stream began: the drain waits for it like an RPC."""
        self._active.add(task)
        self._idle.clear()

    def call_ended(
        self, task: asyncio.Task[Any], info: CallInfo, status: str, seconds: float
    ) -> None:
        """An ``Exchange`` call finished: count and log it like a unary RPC."""
        self._active.discard(task)
        if not self._active:
            self._idle.set()
        self._observe(info, status, seconds)

    def shut_down(self, task: asyncio.Task[Any]) -> bool:
        """Whether the drain cancelled ``task`` (it still answers, with ``CallCancelled``)."""
        return task in self._shut_down

    def _observe(self, info: CallInfo, status: str, seconds: float) -> None:
        """Count a finished RPC, and log it at debug level (with its correlation id)."""
        if self.metrics is not None:
            self.metrics.observe_call(info.pool, info.kind, status, seconds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "rpc %s pool=%s status=%s %.3f ms",
                info.kind,
                info.pool or "-",
                status,
                seconds * 1000,
                extra={"pool": info.pool},
            )

    def gauges(self) -> BridgeSnapshot:
        """The bridge's gauges now, for ``Metrics.render``."""
        return self.bridge.snapshot()

    def _label(self, req: CallRequestWire, kind: str = "") -> None:
        """Name the RPC's kind and its pool (the one it asks for, if it exists; the
        worker that runs it confirms it) for metrics and logs."""
        info = CALL.get()
        if info is not None:
            info.kind = kind or KIND_NAMES.get(req.kind, "unknown")
            pool = req.pool or self.bridge.default_pool
            info.pool = pool if pool in self.bridge.pools else ""

    async def drain(self, grace: float) -> int:
        """Stop taking calls; let running ones finish for up to ``grace`` seconds, then
        cancel the rest, which answer ``CallCancelled``. Returns how many were cancelled."""
        self.draining = True
        for exchange in self.exchanges:
            exchange.closing()
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return 0
        except TimeoutError:
            pass
        stragglers = set(self._active)
        self._shut_down |= stragglers
        for task in stragglers:
            task.cancel()
        await asyncio.wait(stragglers, timeout=5.0)
        return len(stragglers)

    async def exchanges_ended(self, timeout: float) -> None:
        """After the drain: give the ``Exchange`` streams ``timeout`` seconds to send their
        last results and their status before the server closes."""
        handlers = {ex.handler for ex in self.exchanges if ex.handler is not None}
        if handlers:
            await asyncio.wait(handlers, timeout=timeout)

    def __mapping__(self) -> dict[str, Handler]:
        unary, streaming = self._unary, self._streaming
        return {
            SERVICE + "Call": unary(self.call, CallRequestWire, CallReplyWire),
            SERVICE + "GetAttr": unary(self.get_attr, pb.GetAttrRequest, CallReplyWire),
            SERVICE + "SetAttr": unary(self.set_attr, pb.SetAttrRequest, CallReplyWire),
            SERVICE + "Stream": streaming(self.stream, StreamRequestWire, StreamBatchWire),
            SERVICE + "StreamNext": unary(
                self.stream_next, pb.StreamNextRequest, pb.StreamNextReply
            ),
            SERVICE + "ReleaseRef": unary(
                self.release_ref, pb.ReleaseRefRequest, pb.ReleaseRefReply
            ),
            SERVICE + "ReleaseSession": unary(
                self.release_session, pb.ReleaseSessionRequest, pb.ReleaseSessionReply
            ),
            SERVICE + "Describe": unary(self.describe, pb.DescribeRequest, pb.DescribeReply),
            SERVICE + "ListHelpers": unary(
                self.list_helpers, pb.ListHelpersRequest, pb.ListHelpersReply
            ),
            SERVICE + "Exchange": Handler(
                self._exchange,
                Cardinality.STREAM_STREAM,
                ExchangeRequestWire,
                ExchangeReplyWire,
            ),
            SERVICE + "Introspect": unary(
                self.introspect, pb.IntrospectRequest, pb.IntrospectReply
            ),
        }

    def _set_tenant(self, stream: Stream[Any, Any]) -> None:
        """Who calls: the token's tenant, or the client certificate's (auth.py), for this
        task's context (and the tasks it starts). The auth hook refused unknown tokens
        before any handler ran."""
        tenant = self.identities.tenant_of(
            stream.metadata.get("authorization") if stream.metadata else None,
            stream.peer.cert() if self.identities.certificates else None,
        )
        TENANT.set(tenant or "")

    async def _exchange(self, stream: Stream[Any, Any]) -> None:
        # Each call of the stream runs in a task started from this one: it inherits the
        # tenant, so isolation and session ownership hold as for a unary Call.
        self._set_tenant(stream)
        if self.draining:
            await send_error(stream, PoolUnavailable("the server is shutting down"))
            return
        # The stream's own correlation id, if any, is the default of its calls.
        sent = stream.metadata.get(CORRELATION_METADATA) if stream.metadata else None
        if sent is not None and not (type(sent) is str and valid_correlation_id(sent)):
            await send_error(
                stream, BadRequest(f"{CORRELATION_METADATA} must be 1-128 printable ASCII")
            )
            stop_reading(stream)
            return
        await serve_exchange(self, stream, sent or "")

    # -- the methods: request message in, reply message out ------------------------------

    async def call(self, req: CallRequestWire) -> CallReplyWire:
        self._label(req)
        return CallReplyWire(result=await self.bridge.call(req, TENANT.get()))

    async def get_attr(self, req: pb.GetAttrRequest) -> CallReplyWire:
        call = CallRequestWire(
            protocol_version=req.protocol_version,
            kind=KIND_GET_ATTR,
            name=req.name,
            session_id=req.session_id,
            target_ref=req.target_ref,
            timeout=req.timeout,
        )
        return CallReplyWire(result=await self.bridge.call(call, TENANT.get()))

    async def set_attr(self, req: pb.SetAttrRequest) -> CallReplyWire:
        call = CallRequestWire(
            protocol_version=req.protocol_version,
            kind=KIND_SET_ATTR,
            name=req.name,
            session_id=req.session_id,
            target_ref=req.target_ref,
            args=req.value,
            arg_refs=list(req.arg_refs),
            timeout=req.timeout,
        )
        return CallReplyWire(result=await self.bridge.call(call, TENANT.get()))

    async def stream(self, req: StreamRequestWire, send: Send[StreamBatchWire]) -> None:
        check_protocol(req.protocol_version)
        self._label(req.call, "stream")
        info, metrics = CALL.get(), self.metrics

        async def send_items(items: bytes) -> None:
            if metrics is not None and info is not None:
                metrics.stream_batch(info.pool, batch_items(items))
            await send(StreamBatchWire(items=items))

        await self.bridge.stream(req.call, send_items, TENANT.get())

    async def stream_next(self, req: pb.StreamNextRequest) -> pb.StreamNextReply:
        check_protocol(req.protocol_version)
        done, item = await self.bridge.stream_next(
            req.stream_ref, req.session_id, req.timeout, TENANT.get()
        )
        return pb.StreamNextReply(done=done, item=item)

    async def release_ref(self, req: pb.ReleaseRefRequest) -> pb.ReleaseRefReply:
        check_protocol(req.protocol_version)
        released = await self.bridge.release_refs(list(req.ref_ids), req.session_id, TENANT.get())
        return pb.ReleaseRefReply(released=released)

    async def release_session(self, req: pb.ReleaseSessionRequest) -> pb.ReleaseSessionReply:
        check_protocol(req.protocol_version)
        released, existed = await self.bridge.release_session(req.session_id, TENANT.get())
        return pb.ReleaseSessionReply(released_refs=released, existed=existed)

    async def list_helpers(self, req: pb.ListHelpersRequest) -> pb.ListHelpersReply:
        check_protocol(req.protocol_version)
        rows = self.bridge.list_helpers(req.pool)
        helpers = [pb.HelperInfo(name=n, signature=sig, doc=doc) for n, sig, doc in rows]
        return pb.ListHelpersReply(helpers=helpers)

    async def introspect(self, req: pb.IntrospectRequest) -> pb.IntrospectReply:
        check_protocol(req.protocol_version)
        info = CALL.get()
        if info is not None:  # the pool asked for, as _label names it for calls
            pool = req.pool or self.bridge.default_pool
            info.pool = pool if pool in self.bridge.pools else ""
        description = await self.bridge.introspect(
            req.module,
            list(req.names),
            list(req.submodules),
            pool_name=req.pool,
            timeout=req.timeout,
            version_only=req.version_only,
        )
        return pb.IntrospectReply(description=description)

    async def describe(self, req: pb.DescribeRequest) -> pb.DescribeReply:
        check_protocol(req.protocol_version)
        snapshot = self.bridge.snapshot()
        # Host pids tell a client which processes on the host are workers: only for
        # callers who proved who they are, unless the operator says otherwise.
        pids = self.identities.authenticated or self.bridge.config.describe_pids
        pools = [
            pb.PoolInfo(
                name=pool.name,
                size=pool.size,
                workers=[
                    pb.WorkerInfo(**{**asdict(w), "pid": w.pid if pids else 0})
                    for w in pool.workers
                ],
                in_flight=pool.in_flight,
                max_queued=pool.max_queued,
                state=pool.state,
                restarts=dict(pool.restarts),
                sandbox_level=pool.sandbox_level,
                sandbox_layers=list(pool.sandbox_layers),
                isolation=pool.isolation,
                spare_workers=pool.spare_workers,
                backend=pool.backend,
            )
            for pool in snapshot.pools
        ]
        return pb.DescribeReply(
            server_version=__version__,
            protocol_version=PROTOCOL_VERSION,
            pools=pools,
            sessions=snapshot.sessions,
            helpers=[name for name, _, _ in self.bridge.list_helpers("")],
        )
