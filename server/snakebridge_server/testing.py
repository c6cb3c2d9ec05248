"""An in-memory bridge for tests: the real service and bridge, fake worker processes, and
a real ``snakebridge.Client`` connected through grpclib's in-memory channel.

Runs in the server process (a test's): nothing here starts a process or opens a port.

::

    async def echo(call: FakeCall) -> Any:
        return call.args

    async with serve_in_memory(echo) as (client, bridge, service, workers):
        assert await client.call("m", "f", [1, 2]) == [1, 2]
        assert workers[0].calls[0].name == "f"

``serve_in_memory(script, config=..., timeout=...)`` starts a ``Bridge`` whose pools make
``FakeWorker`` handles, serves its ``BridgeService`` through ``grpclib.testing.ChannelFor``
and yields an ``InMemoryServer``: the connected ``Client`` (``timeout`` is its default
per-call timeout), the ``Bridge``, the ``BridgeService`` and ``workers``, every
``FakeWorker`` made so far in start order (replacements are appended).

The script is one async function that every fake worker runs for each call (``OP_CALL``
frame), given a ``FakeCall`` (the worker, the call's names and its decoded arguments):

- its return value is the call's result (codec-encoded: no refs);
- an exception it raises reaches the client as a ``RemoteError`` of that type;
- ``raise Crash()`` kills the worker process in the middle of the call (the call fails
  with ``WorkerCrashed``; calls queued behind it never started);
- ``call.exit_after_reply()``: the worker answers, then dies before the server read the
  answer (the reply is left in the channel, as when a process exits right after writing);
- awaiting forever hangs the call; a cancellation (the client's deadline, a drain) is
  delivered as ``CancelledError``, and answered ``CallCancelled`` unless the script
  catches it and answers late.

``FakeWorker`` is a ``WorkerHandle`` whose process is a coroutine in the same loop on the
other end of a real socketpair: the handle's own code (reply router, frame decoder, death,
leftover replies, kill timers) runs unchanged; only ``start`` (no spawn), ``cancel`` (no
signal) and waiting for the exit differ. The fake process answers frames strictly in
order, as a worker does. Releases, session releases and stream closes are answered as by
a worker holding no refs; streams are not supported (answered ``BadRequest``).
``FakeWorker.exit()`` kills it from outside, as if the process died;
``FakeWorker.wait_received(n)`` waits until its process has read ``n`` request frames (a
call routed to it has arrived). Unlike a worker, a fake exits as soon as the server closes
its channel, even in the middle of a call, so a test's teardown never waits for a kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from grpclib.testing import ChannelFor

from snakebridge import Client
from snakebridge.wire import codec

from .bridge import Bridge
from .channel import (
    OP_CALL,
    OP_RELEASE,
    OP_RELEASE_SESSION,
    OP_STREAM_CLOSE,
    FrameDecoder,
    pack_frame,
    unpack_message,
)
from .config import PoolConfig, ServerConfig
from .frames import Call, Err, Ok, Ready, Reply
from .refids import WorkerKey
from .service import BridgeService
from .supervisor.handle import WorkerHandle, WorkerState, _Channel
from .supervisor.spawn import WorkerSpec

__all__ = [
    "Crash",
    "FakeCall",
    "FakeWorker",
    "InMemoryServer",
    "Script",
    "serve_in_memory",
]


class Crash(Exception):
    """Raised by a script: the fake worker process dies now, with exit ``code``, while
    running the call (which fails with ``WorkerCrashed``)."""

    def __init__(self, code: int = -9) -> None:
        super().__init__(f"exit code {code}")
        self.code = code


@dataclass(slots=True)
class FakeCall:
    """One call as the fake worker runs it: what the ``Call`` frame said, decoded."""

    worker: FakeWorker
    call_id: int
    kind: int
    module: str
    name: str
    session_id: str
    target_ref: str
    args: list[Any]
    kwargs: dict[str, Any]
    _exit_after_reply: bool = field(default=False, repr=False)

    def exit_after_reply(self) -> None:
        """Die right after writing this call's reply, before the server has read it."""
        self._exit_after_reply = True


#: What every fake worker runs for each call: its result, or its exception.
Script = Callable[[FakeCall], Awaitable[Any]]


