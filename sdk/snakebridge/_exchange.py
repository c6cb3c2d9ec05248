"""Many calls over one ``Exchange`` stream: the SDK's micro-batching. Runs in the client.

``CallExchange.call`` puts the call in an outbox and wakes the stream's sender; the sender
runs after every task that was ready in the same loop iteration has had its turn, so the
calls they made leave together, as one ``ExchangeRequest`` (no timer holds a lone call:
it leaves on the next iteration). A stream with no call for ``IDLE_CLOSE`` seconds is
half-closed, so an idle client's connection can go idle as with unary calls. Results
come back as each call finishes, matched by id.

Per call, as on the unary path: the call's ``timeout`` is awaited here too (on expiry the
call raises ``CallTimeout`` and the server is told to stop it), cancelling the awaiting
task cancels that call alone (its id goes out in ``cancels``), errors arrive as the same
error map as the unary trailer and raise the same classes, and the correlation id travels
with each call. The stream opens on first use and again after it failed; a failure of the
stream fails the calls that were waiting on it (``ConnectionFailed`` and the like), never
the ones after it. grpclib stays in ``_transport`` (``Transport.bidi``).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import Callable
from typing import Final

from ._transport import CallMetadata, Transport
from .errors import BridgeError, CallTimeout, ClientClosed, ConnectionFailed
from .wire import trailer
from .wire.constants import ERROR_TRAILER, PROTOCOL_VERSION
from .wire.messages import (
    CallRequestWire,
    ExchangeCallWire,
    ExchangeReplyWire,
    ExchangeRequestWire,
    ExchangeResultWire,
)
from .wire.text import timed_out

__all__ = ["CallExchange"]

#: Argument bytes in one ExchangeRequest before the rest wait for the next one (a single
#: bigger call travels alone); keeps each message far under the server's limit.
BATCH_BYTES: Final = 1 << 20
#: Calls in one ExchangeRequest at most.
BATCH_CALLS: Final = 4096
#: Seconds without a call after which the stream is half-closed (and ends), so that the
#: connection can go idle and the server's ``--idle-timeout`` applies; the next call opens
#: a new stream.
IDLE_CLOSE: Final = 2.0


def _error_of(result: ExchangeResultWire) -> BridgeError:
    error = trailer.unpack({ERROR_TRAILER: result.error})
    if error is None:
        error = BridgeError(f"the call failed with gRPC status {result.status}")
    return error


class _Stream:
    """One ``Exchange`` RPC and the calls waiting on it. A stream that fails, or that the
    server closes (its drain), takes no new calls; the next call opens a new one."""

    __slots__ = ("cancels", "closing", "last_call", "outbox", "pending", "task", "wake")

    def __init__(self) -> None:
        self.last_call = time.monotonic()
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.outbox: list[ExchangeCallWire] = []
        self.cancels: list[int] = []
        self.wake = asyncio.Event()
        self.closing = False  # the server asked us to half-close, or the client closes
        self.task: asyncio.Task[None] | None = None

    def close_if_idle(self) -> None:
        """Half-close once no call has been made for ``IDLE_CLOSE`` seconds and none waits;
        checks again later otherwise (one timer per stream, not per call)."""
        if self.closing:
            return
        quiet = time.monotonic() - self.last_call
        if quiet >= IDLE_CLOSE and not self.pending:
            self.closing = True
            self.wake.set()
            return
        delay = max(IDLE_CLOSE - quiet, 0.1)
        asyncio.get_running_loop().call_later(delay, self.close_if_idle)

    def cancel(self, call_id: int) -> None:
        """Tell the server to stop ``call_id`` (a call not sent yet is simply dropped)."""
        if self.pending.pop(call_id, None) is not None:
            self.cancels.append(call_id)
            self.wake.set()

    async def next_request(self) -> ExchangeRequestWire | None:
        """The next message: the calls ready now (up to the batch bounds) and the cancels;
        waits while there are none. None half-closes the stream."""
        wake = self.wake
        while not (self.outbox or self.cancels):
            if self.closing:
                return None
            wake.clear()
            await wake.wait()
        pending = self.pending
        calls: list[ExchangeCallWire] = []
        size = 0
        taken = 0
        for call in self.outbox:
            if calls and (size >= BATCH_BYTES or len(calls) >= BATCH_CALLS):
                break
            taken += 1
            if call.id in pending:  # else cancelled before it left
                calls.append(call)
                size += len(call.call.args)
        del self.outbox[:taken]
        cancels, self.cancels = self.cancels, []
        return ExchangeRequestWire(protocol_version=PROTOCOL_VERSION, calls=calls, cancels=cancels)

    def received(self, reply: ExchangeReplyWire) -> None:
        pending = self.pending
        for result in reply.results:
            fut = pending.get(result.id)
            if fut is None or fut.done():
                continue  # cancelled or timed out here meanwhile
            if result.error:
                fut.set_exception(_error_of(result))
            else:
                fut.set_result(result.result)
        if reply.closing:
            self.closing = True
            self.wake.set()

    def fail_pending(self, error: BridgeError) -> None:
        self.closing = True
        self.outbox.clear()
        self.cancels.clear()
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                each = copy.copy(error)  # one per caller: tracebacks would pile up on one
                each.__cause__ = error.__cause__
                fut.set_exception(each)


class CallExchange:
    """The calls of one ``Client`` in flight on its ``Exchange`` stream."""

    __slots__ = ("_closed", "_ids", "_metadata", "_stream", "_transport")

    def __init__(self, transport: Transport, metadata: Callable[[], CallMetadata]) -> None:
        self._transport = transport
        self._metadata = metadata  # the stream's, asked when one opens; ids travel per call
        self._ids = itertools.count(1)
        self._stream: _Stream | None = None
        self._closed = False

    async def call(
        self, req: CallRequestWire, cid: str | None, timeout: float | None, what: str = "Call"
    ) -> bytes:
        """Run ``req`` on the stream; its result bytes, or its error raised. ``what`` names
        the call in a timeout's message."""
        if self._closed or self._transport.closed:
            closed = ClientClosed(
                f"Call on a closed Client ({self._transport.address}); make a new one"
            )
            if cid:
                closed.correlation_id = cid
            raise closed
        stream = self._stream
        if stream is None or stream.closing:
            stream = self._stream = self._open()
        call_id = next(self._ids)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        stream.last_call = time.monotonic()
        stream.pending[call_id] = fut
        stream.outbox.append(ExchangeCallWire(id=call_id, call=req, correlation_id=cid or ""))
        stream.wake.set()
        try:
            if timeout is None:
                return await fut
            async with asyncio.timeout(timeout):
                return await fut
        except BridgeError as exc:
            if cid and not exc.correlation_id:
                exc.correlation_id = cid
            raise
        except TimeoutError:
            stream.cancel(call_id)
            error = CallTimeout(timed_out(what, timeout))
            if cid:
                error.correlation_id = cid
            raise error from None
        except asyncio.CancelledError:
            stream.cancel(call_id)
            raise
        finally:
            stream.pending.pop(call_id, None)

    def _open(self) -> _Stream:
        stream = _Stream()
        loop = asyncio.get_running_loop()
        stream.task = loop.create_task(self._run(stream))
        loop.call_later(IDLE_CLOSE, stream.close_if_idle)
        return stream

    async def _run(self, stream: _Stream) -> None:
        error: BridgeError = ClientClosed("the Exchange stream ended")
        try:
            await self._transport.bidi(
                "Exchange",
                ExchangeRequestWire,
                ExchangeReplyWire,
                self._metadata(),
                stream.next_request,
                stream.received,
            )
            error = ConnectionFailed("the server ended the Exchange stream under the call")
        except BridgeError as exc:
            error = exc
        except asyncio.CancelledError:
            error = ClientClosed("the Client was closed while the call was in flight")
            raise
        except Exception as exc:  # an SDK bug: fail the calls with it rather than hang them
            error = BridgeError(f"the Exchange stream failed: {type(exc).__name__}: {exc}")
        finally:
            if self._stream is stream:
                self._stream = None
            stream.fail_pending(error)

    async def close(self) -> None:
        """Reset the stream; calls still waiting raise ``ClientClosed``."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None and stream.task is not None:
            stream.task.cancel()
            await asyncio.wait({stream.task})
