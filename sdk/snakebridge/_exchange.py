"""Many calls over one ``Exchange`` stream: the SDK's micro-batching. Runs in the client.

``CallExchange.call`` puts the call in an outbox and wakes the stream's sender; the sender
runs after every task that was ready in the same loop iteration has had its turn, so the
calls they made leave together, as one ``ExchangeRequest`` (no timer holds a lone call:
it leaves on the next iteration). Results come back as each call finishes, matched by id.

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

__all__ = ["CallExchange"]

#: Argument bytes in one ExchangeRequest before the rest wait for the next one (a single
#: bigger call travels alone); keeps each message far under the server's limit.
BATCH_BYTES: Final = 1 << 20
#: Calls in one ExchangeRequest at most.
BATCH_CALLS: Final = 4096


def _error_of(result: ExchangeResultWire) -> BridgeError:
    error = trailer.unpack({ERROR_TRAILER: result.error})
    if error is None:
        error = BridgeError(f"the call failed with gRPC status {result.status}")
    return error


class CallExchange:
    """The calls of one ``Client`` in flight on its ``Exchange`` stream."""

    __slots__ = (
        "_cancels",
        "_closed",
        "_ids",
        "_metadata",
        "_outbox",
        "_pending",
        "_task",
        "_transport",
        "_wake",
    )

    def __init__(self, transport: Transport, metadata: CallMetadata) -> None:
        self._transport = transport
        self._metadata = metadata  # the stream's: authorization only; ids travel per call
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._outbox: list[ExchangeCallWire] = []
        self._cancels: list[int] = []
        self._ids = itertools.count(1)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def call(self, req: CallRequestWire, cid: str | None, timeout: float | None) -> bytes:
        """Run ``req`` on the stream; its result bytes, or its error raised."""
        if self._closed or self._transport.closed:
            closed = ClientClosed(
                f"Call on a closed Client ({self._transport.address}); make a new one"
            )
            if cid:
                closed.correlation_id = cid
            raise closed
        if self._task is None:
            self._open()
        assert self._wake is not None
        call_id = next(self._ids)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        self._outbox.append(ExchangeCallWire(id=call_id, call=req, correlation_id=cid or ""))
        self._wake.set()
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
            self._cancel(call_id)
            timed_out = CallTimeout(f"Call did not finish within {timeout}s")
            if cid:
                timed_out.correlation_id = cid
            raise timed_out from None
        except asyncio.CancelledError:
            self._cancel(call_id)
            raise
        finally:
            self._pending.pop(call_id, None)

    def _cancel(self, call_id: int) -> None:
        """Tell the server to stop ``call_id`` (a call not sent yet is simply dropped)."""
        if self._pending.pop(call_id, None) is not None and self._wake is not None:
            self._cancels.append(call_id)
            self._wake.set()

    def _open(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        error: BridgeError = ClientClosed("the Exchange stream ended")
        try:
            await self._transport.bidi(
                "Exchange",
                ExchangeRequestWire,
                ExchangeReplyWire,
                self._metadata,
                self._next_request,
                self._received,
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
            self._task = None
            self._outbox.clear()
            self._cancels.clear()
            pending, self._pending = self._pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(copy.copy(error))

    async def _next_request(self) -> ExchangeRequestWire | None:
        """The next message: the calls ready now (up to the batch bounds) and the cancels;
        waits while there are none."""
        wake = self._wake
        assert wake is not None
        while not (self._outbox or self._cancels):
            if self._closed:
                return None
            wake.clear()
            await wake.wait()
        pending = self._pending
        calls: list[ExchangeCallWire] = []
        size = 0
        taken = 0
        for call in self._outbox:
            if calls and (size >= BATCH_BYTES or len(calls) >= BATCH_CALLS):
                break
            taken += 1
            if call.id in pending:  # else cancelled before it left
                calls.append(call)
                size += len(call.call.args)
        del self._outbox[:taken]
        cancels, self._cancels = self._cancels, []
        return ExchangeRequestWire(protocol_version=PROTOCOL_VERSION, calls=calls, cancels=cancels)

    def _received(self, reply: ExchangeReplyWire) -> None:
        pending = self._pending
        for result in reply.results:
            fut = pending.get(result.id)
            if fut is None or fut.done():
                continue  # cancelled or timed out here meanwhile
            if result.error:
                fut.set_exception(_error_of(result))
            else:
                fut.set_result(result.result)

    async def close(self) -> None:
        """Reset the stream; calls still waiting raise ``ClientClosed``."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
