"""The worker's frame loop for a pool whose ``concurrency`` is above 1.

Runs in the worker child process. ``ConcurrentServer`` reads the channel on an asyncio
event loop and answers requests in any order (each reply names its call id; the server's
``supervisor.router.ConcurrentReplyRouter`` sends at most ``concurrency`` user-code
requests at once and holds back the rest):

- a call whose function is a coroutine function runs as a task on the loop, so up to
  ``concurrency`` of them wait on I/O together;
- with ``threads``, a sync function runs in a thread pool of ``concurrency`` threads
  (they share the GIL: this helps code that blocks in I/O or in C that releases it, not
  pure-Python CPU work);
- without ``threads``, a sync function runs on the loop itself, holding up the others
  while it runs (as at concurrency 1);
- stream requests run in order on one thread of their own (sync and async iterators
  alike, with the worker's private loop); releases and attribute requests run on the loop.

Cancellation (the call id on the control channel, then SIGUSR1) interrupts only its own
call: a task is cancelled, a sync call on the loop is interrupted as at concurrency 1, a
request not read yet is answered "cancelled before it ran". A call on a thread cannot be
interrupted: the server kills the worker after the grace period, and its other calls end
with ``WorkerCrashed`` saying so.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import socket
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from snakebridge.errors import BridgeError, LimitExceeded

from ..channel import (
    CANCEL,
    HEADER,
    OP_CALL,
    OP_STREAM_CLOSE,
    OP_STREAM_NEXT,
    OP_STREAM_OPEN,
    OP_STREAM_PULL,
    pack_frame_parts,
    unpack_message,
)
from ..frames import Call, Err, Ok, Reply
from .refs import OverBudget, RefMinter
from .streams import CallInterrupted

if TYPE_CHECKING:
    from .main import Worker

_STREAM_OPS: Final = frozenset({OP_STREAM_OPEN, OP_STREAM_PULL, OP_STREAM_NEXT, OP_STREAM_CLOSE})


class ConcurrentServer:
    """Serves one ``Worker``'s channel with up to ``concurrency`` calls at once."""

    def __init__(self, worker: Worker, concurrency: int, *, threads: bool = False) -> None:
        self.worker = worker
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self.threads = (
            ThreadPoolExecutor(concurrency, thread_name_prefix="snakebridge-call")
            if threads
            else None
        )
        # Stream requests, in the order they came, on a thread with the worker's own loop.
        self.stream_thread = ThreadPoolExecutor(1, thread_name_prefix="snakebridge-stream")
        self.inline = 0  # the call id of a sync call running on the loop's thread, or 0
        self.tasks: dict[int, asyncio.Task[None]] = {}  # calls running on the loop
        self.on_threads: set[int] = set()  # calls running in the thread pool
        self.cancelling: set[int] = set()  # calls whose task we cancelled
        self.cancelled: set[int] = set()  # cancelled before their frame was read
        self.last_read = 0  # the highest call id read from the channel
        self.writer: asyncio.StreamWriter | None = None
        worker.concurrent = self

    # -- cancellation (SIGUSR1, on the main thread, between any two bytecodes) ----------

    def on_cancel_signal(self, signum: int, frame: FrameType | None) -> None:
        interrupt = False
        for call_id in self._read_cancels():
            if call_id == self.inline:
                interrupt = True
            elif call_id in self.tasks and call_id not in self.on_threads:
                self.loop.call_soon_threadsafe(self._cancel_task, call_id)
            elif call_id > self.last_read:
                # Its frame is not read yet. (Bounded: ids the server sent, which the
                # worker reads next and then forgets.)
                self.cancelled.add(call_id)
            # else: on a thread, a stream request, or done: the server decides after
            # the grace period (a thread cannot be interrupted).
        if interrupt:
            self.inline = 0
            raise CallInterrupted

    def _read_cancels(self) -> list[int]:
        ctrl = self.worker.ctrl
        ids: list[int] = []
        while True:
            try:
                data = ctrl.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            ends = range(0, len(data) - len(data) % CANCEL.size, CANCEL.size)
            ids.extend(CANCEL.unpack_from(data, off)[0] for off in ends)
        return ids

    def _cancel_task(self, call_id: int) -> None:
        task = self.tasks.get(call_id)
        if task is not None and call_id not in self.on_threads:
            self.cancelling.add(call_id)
            task.cancel()

    # -- the frame loop -----------------------------------------------------------------

    def serve(self) -> None:
        """Serve until the server closes the channel (the READY frame is sent first)."""
        import signal

        self.worker.send_ready()
        signal.signal(signal.SIGUSR1, self.on_cancel_signal)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            if self.threads is not None:
                self.threads.shutdown(wait=False, cancel_futures=True)
            self.stream_thread.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        sock: socket.socket = self.worker.sock
        sock.setblocking(False)
        reader, self.writer = await asyncio.open_unix_connection(sock=sock)
        max_frame = self.worker.max_frame
        while True:
            try:
                (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                if length > max_frame:
                    raise SystemExit(f"frame of {length} bytes from server exceeds {max_frame}")
                body = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the server closed the channel: exit quietly
            self._start(unpack_message(body))
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    def _start(self, message: list[Any]) -> None:
        op, call_id = message[0], message[1]
        if type(call_id) is int and call_id > self.last_read:
            self.last_read = call_id
        if call_id in self.cancelled:
            self.cancelled.discard(call_id)
            self.send(Err.of(call_id, "CallCancelled", "cancelled before it ran"))
            return
        if op == OP_CALL:
            task = self.loop.create_task(self._call(call_id, message))
            self.tasks[call_id] = task
            task.add_done_callback(lambda _: self._forget(call_id))
        elif op in _STREAM_OPS:
            self.loop.create_task(self._stream_request(op, call_id, message))
        else:  # a release: quick, and it must not wait behind calls
            self.send(self.worker.dispatch(op, call_id, message))

    def _forget(self, call_id: int) -> None:
        self.tasks.pop(call_id, None)
        self.cancelling.discard(call_id)
        self.on_threads.discard(call_id)

    def send(self, reply: Reply) -> None:
        assert self.writer is not None
        self.writer.writelines(pack_frame_parts(reply.pack()))

    # -- calls --------------------------------------------------------------------------

    async def _call(self, call_id: int, message: list[Any]) -> None:
        worker = self.worker
        cpu = worker.cpu
        try:
            if cpu is not None:
                cpu.arm()
            reply = await self._run_call(Call.unpack(message))
        except CallInterrupted as exc:
            reply = _interrupted(call_id, exc, cpu)
        except asyncio.CancelledError:
            if call_id not in self.cancelling:
                raise  # the worker is closing
            reply = Err.of(call_id, "CallCancelled", "call cancelled")
        except BridgeError as exc:
            reply = Err.of(call_id, type(exc).__name__, exc.message)
        self.send(reply)

    async def _run_call(self, frame: Call) -> Reply:
        worker = self.worker
        call_id, kind, module, name, target_ref, session_id, args, ref_budget, _ = frame
        mint = RefMinter(worker.refs, session_id, ref_budget, worker._vetted)
        target = worker._vetted(worker.refs.get(target_ref, session_id)) if target_ref else None
        decoded = worker._decode_args(args, session_id)
        try:
            try:
                value = await self._run_user_code(call_id, kind, module, name, target, decoded)
            finally:
                self.inline = 0
            encoded = worker._encode_result(kind, value, mint)
        except OverBudget:
            raise mint.over_budget() from None
        except (CallInterrupted, BridgeError):
            mint.rollback()
            raise
        except asyncio.CancelledError:
            mint.rollback()
            if call_id in self.cancelling:
                raise
            return Err(call_id, "RemoteError", *_describe(asyncio.CancelledError()))
        except BaseException as exc:
            # As at concurrency 1: whatever user code raises is an error of that call.
            mint.rollback()
            return Err(call_id, "RemoteError", *_describe(exc))
        if len(encoded) > worker.max_result:
            mint.rollback()
            raise LimitExceeded(
                f"the result is {len(encoded)} bytes, over the {worker.max_result}-byte "
                "message limit; return a ref or a smaller value"
            )
        return Ok(call_id, encoded, len(mint.created))

    async def _run_user_code(
        self, call_id: int, kind: int, module: str, name: str, target: Any, decoded: Any
    ) -> Any:
        worker = self.worker
        self.inline = call_id  # resolving a name can import a module: interruptible
        called = worker.callee(kind, module, name, target, decoded)
        if called is None:
            return worker.attribute(kind, module, name, target, decoded)
        fn, args, kwargs = called
        if self.threads is not None and not inspect.iscoroutinefunction(fn):
            self.inline = 0
            self.on_threads.add(call_id)
            try:
                result = await self.loop.run_in_executor(
                    self.threads, functools.partial(fn, *args, **kwargs)
                )
            finally:
                self.on_threads.discard(call_id)
        else:
            result = fn(*args, **kwargs)  # sync code runs here, on the loop's thread
        self.inline = 0
        if inspect.iscoroutine(result):
            result = await result
        # pydoc.locate("os.system") must not hand out what a name could not reach.
        return worker._vetted(result)

    # -- streams ------------------------------------------------------------------------

    async def _stream_request(self, op: int, call_id: int, message: list[Any]) -> None:
        reply = await self.loop.run_in_executor(
            self.stream_thread, self._stream_step, op, call_id, message
        )
        self.send(reply)

    def _stream_step(self, op: int, call_id: int, message: list[Any]) -> Reply:
        """One stream request, on the stream thread (it cannot be interrupted there)."""
        worker = self.worker
        try:
            return worker.dispatch(op, call_id, message)
        except CallInterrupted as exc:
            return _interrupted(call_id, exc, worker.cpu)


def _interrupted(call_id: int, exc: CallInterrupted, cpu: Any) -> Err:
    from .main import CpuExceeded

    if isinstance(exc, CpuExceeded) and cpu is not None:
        text = f"the call used more than its {cpu.seconds:g} CPU seconds"
        return Err.of(call_id, "LimitExceeded", text)
    return Err.of(call_id, "CallCancelled", "call interrupted")


def _describe(exc: BaseException) -> list[str]:
    from .main import _describe as describe

    return describe(exc)
