"""The ``Exchange`` RPC: many calls on one bidirectional stream. Runs in the server.

A client keeps one ``Exchange`` stream per connection. Each ``ExchangeRequest`` carries the
calls its SDK had ready in one loop iteration (and the ids of calls to stop); each call
runs in a task of its own through exactly the path of a unary ``Call``
(``BridgeService.call``: validation, policy, routing, deadline, idempotent retry, the
session table), with its own correlation id, metrics and log context. Results go back
as each call finishes; the ones that finish while a reply is being sent are coalesced into
the next ``ExchangeReply``. Nothing waits for company: a lone result goes out at once.

::

    read loop ──ExchangeRequest──> one task per call ──result──> outbox ──> write loop
          └── cancels ──> task.cancel()  (interrupts the worker call, as a reset Call does)

Bounds: at most ``MAX_IN_FLIGHT`` calls of one stream run at once (more answer
``LimitExceeded``); each request message is at most the service's ``max_request`` bytes
(refused from its length prefix, unread) and ``MAX_CALLS_PER_MESSAGE`` calls; a call id
may not be reused while in flight (``BadRequest`` ends the stream). A client that does not
read its results is not read either: once the calls running plus the results waiting to
be sent reach ``MAX_IN_FLIGHT``, the next message is read only after some results left, so
HTTP/2 flow control stops the client; the outbox holds at most ``MAX_IN_FLIGHT`` plus one
message's calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from grpclib.const import Status
from grpclib.server import Stream

from snakebridge.errors import BadRequest, BridgeError, CallCancelled, LimitExceeded
from snakebridge.errors import PoolUnavailable as _PoolUnavailable
from snakebridge.wire import trailer
from snakebridge.wire.constants import ERROR_TRAILER
from snakebridge.wire.messages import (
    ExchangeCallWire,
    ExchangeReplyWire,
    ExchangeRequestWire,
    ExchangeResultWire,
    WireError,
)

from .bridge import check_protocol
from .grpc_server import read_message, stop_reading
from .logs import CALL, CallInfo, valid_correlation_id

if TYPE_CHECKING:
    from .service import BridgeService

log = logging.getLogger("snakebridge.service")

#: Calls of one Exchange stream running at once; one more is answered ``LimitExceeded``.
MAX_IN_FLIGHT: Final = 16_384
#: Results in one ExchangeReply at most (a reply of tiny results stays well under 1 MiB).
MAX_RESULTS_PER_REPLY: Final = 4096
#: Calls in one ExchangeRequest at most (the Python SDK sends at most 4096); more end the
#: stream with ``BadRequest``.
MAX_CALLS_PER_MESSAGE: Final = 4096


def error_result(call_id: int, exc: BridgeError, cid: str) -> ExchangeResultWire:
    """The result that carries ``exc``: the error map of the unary trailer, and the status."""
    packed = trailer.pack(exc, cid)[ERROR_TRAILER]
    return ExchangeResultWire(id=call_id, error=packed, status=int(exc.grpc_status))


class ExchangeStream:
    """One ``Exchange`` RPC: its calls in flight, its outbox, its two loops."""

    def __init__(
        self, service: BridgeService, stream: Stream[Any, Any], default_cid: str = ""
    ) -> None:
        self.service = service
        self.default_cid = default_cid
        self.stream = stream
        self.running: dict[int, asyncio.Task[None]] = {}
        self.outbox: list[ExchangeResultWire] = []
        self._ready = asyncio.Event()  # the outbox has something, or the stream should end
        self._room = asyncio.Event()  # results left: the reader may take more calls
        self._ending = False  # the client half-closed: end once the running calls answered
        self._closing = False  # the server drains: no new calls, the client is told
        self.handler = asyncio.current_task()  # what the drain waits for

    # -- read side ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the RPC until the client half-closes (then finish the calls in flight and end
        with OK), the drain ends it, or it fails (the calls in flight are cancelled)."""
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read_loop())
        writer = loop.create_task(self._write_loop())
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # a malformed message, a reused id: ends the stream
                await writer  # the client half-closed: answer what is running, then OK
            else:
                writer.result()  # raises if sending failed
        finally:
            # The stream owns every task it started: cancelled (the client is gone: their
            # worker calls are interrupted) and awaited here, whatever ended it.
            owned = {reader, writer, *self.running.values()}
            self.running.clear()
            for task in owned:
                if not task.done():
                    task.cancel()
            await asyncio.wait(owned)

    async def _read_loop(self) -> None:
        while (
            msg := await read_message(
                self.stream, self.service.max_request, self.service.size_advice
            )
        ) is not None:
            self._received(msg)
            while len(self.running) + len(self.outbox) >= MAX_IN_FLIGHT:
                self._room.clear()
                await self._room.wait()
        self._ending = True
        self._ready.set()

    def _received(self, msg: ExchangeRequestWire) -> None:
        check_protocol(msg.protocol_version)
        if len(msg.calls) > MAX_CALLS_PER_MESSAGE:
            raise BadRequest(
                f"an ExchangeRequest carries at most {MAX_CALLS_PER_MESSAGE} calls, "
                f"not {len(msg.calls)}"
            )
        for call_id in msg.cancels:
            task = self.running.pop(call_id, None)
            if task is not None:
                task.cancel()
        loop = asyncio.get_running_loop()
        for call in msg.calls:
            self._start(call, loop)

    def _start(self, call: ExchangeCallWire, loop: asyncio.AbstractEventLoop) -> None:
        call_id = call.id
        if not call_id or call_id in self.running:
            raise BadRequest(f"Exchange call id {call_id} is 0 or already in flight")
        cid = call.correlation_id
        if cid and not valid_correlation_id(cid):
            self._answer(
                error_result(
                    call_id, BadRequest("a correlation id must be 1-128 printable ASCII"), ""
                )
            )
            return
        cid = cid or self.default_cid or self.service.new_correlation_id()
        if self.service.draining or self._closing:
            self._answer(
                error_result(call_id, _PoolUnavailable("the server is shutting down"), cid)
            )
            return
        if len(self.running) >= MAX_IN_FLIGHT:
            error = LimitExceeded(
                f"more than {MAX_IN_FLIGHT} calls in flight on one Exchange stream; "
                "wait for some to finish or open another connection"
            )
            self._answer(error_result(call_id, error, cid))
            return
        self.running[call_id] = loop.create_task(self._run(call_id, call, cid))

    async def _run(self, call_id: int, call: ExchangeCallWire, cid: str) -> None:
        """One call, as the unary ``Call`` runs it; its outcome goes to the outbox."""
        service = self.service
        started = time.perf_counter()
        info = CallInfo(cid, "call")
        CALL.set(info)  # this task's context only
        status = "ok"
        task = asyncio.current_task()
        assert task is not None
        service.call_started(task)
        try:
            reply = await service.call(call.call)
            self._answer(ExchangeResultWire(id=call_id, result=reply.result))
        except BridgeError as exc:
            status = trailer.public_name(exc)
            self._answer(error_result(call_id, exc, cid))
        except asyncio.CancelledError:
            status = "CallCancelled"
            if not service.shut_down(task):
                return  # the client cancelled it or left: nobody to answer
            error = CallCancelled("the server shut down before the call finished")
            self._answer(error_result(call_id, error, cid))
        finally:
            if self.running.get(call_id) is task:
                del self.running[call_id]
            service.call_ended(task, info, status, time.perf_counter() - started)
            if self._ending and not self.running:
                self._ready.set()

    # -- write side -----------------------------------------------------------------------

    def _answer(self, result: ExchangeResultWire) -> None:
        self.outbox.append(result)
        self._ready.set()

    def closing(self) -> None:
        """The drain: refuse new calls, and ask the client to half-close; the stream ends
        with OK once it has and every running call is answered."""
        self._closing = True
        self._ready.set()

    async def _write_loop(self) -> None:
        stream = self.stream
        told = False
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self.outbox:
                batch = self.outbox[:MAX_RESULTS_PER_REPLY]
                del self.outbox[:MAX_RESULTS_PER_REPLY]
                # Results that finish while this one is sent go out together in the next.
                await stream.send_message(ExchangeReplyWire(results=batch))
                self._room.set()
            if self._closing and not told:
                told = True
                await stream.send_message(ExchangeReplyWire(closing=True))
            if self._ending and not self.running:
                # Ended only once the client half-closed: grpclib's client drops replies it
                # has not read yet when a stream it still sends on is reset, which grpclib's
                # server does after the status of a stream whose client has not ended.
                return


async def serve_exchange(
    service: BridgeService, stream: Stream[Any, Any], default_cid: str = ""
) -> None:
    """The grpclib handler of ``Exchange``; errors that end the whole stream (a malformed
    message, a reused id, a protocol mismatch) become its status and error trailer.
    ``default_cid``: the stream metadata's correlation id, for calls that carry none."""
    ex = ExchangeStream(service, stream, default_cid)
    service.exchanges.add(ex)
    try:
        await ex.serve()
    except WireError as exc:
        await _end_with(stream, BadRequest(f"malformed Exchange message: {exc}"))
    except BridgeError as exc:
        await _end_with(stream, exc)
    finally:
        service.exchanges.discard(ex)


async def _end_with(stream: Stream[Any, Any], exc: BridgeError) -> None:
    await stream.send_trailing_metadata(
        status=Status(int(exc.grpc_status)),
        status_message=str(exc)[:2048],
        metadata=trailer.pack(exc),
    )
    stop_reading(stream)
