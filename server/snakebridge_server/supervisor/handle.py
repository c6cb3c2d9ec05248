"""One worker process and its channel, seen from the server (the async shell).

Runs in the server process.

Lifecycle, after anyio's ``to_process``: spawn (exec of a fresh interpreter, never a fork
of the server), READY handshake under a timeout, length-prefixed frames over a socketpair,
worker stdout/stderr captured and logged line by line, and on any failure kill + reap: the
call that was running fails with ``WorkerCrashed``, the calls queued behind it with
``NeverStarted`` (the bridge re-routes those, since they never ran).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

from snakebridge.errors import (
    BridgeError,
    LimitExceeded,
    RemoteError,
    WorkerCrashed,
    error_class,
)
from snakebridge.wire import remote

from ..background import Background
from ..channel import (
    CANCEL,
    R_ERR,
    R_OK,
    R_READY,
    STREAM_MORE,
    FrameDecoder,
    frame_head,
    pack_frame_parts,
    unpack_reply,
)
from ..coalesce import CoalescingTransport
from ..frames import (
    Call,
    Err,
    Introspect,
    Ok,
    Ready,
    Release,
    ReleaseSession,
    Request,
    StreamBatch,
    StreamClose,
    StreamNext,
    StreamOpen,
    StreamPull,
)
from ..logs import current_correlation_id
from ..refids import WorkerKey
from ..sandbox import SandboxSpec
from ..sandbox.policy import level_at_least
from ..sandbox.report import root_reason
from ..sandbox.spawn import sandbox_uid, unreadable_by_others, worker_env
from .output import OutputPump
from .router import ConcurrentReplyRouter, FalseFrame, ReplyRouter
from .spawn import WorkerSpec, WorkerStartError, check_runtime, read_cpu_seconds, worker_argv

log = logging.getLogger("snakebridge.worker")


class WorkerLied(Exception):
    """A worker sent what cannot be the honest answer to what the server asked: a reply
    for a call not in flight or out of order, more new refs than the call's budget, a
    malformed value. Its user code may have written to the channel; the server kills the
    worker (its calls fail with ``WorkerCrashed``) and the pool replaces it. Raised and
    handled inside the server only."""


class WorkerState(StrEnum):
    """Where a worker is in its life. A str, so ``Describe`` reports it as it is."""

    STARTING = "starting"
    READY = "ready"  # taking calls (unless retiring)
    CLOSING = "closing"  # asked to exit (EOF on its channel)
    DEAD = "dead"


READY: Final = WorkerState.READY
DEAD: Final = WorkerState.DEAD


class NeverStarted(WorkerCrashed):
    """The worker died while this call was still queued behind another: it never ran, so
    the bridge re-routes it instead of reporting a crash."""


@dataclass(slots=True)
class StreamReply:
    """One batch of a stream, as the worker answered it."""

    stream_id: int
    body: bytes
    state: int  # STREAM_MORE | STREAM_DONE | STREAM_ERROR
    error: list[str] | None
    released: list[list[Any]]  # [[session_id, count]] of refs the worker freed itself
    new_refs: int = 0


def _stream_reply(reply: Ok) -> StreamReply:
    batch: StreamBatch = reply.value
    return StreamReply(*batch, reply.new_refs)


def _ignore_outcome(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved, so asyncio does not log it as never retrieved


class _Channel(asyncio.Protocol):
    """Frames in, futures resolved. All state changes happen in callbacks, no tasks."""

    def __init__(self, handle: WorkerHandle, max_frame: int) -> None:
        self.handle = handle
        self.decoder = FrameDecoder(max_frame, check_head=self._check_head)
        self.transport: CoalescingTransport | None = None
        self.ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Frames sent in one loop iteration leave in one write: under load, one syscall
        # for many calls (the profile had 12% of the server in these writes).
        self.transport = CoalescingTransport(
            transport,  # type: ignore[arg-type]  # uvloop's is not an asyncio.Transport
            asyncio.get_running_loop(),
        )

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
            for body in frames:
                self._dispatch(unpack_reply(body))
            if frames and self.handle._concurrent:
                self.handle._send_held()
        except WorkerLied as exc:
            self.handle._lied(str(exc))
        except Exception as exc:  # FrameTooLarge, a malformed frame, ...: never silence
            self.handle._fail(f"broken channel: {exc!r}")

    def _check_head(self, head: bytes) -> None:
        """A large frame, before its body is buffered: it must answer a call in flight."""
        try:
            op, call_id = frame_head(head)
        except ValueError as exc:
            raise WorkerLied(str(exc)) from None
        if op == R_READY and not self.ready.done():
            return  # helper descriptions can make it large
        handle = self.handle
        if op not in (R_OK, R_ERR) or not handle._router.in_flight(call_id):
            raise WorkerLied(f"a {op=} frame for call {call_id}, which is not in flight")

    def _dispatch(self, message: list[Any]) -> None:
        op = message[0]
        if op == R_OK or op == R_ERR:
            handle = self.handle
            try:
                delivery = handle._router.received(message, open_=handle.state == READY)
            except FalseFrame as exc:
                raise WorkerLied(str(exc)) from None
            if delivery is None:
                return  # for a call forgotten while closing: nothing waits for it
            fut, reply = delivery
            if fut is None or fut.done():
                return  # the caller gave up (cancelled / timed out) already
            if type(reply) is Ok:
                fut.set_result(reply)
            else:
                try:
                    error = _error_from(reply)  # type: ignore[arg-type]  # not an Ok: an Err
                except Exception as exc:  # a reply we cannot turn into an error: still answer
                    error = BridgeError(f"malformed error reply from the worker: {exc!r}")
                fut.set_exception(error)
        elif op == R_READY and not self.ready.done():
            try:
                self.ready.set_result(Ready.unpack(message))
            except ValueError as exc:
                self.ready.set_exception(WorkerStartError(str(exc)))
        else:
            raise WorkerLied(f"an unexpected frame of opcode {op!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(WorkerStartError("worker closed its channel during start"))
        handle = self.handle
        code = exit_status(handle.pid)
        if code is not None or handle._proc is None or handle.state == WorkerState.CLOSING:
            # Known already, or closed by us (recycling, shutdown): nothing to wait for.
            handle._fail(exit_reason(code))
            return
        # The kernel closes a dying process's files before it can be waited for: give
        # _reap a moment to say how it ended (a signal), then fail without knowing.
        handle._lost_timer = asyncio.get_running_loop().call_later(
            _EXIT_STATUS_WAIT, handle._fail, "worker process exited (its channel closed)"
        )


_EXIT_STATUS_WAIT: Final = 0.5
_SIGNAL_HINTS: Final = {
    "SIGKILL": "; the kernel's OOM killer, or another process, sent it",
    "SIGSEGV": "; a crash in native code (a C extension)",
    "SIGBUS": "; a crash in native code (a C extension)",
    "SIGABRT": "; native code aborted",
    "SIGXCPU": "; the CPU time limit",
}


def exit_status(pid: int) -> int | None:
    """How process ``pid`` ended, as ``returncode`` says it (``-N`` for signal N), if it
    has; the child stays waitable (``WNOWAIT``), so asyncio still reaps it."""
    if pid <= 0:
        return None
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (ChildProcessError, OSError):
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status


def exit_reason(code: int | None) -> str:
    """What a worker's death is reported as, naming the signal that killed it. Pure."""
    if code is None:
        return "worker process exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return (
            f"worker process exited: killed by {name} (signal {-code}){_SIGNAL_HINTS.get(name, '')}"
        )
    return f"worker process exited with code {code}"


