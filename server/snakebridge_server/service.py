"""The gRPC face of the bridge (grpclib handlers). Decodes requests, calls ``Bridge``,
maps ``BridgeError`` classes to gRPC statuses plus the ``snakebridge-error-bin`` trailer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from snakebridge import __version__
from snakebridge.errors import (
    BadRequest,
    BridgeError,
    CallCancelled,
    PoolUnavailable,
)
from snakebridge.wire import trailer
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
    StreamBatchWire,
    StreamRequestWire,
    WireError,
)
from snakebridge.wire.pb import v1 as pb
from snakebridge.wire.text import clip

from .bounded import recv_bounded, stop_reading
from .bridge import Bridge, check_protocol
from .logs import CALL, CallInfo, valid_correlation_id
from .metrics import Metrics, batch_items
from .sandbox.report import sandbox_report

log = logging.getLogger("snakebridge.service")

_MAX_STATUS_MESSAGE = 2048
_ENVELOPE = 4 * 1024 * 1024  # names, ids and up to 10,000 arg_refs (see bridge.MAX_*)


def error_trailer(exc: BridgeError) -> dict[str, bytes]:
    info = CALL.get()
    return trailer.pack(exc, info.correlation_id if info is not None else None)


async def send_error(stream: Stream[Any, Any], exc: BridgeError) -> None:
    await stream.send_trailing_metadata(
        status=Status(int(exc.grpc_status)),
        status_message=clip(str(exc), _MAX_STATUS_MESSAGE),
        metadata=error_trailer(exc),
    )


Rpc = Callable[[Stream[Any, Any]], Awaitable[None]]


class BridgeService:
    """``snakebridge.v1.Bridge`` implemented over a ``Bridge``."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.draining = False
        self._active: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._shut_down: set[asyncio.Task[Any]] = set()  # stragglers cancelled by drain()
        # Argument bytes plus the request's own (bounded) fields.
        self.max_request = bridge.config.max_message_size + _ENVELOPE
        self.metrics = Metrics() if bridge.config.metrics else None
        # Ids the server makes for calls that come without one: unique per run, cheap.
        self._cid_prefix = f"sb-{secrets.token_hex(4)}-"
        self._cid_seq = itertools.count(1)

    def _guard(self, fn: Callable[[Stream[Any, Any]], Awaitable[None]]) -> Rpc:
        """Wrap a handler: map errors to statuses, refuse work while draining, and keep
        track of running handlers so a drain can wait for them."""

        rpc = fn.__name__  # the metrics "kind" until the request says better

        async def handler(stream: Stream[Any, Any]) -> None:
            started = time.perf_counter()
            sent = stream.metadata.get(CORRELATION_METADATA) if stream.metadata else None
            bad_cid = sent is not None and not (type(sent) is str and valid_correlation_id(sent))
            cid = sent if type(sent) is str and not bad_cid else ""
            if not cid:
                cid = f"{self._cid_prefix}{next(self._cid_seq)}"
            info = CallInfo(cid, rpc)
            CALL.set(info)  # this task's context only: grpclib runs each RPC in a task
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
                await fn(stream)
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

    def __mapping__(self) -> dict[str, Handler]:
        unary = Cardinality.UNARY_UNARY
        return {
            SERVICE + "Call": Handler(
                self._guard(self.call), unary, CallRequestWire, CallReplyWire
            ),
            SERVICE + "GetAttr": Handler(
                self._guard(self.get_attr), unary, pb.GetAttrRequest, CallReplyWire
            ),
            SERVICE + "SetAttr": Handler(
                self._guard(self.set_attr), unary, pb.SetAttrRequest, CallReplyWire
            ),
            SERVICE + "Stream": Handler(
                self._guard(self.stream),
                Cardinality.UNARY_STREAM,
                StreamRequestWire,
                StreamBatchWire,
            ),
            SERVICE + "StreamNext": Handler(
                self._guard(self.stream_next), unary, pb.StreamNextRequest, pb.StreamNextReply
            ),
            SERVICE + "ReleaseRef": Handler(
                self._guard(self.release_ref), unary, pb.ReleaseRefRequest, pb.ReleaseRefReply
            ),
            SERVICE + "ReleaseSession": Handler(
                self._guard(self.release_session),
                unary,
                pb.ReleaseSessionRequest,
                pb.ReleaseSessionReply,
            ),
            SERVICE + "Describe": Handler(
                self._guard(self.describe), unary, pb.DescribeRequest, pb.DescribeReply
            ),
            SERVICE + "ListHelpers": Handler(
                self._guard(self.list_helpers), unary, pb.ListHelpersRequest, pb.ListHelpersReply
            ),
        }

    async def call(self, stream: Stream[CallRequestWire, CallReplyWire]) -> None:
        req = await recv_bounded(stream, self.max_request)
        self._label(req)
        result = await self.bridge.call(req)
        await stream.send_message(CallReplyWire(result=result))

    async def get_attr(self, stream: Stream[pb.GetAttrRequest, CallReplyWire]) -> None:
        req = await recv_bounded(stream, self.max_request)
        call = CallRequestWire(
            protocol_version=req.protocol_version,
            kind=KIND_GET_ATTR,
            name=req.name,
            session_id=req.session_id,
            target_ref=req.target_ref,
            timeout=req.timeout,
        )
        await stream.send_message(CallReplyWire(result=await self.bridge.call(call)))

    async def set_attr(self, stream: Stream[pb.SetAttrRequest, CallReplyWire]) -> None:
        req = await recv_bounded(stream, self.max_request)
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
        await stream.send_message(CallReplyWire(result=await self.bridge.call(call)))

    async def stream(self, stream: Stream[StreamRequestWire, StreamBatchWire]) -> None:
        req = await recv_bounded(stream, self.max_request)
        check_protocol(req.protocol_version)
        self._label(req.call, "stream")
        info, metrics = CALL.get(), self.metrics

        async def send(items: bytes) -> None:
            if metrics is not None and info is not None:
                metrics.stream_batch(info.pool, batch_items(items))
            await stream.send_message(StreamBatchWire(items=items))

        await self.bridge.stream(req.call, send)

    async def stream_next(self, stream: Stream[pb.StreamNextRequest, pb.StreamNextReply]) -> None:
        req = await recv_bounded(stream, self.max_request)
        check_protocol(req.protocol_version)
        done, item = await self.bridge.stream_next(req.stream_ref, req.session_id, req.timeout)
        await stream.send_message(pb.StreamNextReply(done=done, item=item))

    async def release_ref(self, stream: Stream[pb.ReleaseRefRequest, pb.ReleaseRefReply]) -> None:
        req = await recv_bounded(stream, self.max_request)
        check_protocol(req.protocol_version)
        released = await self.bridge.release_refs(list(req.ref_ids), req.session_id)
        await stream.send_message(pb.ReleaseRefReply(released=released))

    async def release_session(
        self, stream: Stream[pb.ReleaseSessionRequest, pb.ReleaseSessionReply]
    ) -> None:
        req = await recv_bounded(stream, self.max_request)
        check_protocol(req.protocol_version)
        released, existed = await self.bridge.release_session(req.session_id)
        await stream.send_message(pb.ReleaseSessionReply(released_refs=released, existed=existed))

    async def list_helpers(
        self, stream: Stream[pb.ListHelpersRequest, pb.ListHelpersReply]
    ) -> None:
        req = await recv_bounded(stream, self.max_request)
        check_protocol(req.protocol_version)
        rows = self.bridge.list_helpers(req.pool)
        helpers = [pb.HelperInfo(name=n, signature=sig, doc=doc) for n, sig, doc in rows]
        await stream.send_message(pb.ListHelpersReply(helpers=helpers))

    async def describe(self, stream: Stream[pb.DescribeRequest, pb.DescribeReply]) -> None:
        req = await recv_bounded(stream, self.max_request)
        check_protocol(req.protocol_version)
        bridge = self.bridge
        pools = []
        for pool in bridge.pools.values():
            level, layers = sandbox_report(pool.workers)
            workers = [
                pb.WorkerInfo(
                    worker_id=str(w.key),
                    slot=w.key.slot,
                    incarnation=w.key.incarnation,
                    pid=w.pid,
                    state="retiring" if w.retiring else w.state,
                    in_flight=w.in_flight,
                    calls_done=w.calls_done,
                    refs=max(0, w.refs_held),
                )
                for w in [*pool.workers, *pool.retiring]
                if w is not None
            ]
            pools.append(
                pb.PoolInfo(
                    name=pool.name,
                    size=pool.size,
                    workers=workers,
                    in_flight=pool.in_flight,
                    max_queued=pool.max_queued,
                    state=pool.state,
                    restarts=dict(pool.restarts),
                    sandbox_level=level,
                    sandbox_layers=layers,
                )
            )
        await stream.send_message(
            pb.DescribeReply(
                server_version=__version__,
                protocol_version=PROTOCOL_VERSION,
                pools=pools,
                sessions=len(bridge.sessions),
                helpers=[name for name, _, _ in bridge.list_helpers("")],
            )
        )
