"""The gRPC face of the bridge (grpclib handlers). Decodes requests, calls ``Bridge``,
maps ``BridgeError`` classes to gRPC statuses plus the ``snakebridge-error-bin`` trailer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from snakebridge import __version__
from snakebridge._generated.snakebridge import v1 as pb
from snakebridge._protocol import (
    ERROR_TRAILER,
    KIND_GET_ATTR,
    KIND_SET_ATTR,
    PROTOCOL_VERSION,
    SERVICE,
)
from snakebridge._wire import (
    CallReplyWire,
    CallRequestWire,
    StreamBatchWire,
    StreamRequestWire,
    WireError,
)
from snakebridge.errors import (
    BadRequest,
    BridgeError,
    CallCancelled,
    PoolUnavailable,
    RemoteError,
)

from .bounded import recv_bounded, stop_reading
from .bridge import Bridge, check_protocol
from .channel import clip
from .sandbox.report import sandbox_report

log = logging.getLogger("snakebridge.service")

_MAX_STATUS_MESSAGE = 2048
_ENVELOPE = 4 * 1024 * 1024  # names, ids and up to 10,000 arg_refs (see bridge.MAX_*)
# hpack's cost grows with the square of a header's size: keep the trailer small. A little
# above the worker's own cuts, so text it already clipped is not clipped twice.
_MAX_TRAILER_MESSAGE = 8 * 1024 + 64
_MAX_TRAILER_TRACEBACK = 16 * 1024 + 64


def error_trailer(exc: BridgeError) -> dict[str, bytes]:
    # The public class: server-internal subclasses (NeverStarted) mean nothing to clients.
    public = next(c for c in type(exc).__mro__ if c.__module__ == "snakebridge.errors")
    details: dict[str, str] = {
        "code": public.__name__,
        "message": clip(exc.message, _MAX_TRAILER_MESSAGE),
    }
    if isinstance(exc, RemoteError):
        # Remote<Builtin> subclasses are rebuilt by the client from the type name.
        details.update(
            code="RemoteError",
            type=exc.type_name[:512],
            traceback=clip(exc.traceback, _MAX_TRAILER_TRACEBACK, keep_end=True),
        )
    return {ERROR_TRAILER: msgpack.packb(details, use_bin_type=True)}


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

    def _guard(self, fn: Callable[[Stream[Any, Any]], Awaitable[None]]) -> Rpc:
        """Wrap a handler: map errors to statuses, refuse work while draining, and keep
        track of running handlers so a drain can wait for them."""

        async def handler(stream: Stream[Any, Any]) -> None:
            if self.draining:
                await send_error(stream, PoolUnavailable("the server is shutting down"))
                return
            task = asyncio.current_task()
            assert task is not None
            self._active.add(task)
            self._idle.clear()
            try:
                await fn(stream)
            except BridgeError as exc:
                await send_error(stream, exc)
                stop_reading(stream)  # e.g. the unread rest of an oversized request
            except WireError as exc:
                await send_error(stream, BadRequest(f"malformed request: {exc}"))
            except asyncio.CancelledError:
                if task not in self._shut_down:
                    raise  # the client went away or its deadline passed
                # The drain gave up on it: still answer, with a status, not a dropped stream.
                await send_error(
                    stream, CallCancelled("the server shut down before the call finished")
                )
            finally:
                self._active.discard(task)
                if not self._active:
                    self._idle.set()

        handler.__name__ = fn.__name__
        return handler

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

        async def send(items: bytes) -> None:
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
        released = await self.bridge.release_refs(list(req.ref_ids))
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