def _error_from(err: Err) -> BridgeError:
    _, code, type_name, text, tb, detail = err
    if code == "RemoteError":
        return remote_error_of([type_name, text, tb, detail])
    return error_class(code)(text)


def remote_error_of(error: list[Any]) -> RemoteError:
    """The ``RemoteError`` a worker described as ``[type, message, traceback, detail]``
    (``frames.split_description``), bounded: the worker's user code could have written
    the frame. Never a real ``StopIteration``: awaiting a future that holds one returns
    its message as the result (the client rebuilds the class from the description)."""
    type_name, text, tb, *rest = error
    extra = remote.unpack_extra(rest[0]) if rest else {}
    described = remote.bounded({**extra, "type": type_name, "message": text, "traceback": tb})
    if described is None:
        raise ValueError(f"a remote error of type {type_name!r}")
    return remote.build(described, decode_args=False)


class WorkerHandle:
    """A live worker. ``call`` sends one frame and awaits its reply."""

    def __init__(
        self,
        key: WorkerKey,
        spec: WorkerSpec,
        on_exit: Callable[[WorkerHandle], None],
        refs_of: Callable[[WorkerKey], int] = lambda key: 0,
    ):
        """``refs_of`` counts the refs a worker holds: the server's ``SessionTable``,
        which is the one ref counter (the pool passes it)."""
        self.key = key
        self.spec = spec
        self._on_exit = on_exit
        self._refs_of = refs_of
        self.state = WorkerState.STARTING
        # Recycled: still "ready" for the calls and streams it has, but takes no new ones.
        self.retiring = False
        self.pid = 0
        self.calls_done = 0
        self.open_streams: set[int] = set()  # streams open on this worker count as load
        # A worker of concurrency 1 answers in order (``ReplyRouter``); above 1 it answers
        # in any order and the router holds back what it cannot start yet.
        self._concurrent = spec.concurrency > 1
        self._router: (
            ReplyRouter[asyncio.Future[Ok]] | ConcurrentReplyRouter[asyncio.Future[Ok]]
        ) = ConcurrentReplyRouter(spec.concurrency) if self._concurrent else ReplyRouter()
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: _Channel | None = None
        self._ctrl: socket.socket | None = None
        self._spare: socket.socket | None = None
        # Owns the output pump and the reaper; _wait_exited ends them.
        self._background = Background(f"worker {key}")
        self._kill_timers: dict[int, asyncio.TimerHandle] = {}
        self.exited = asyncio.Event()
        self.death_reason = ""
        self._output = OutputPump(key, spec.output_rate)
        self.sandbox_level = "none"
        self._cpu_mark: tuple[int, float] | None = None  # (running call id, CPU seconds)
        self.sandbox_layers: list[str] = []
        self.helper_info: list[tuple[str, str, str]] = []  # (name, signature, doc), from READY
        self.scratch = ""
        self._lost_timer: asyncio.TimerHandle | None = None  # channel closed, exit unknown
        #: A sandboxed worker of a root server left running as root (no uid of its own).
        self.runs_as_root = False
        self.node = ""  # where it runs when not a local process (a Ray actor's node)

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.key} pid={self.pid} {self.state} in_flight={self.in_flight}>"

    @property
    def in_flight(self) -> int:
        return self._router.load + len(self.open_streams)

    @property
    def concurrency(self) -> int:
        """Calls this worker runs at once (its pool's setting)."""
        return self.spec.concurrency

    @property
    def refs_held(self) -> int:
        """Refs of live sessions this worker holds, as the server's session table counts
        them (never negative)."""
        return self._refs_of(self.key)

    @property
    def alive(self) -> bool:
        """Running and taking new calls (a retiring worker only finishes its own)."""
        return self.state == READY and not self.retiring

    # -- start --------------------------------------------------------------------------

    async def _prepare_sandbox(self, env: dict[str, str]) -> tuple[SandboxSpec, int]:
        """This worker's sandbox spec (scratch dir, uid) and the uid it will switch to."""
        spec = self.spec.sandbox
        if spec.level == "none":
            return spec, 0
        uid = sandbox_uid(self.spec.sandbox_uid, self.spec.uid_offset + self.key.slot, os.geteuid())
        notes: tuple[str, ...] = ()
        if uid:
            why = unreadable_by_others(await check_runtime(self.spec.python, env))
            what = "the worker runtime"
            if why is None:  # the operator's code must be importable too
                why, what = unreadable_by_others(self.spec.python_path), "--python-path"
            if why is not None:
                notes = (f"uid: not switched, uid {uid} cannot read {what}: {why}",)
                uid = 0
        self.scratch = tempfile.mkdtemp(
            prefix=f"{self.key.pool}-{self.key.slot}-{self.key.incarnation}-",
            dir=self.spec.scratch_root or None,
        )
        if uid:
            os.chown(self.scratch, uid, uid)
        return replace(spec, scratch=self.scratch, uid=uid, notes=notes), uid

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ctrl_parent, ctrl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = worker_env(
                os.environ,
                level=self.spec.sandbox.level,
                scratch="",
                extra=dict(self.spec.env),
            )
            # The worker switches to ``sandbox.uid`` itself, first thing (uvloop's
            # subprocess_exec has no user=/group=).
            sandbox, uid = await self._prepare_sandbox(env)
            self.runs_as_root = sandbox.level != "none" and uid == 0 and os.geteuid() == 0
            if sandbox.scratch:
                env["HOME"] = env["TMPDIR"] = sandbox.scratch
            argv = worker_argv(
                self.spec, self.key, sandbox, fd=child.fileno(), ctrl_fd=ctrl_child.fileno()
            )
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(child.fileno(), ctrl_child.fileno()),
                start_new_session=True,
                env=env,
                cwd=self.scratch or None,
            )
        except BaseException as exc:
            for s in (parent, child, ctrl_parent, ctrl_child):
                s.close()
            self._remove_scratch()
            if isinstance(exc, OSError):
                raise WorkerStartError(
                    f"worker {self.key}: cannot run the interpreter {self.spec.python!r}: "
                    f"{exc.strerror or exc}"
                ) from exc
            raise
        # Only the worker may hold the child ends, so its death is our EOF.
        child.close()
        ctrl_child.close()
        self.pid = self._proc.pid
        self._ctrl = ctrl_parent
        # A second descriptor of our end of the channel: when the worker dies, replies it
        # sent that the transport has not read yet are still in the socket, and the
        # transport drops them when it closes. _fail reads them through this one first.
        self._spare = parent.dup()
        ctrl_parent.setblocking(False)
        assert self._proc.stdout is not None
        # No await before the try below: a cancelled start must still kill the process.
        self._background.start_soon(
            self._output.run, self._proc.stdout, name=f"worker {self.key} output"
        )
        self._background.start_soon(self._reap, name=f"worker {self.key} reaper")
        try:
            _, channel = await loop.create_unix_connection(
                lambda: _Channel(self, self.spec.max_frame), sock=parent
            )
            self._channel = channel
            async with asyncio.timeout(self.spec.start_timeout):
                ready = await channel.ready
            self.sandbox_level, self.sandbox_layers = ready.sandbox_level, ready.sandbox_layers
            self.helper_info = [(str(n), str(sig), str(doc)) for n, sig, doc in ready.helpers]
            if not level_at_least(self.sandbox_level, self.spec.min_sandbox):
                raise WorkerStartError(
                    f"worker {self.key} reached sandbox level {self.sandbox_level!r}, below "
                    f"min_sandbox {self.spec.min_sandbox!r}: {'; '.join(self.sandbox_layers)}"
                )
            if self.runs_as_root and self.spec.min_sandbox != "none":
                raise WorkerStartError(
                    f"worker {self.key} runs as root (uid 0), which min_sandbox "
                    f"{self.spec.min_sandbox!r} does not accept: {root_reason(self.sandbox_layers)}"
                )
        except BaseException as exc:
            if isinstance(exc, WorkerStartError):
                # It died on its own: let its last words (a traceback, usually) arrive.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self._output.done.wait()
                last = self._output.last_lines()
                if last:
                    exc = WorkerStartError(f"{exc}; its last output: {' | '.join(last)}")
            await self.kill(f"start failed: {exc!r}")
            if isinstance(exc, TimeoutError):
                raise WorkerStartError(
                    f"worker {self.key} sent no READY within {self.spec.start_timeout}s"
                ) from exc
            if isinstance(exc, WorkerStartError):
                if str(exc).startswith(f"worker {self.key}"):
                    raise
                raise WorkerStartError(f"worker {self.key} failed to start: {exc}") from exc
            raise
        self.state = READY
        log.debug("worker %s ready pid=%d", self.key, self.pid)

    async def _reap(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        if self.state != DEAD:
            self._fail(exit_reason(code))
        self._remove_scratch()
        self.exited.set()

    def _remove_scratch(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = ""

    # -- calls --------------------------------------------------------------------------

    def _send(self, frame: Request, **fields: Any) -> tuple[int, asyncio.Future[Ok]]:
        """Send ``frame`` with the next call id and ``fields`` set; its reply is checked
        against the frame's ``reply_bound`` (the ref budget sent, the ids released, else
        the worker's ref cap)."""
        if self.state != READY or self._channel is None or self._channel.transport is None:
            raise WorkerCrashed(f"worker {self.key} is not running")
        fut: asyncio.Future[Ok] = asyncio.get_running_loop().create_future()
        router = self._router
        call_id = router.next_id
        message = router.send(frame, fut, self.spec.max_refs, **fields)
        if message is not None:  # None: held back until a running call is answered
            transport = self._channel.transport
            for part in pack_frame_parts(message):
                transport.write(part)
        return call_id, fut

    def _send_held(self) -> None:
        """Send the requests the concurrent router held back that may run now."""
        if self.state != READY or self._channel is None or self._channel.transport is None:
            return
        transport = self._channel.transport
        for message in self._router.sendable():
            for part in pack_frame_parts(message):
                transport.write(part)

    async def call(self, frame: Call, ref_budget: int) -> Ok:
        """Run ``frame`` (built once per request; its call id, budget and correlation id
        are filled in here) and await its reply."""
        return await self._request(frame, ref_budget=ref_budget, cid=current_correlation_id())

    async def _request(self, frame: Request, **fields: Any) -> Ok:
        """Send one request and await its reply; cancelling the caller cancels the call."""
        call_id, fut = self._send(frame, **fields)
        try:
            reply = await fut
        except asyncio.CancelledError:
            self.cancel(call_id)
            raise
        self.calls_done += 1
        return reply

    # -- checking what the worker says --------------------------------------------------

    def _lied(self, what: str) -> None:
        """Kill a worker that sent a false report; its calls fail as in a crash."""
        if self.state == DEAD:
            return
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()  # what else it sent is not to be believed either
        log.warning(
            "worker %s (pid %d) sent a false report (%s); killing it",
            self.key,
            self.pid,
            what,
            extra={"worker": str(self.key), "pool": self.key.pool},
        )
        self._fail(f"killed: it sent a false report ({what})")

    # -- streams ------------------------------------------------------------------------

    async def stream_open(self, frame: StreamOpen, ref_budget: int) -> StreamReply:
        """Open ``frame``'s stream (built once per request, like ``call``'s frame)."""
        reply = await self._request(frame, ref_budget=ref_budget, cid=current_correlation_id())
        batch = _stream_reply(reply)
        if batch.state == STREAM_MORE:
            self.open_streams.add(batch.stream_id)
        return batch

    async def stream_pull(
        self, stream_id: int, session_id: str, ref_budget: int, limits: tuple[int, int, float]
    ) -> StreamReply:
        reply = await self._request(
            StreamPull(0, stream_id, session_id, ref_budget, *limits, current_correlation_id())
        )
        batch = _stream_reply(reply)
        if batch.state != STREAM_MORE:
            self.open_streams.discard(stream_id)
        return batch

    def stream_close(self, stream_id: int) -> None:
        """Ask the worker to close a stream we abandoned; nobody waits for the answer."""
        self.open_streams.discard(stream_id)
        if self.state != READY:
            return
        _, fut = self._send(StreamClose(0, stream_id))
        fut.add_done_callback(_ignore_outcome)

    async def stream_next(self, ref_id: str, session_id: str, ref_budget: int) -> Ok:
        """One item of a StreamRef; the reply's value is a ``NextItem``."""
        return await self._request(
            StreamNext(0, ref_id, session_id, ref_budget, current_correlation_id())
        )

    async def introspect(self, frame: Introspect) -> Ok:
        """Describe a module (``frame`` built once per request); the value is codec bytes."""
        return await self._request(frame, cid=current_correlation_id())

    async def release(self, ref_ids: list[str], session_id: str) -> dict[str, int]:
        """Free those of ``ref_ids`` that ``session_id`` owns."""
        _, fut = self._send(Release(0, ref_ids, session_id))
        return {s: n for s, n in (await fut).value}

    async def release_session(self, session_id: str) -> int:
        _, fut = self._send(ReleaseSession(0, session_id))
        count: int = (await fut).value
        return count

    def cancel(self, call_id: int) -> None:
        """Stop ``call_id``: drop it if queued, interrupt it if running; if the worker has
        not answered within the grace period, kill it (the pool replaces it)."""
        live = self.state == READY and self._ctrl is not None
        fut = self._router.abandon(call_id, open_=live)
        if fut is None:
            return  # its reply already arrived (the reader removes answered calls)
        # Still unanswered. (A timeout cancels the awaited future before we get here, so
        # "done" does not mean "answered".)
        fut.cancel()
        if not live or self._ctrl is None or self._router.answered(call_id):
            return  # (answered: a held-back call, dropped before it was ever sent)
        try:
            self._ctrl.send(CANCEL.pack(call_id))
            os.kill(self.pid, signal.SIGUSR1)
        except (BlockingIOError, ProcessLookupError, OSError):
            pass
        self._arm_kill_timer(call_id)

    def _arm_kill_timer(self, call_id: int) -> None:
        loop = asyncio.get_running_loop()
        self._kill_timers[call_id] = loop.call_later(
            self.spec.cancel_grace, self._kill_if_stuck, call_id
        )

    def _kill_if_stuck(self, call_id: int) -> None:
        self._kill_timers.pop(call_id, None)
        if self.state != READY or self._router.answered(call_id):
            return  # answered (interrupted, or skipped while queued)
        if not self._router.started(call_id):
            self._arm_kill_timer(call_id)  # still busy with an earlier call; check again later
            return
        log.warning("worker %s ignored cancellation of call %d; killing it", self.key, call_id)
        grace = self.spec.cancel_grace
        self._fail(
            f"killed: call {call_id} ignored cancellation for {grace}s",
            blamed=call_id,
            others=f"worker {self.key} was killed: another call on it (call {call_id}) "
            f"could not be interrupted within {grace:g}s of its cancellation; this call "
            "had started and may have run in part",
        )

    # -- CPU budget backstop ------------------------------------------------------------

    def watch_cpu(self) -> None:
        """The worker enforces ``--max-call-cpu`` itself (SIGXCPU), but its code runs
        there too and can raise its own soft limit or swallow the interruption. Called
        about once a second: a call still running after budget + grace CPU seconds since
        first seen gets the worker killed (the pool replaces it)."""
        budget = self.spec.sandbox.max_call_cpu
        if not budget or self.spec.sandbox.level == "none" or not self._router.waiting:
            self._cpu_mark = None
            return
        running = self._router.running
        used = read_cpu_seconds(self.pid)
        if used is None:
            return
        if self._cpu_mark is None or self._cpu_mark[0] != running:
            self._cpu_mark = (running, used)
            return
        if used - self._cpu_mark[1] > budget + self.spec.cancel_grace + 1.0:
            log.warning("worker %s: call %d ran past its CPU budget; killing it", self.key, running)
            text = f"the call used more than its {budget:g} CPU seconds"
            self._fail(
                f"killed: {text}",
                LimitExceeded(f"{text}; its worker was killed"),
                blamed=running,
                others=f"worker {self.key} was killed: it used more than {budget:g} CPU "
                f"seconds while call {running} ran; this call had started and may have run "
                "in part",
            )

    # -- death --------------------------------------------------------------------------

    def _fail(
        self,
        reason: str,
        running_error: BridgeError | None = None,
        *,
        blamed: int = 0,
        others: str = "",
    ) -> None:
        """Mark dead, fail all pending calls, kill the process. Idempotent, synchronous.
        The running call (``blamed``, if given) gets ``running_error`` if given, else
        ``WorkerCrashed``; other started calls of a concurrent worker get
        ``WorkerCrashed(others)`` when ``others`` says why; calls never started get
        ``NeverStarted``."""
        if self.state == DEAD:
            return
        self._read_leftover_replies()
        previous = self.state
        self.state = DEAD
        self.death_reason = reason
        if self._lost_timer is not None:
            self._lost_timer.cancel()
        for timer in self._kill_timers.values():
            timer.cancel()
        self._kill_timers.clear()
        for call_id, fut, running in self._router.close():
            if fut.done():
                continue
            if running and blamed and call_id != blamed and others:
                fut.set_exception(WorkerCrashed(others))
            elif running and running_error is not None and (not blamed or call_id == blamed):
                fut.set_exception(running_error)
            else:
                cls = WorkerCrashed if running else NeverStarted
                fut.set_exception(cls(f"worker {self.key} died: {reason}"))
        if self._channel is not None and self._channel.transport is not None:
            self._channel.transport.abort()
        if self._ctrl is not None:
            self._ctrl.close()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        if previous == READY:
            log.warning("worker %s (pid %d) lost: %s", self.key, self.pid, reason)
            self._on_exit(self)

    def _read_leftover_replies(self) -> None:
        """Dispatch the replies still unread in the channel, so calls the worker finished
        are answered, and the running call (the one after the last reply) is known: a
        finished call must never be reported as never started and run again elsewhere."""
        spare, self._spare = self._spare, None
        if spare is None or self._channel is None:
            return
        try:
            spare.setblocking(False)
            while True:
                try:
                    data = spare.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    break
                for body in self._channel.decoder.feed(data):
                    self._channel._dispatch(unpack_reply(body))
        except Exception as exc:  # a torn or broken frame: what came before it counted
            log.debug("worker %s: leftover replies unreadable: %r", self.key, exc)
        finally:
            spare.close()

    async def kill(self, reason: str) -> None:
        self._fail(reason)
        await self._wait_exited(5.0)

    async def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit (EOF on its channel), then SIGKILL after ``timeout``."""
        if self.state == DEAD:
            await self._wait_exited(timeout)
            return
        self.state = WorkerState.CLOSING
        if self._channel is not None and self._channel.transport is not None:
            self._channel.transport.close()
        try:
            async with asyncio.timeout(timeout):
                await self.exited.wait()
        except TimeoutError:
            pass
        self._fail("closed")
        await self._wait_exited(timeout)

    async def _wait_exited(self, timeout: float) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.exited.wait())
        await self._background.aclose()