class _FakeProcess:
    """The worker end of the socketpair: reads frames, answers them strictly in order."""

    def __init__(self, worker: FakeWorker, sock: socket.socket, script: Script) -> None:
        self.worker = worker
        self.sock = sock
        self.script = script
        self.received = 0  # request frames read from the channel
        self.running = 0  # the call id of the script being run, 0 when idle
        self.last_done = 0
        self.cancelled: set[int] = set()  # queued calls cancelled before they ran
        self.dead = False
        self._inbox: asyncio.Queue[list[Any] | None] = asyncio.Queue()
        self._arrival = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None

    def send(self, message: list[Any]) -> None:
        """Write a frame now, so that a reply sent just before an exit is in the socket
        when the server learns of the exit (replies here are small: the socket takes
        them whole)."""
        self.sock.sendall(pack_frame(message))

    async def wait_received(self, count: int) -> None:
        while self.received < count:
            await self._arrival.wait()

    def interrupt(self, call_id: int) -> None:
        """The ctrl socket's CANCEL plus SIGUSR1: interrupt it if running, skip it if queued."""
        if call_id == self.running and self._task is not None:
            self._task.cancel()
        elif call_id > self.last_done:
            self.cancelled.add(call_id)

    def exit(self, code: int) -> None:
        """The process dies: its end of the channel closes, and the server reaps it."""
        if self.dead:
            return
        self.dead = True
        if self._task is not None:
            self._task.cancel()
        self._inbox.put_nowait(None)
        # Shut down, not closed: the server reads what was sent, then EOF; the socket is
        # closed when ``serve`` ends (a closed fd would stay registered with the loop).
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        worker = self.worker
        if worker.state != WorkerState.DEAD:  # as WorkerHandle._reap
            worker._fail(f"worker process exited with code {code}")
        worker.exited.set()

    async def serve(self) -> None:
        spec = self.worker.spec
        reader = asyncio.get_running_loop().create_task(self._read(spec.max_frame))
        try:
            self.send(Ready(0, sys.version.split()[0], spec.sandbox.level, ["fake"], []).pack())
            while not self.dead:
                message = await self._inbox.get()
                if message is None:
                    return  # the server closed the channel: exit quietly
                reply, exit_after = await self._answer(message)
                if self.dead:
                    return
                self.last_done = reply.call_id
                self.send(reply.pack())
                if exit_after:
                    self.exit(0)
        finally:
            self.exit(0)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.sock.close()

    async def _read(self, max_frame: int) -> None:
        loop = asyncio.get_running_loop()
        decoder = FrameDecoder(max_frame)
        while True:
            try:
                data = await loop.sock_recv(self.sock, 1 << 16)
            except OSError:
                data = b""
            if not data:
                # Closed by the server: exit now, even mid-call (a worker would finish the
                # call first and be killed after a timeout: seconds of a test's teardown).
                self.exit(0)
                return
            for body in decoder.feed(data):
                self._inbox.put_nowait(unpack_message(body))
                self.received += 1
            self._arrival.set()
            self._arrival = asyncio.Event()

    async def _answer(self, message: list[Any]) -> tuple[Reply, bool]:
        op, call_id = message[0], message[1]
        if call_id in self.cancelled:
            self.cancelled.discard(call_id)
            return Err.of(call_id, "CallCancelled", "cancelled before it ran"), False
        if op == OP_CALL:
            return await self._call(Call.unpack(message))
        answers = {OP_RELEASE: [], OP_RELEASE_SESSION: 0, OP_STREAM_CLOSE: True}
        if op in answers:
            return Ok(call_id, answers[op], 0), False
        return Err.of(call_id, "BadRequest", f"the fake worker does not serve opcode {op}"), False

    async def _call(self, frame: Call) -> tuple[Reply, bool]:
        decoded = codec.decode(frame.args) if frame.args else [[], {}]
        call = FakeCall(
            self.worker,
            frame.call_id,
            frame.kind,
            frame.module,
            frame.name,
            frame.session_id,
            frame.target_ref,
            list(decoded[0]),
            dict(decoded[1]),
        )
        self.worker.calls.append(call)
        self.running = frame.call_id
        task = self._task = asyncio.get_running_loop().create_task(self._run(call))
        try:
            await asyncio.wait({task})
        finally:
            task.cancel()
            self.running, self._task = 0, None
        if task.cancelled():
            return Err.of(frame.call_id, "CallCancelled", "call interrupted"), False
        exc = task.exception()
        if isinstance(exc, Crash):
            self.exit(exc.code)
            return Err.of(frame.call_id, "WorkerCrashed", "dead"), False  # never sent
        if exc is not None:
            kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
            return Err(frame.call_id, "RemoteError", kind, str(exc), ""), False
        return Ok(frame.call_id, codec.encode(task.result()), 0), call._exit_after_reply

    async def _run(self, call: FakeCall) -> Any:
        return await self.script(call)


class FakeWorker(WorkerHandle):
    """A ``WorkerHandle`` whose worker process is a coroutine running ``script`` (see the
    module docstring). ``calls`` lists every call the script was given, in order."""

    def __init__(
        self,
        key: WorkerKey,
        spec: WorkerSpec,
        on_exit: Callable[[WorkerHandle], None],
        refs_of: Callable[[WorkerKey], int],
        *,
        script: Script,
    ) -> None:
        super().__init__(key, spec, on_exit, refs_of)
        self.script = script
        self.calls: list[FakeCall] = []
        self._process: _FakeProcess | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child.setblocking(False)
        self._process = _FakeProcess(self, child, self.script)
        # The handle's own background tasks stand for the process (as pump and reaper do).
        self._background.start_soon(self._process.serve, name=f"fake worker {self.key}")
        self._spare = parent.dup()  # as WorkerHandle.start: leftover replies are read
        _, channel = await loop.create_unix_connection(
            lambda: _Channel(self, self.spec.max_frame), sock=parent
        )
        self._channel = channel
        async with asyncio.timeout(self.spec.start_timeout):
            ready = await channel.ready
        self.sandbox_level, self.sandbox_layers = ready.sandbox_level, ready.sandbox_layers
        self.state = WorkerState.READY

    def cancel(self, call_id: int) -> None:
        # WorkerHandle.cancel, with the fake's interrupt for the ctrl socket and SIGUSR1.
        live = self.state == WorkerState.READY and self._process is not None
        fut = self._router.abandon(call_id, open_=live)
        if fut is None:
            return
        fut.cancel()
        if live and self._process is not None:
            self._process.interrupt(call_id)
            self._arm_kill_timer(call_id)

    def exit(self, code: int = -9) -> None:
        """The worker process dies now (as if killed by a signal)."""
        if self._process is not None:
            self._process.exit(code)

    @property
    def frames_received(self) -> int:
        """Request frames its process has read so far (calls, releases, ...)."""
        return self._process.received if self._process is not None else 0

    async def wait_received(self, count: int) -> None:
        """Until its process has read ``count`` request frames: a call routed to it has
        arrived, though it may wait behind the running one."""
        assert self._process is not None
        await self._process.wait_received(count)

    async def _wait_exited(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.exited.wait())
        await self._background.aclose()


class InMemoryServer(NamedTuple):
    """What ``serve_in_memory`` yields."""

    client: Client
    bridge: Bridge
    service: BridgeService
    workers: list[FakeWorker]


def _default_config() -> ServerConfig:
    return ServerConfig(pools=(PoolConfig(workers=1),))


@asynccontextmanager
async def serve_in_memory(
    script: Script, *, config: ServerConfig | None = None, timeout: float | None = None
) -> AsyncIterator[InMemoryServer]:
    """Serve a bridge of fake workers running ``script`` to a connected ``Client`` (see
    the module docstring). ``config`` defaults to one pool of one worker."""
    workers: list[FakeWorker] = []

    def factory(
        key: WorkerKey,
        spec: WorkerSpec,
        on_exit: Callable[[WorkerHandle], None],
        refs_of: Callable[[WorkerKey], int],
    ) -> WorkerHandle:
        worker = FakeWorker(key, spec, on_exit, refs_of, script=script)
        workers.append(worker)
        return worker

    bridge = Bridge(config or _default_config(), worker_factory=factory)
    await bridge.start()
    try:
        service = BridgeService(bridge)
        async with ChannelFor([service]) as channel:
            client = Client.over_channel(channel, timeout=timeout)
            try:
                await client.connect()
                yield InMemoryServer(client, bridge, service, workers)
            finally:
                await client.close()
    finally:
        await bridge.close()
