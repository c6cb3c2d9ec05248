"""The worker child's frame loop: ``python -m snakebridge_server.worker``.

Runs in the worker child process, one call at a time on its main thread, reading frames
(``frames``) from the channel socket the server passed as an inherited fd and answering
each through a dispatch table keyed by opcode. Kept import-light (no grpclib, no
betterproto, no anyio) so a worker starts fast and idles small. Refs live in ``refs``,
name resolution in ``names``, iteration in ``streams``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any, Final

from snakebridge.errors import (
    BadRequest,
    BridgeError,
    HelperNotFound,
    LimitExceeded,
    PolicyError,
    RefNotFound,
    SerializationError,
)
from snakebridge.wire import codec, remote
from snakebridge.wire.codec import RefPayload
from snakebridge.wire.constants import (
    KIND_CLASS,
    KIND_FUNCTION,
    KIND_GET_ATTR,
    KIND_HELPER,
    KIND_METHOD,
    KIND_MODULE_ATTR,
    KIND_SET_ATTR,
)
from snakebridge.wire.values import loaded_type

from ..channel import (
    CANCEL,
    DEFAULT_MAX_FRAME,
    HEADER,
    OP_CALL,
    OP_INTROSPECT,
    OP_RELEASE,
    OP_RELEASE_SESSION,
    OP_STREAM_CLOSE,
    OP_STREAM_NEXT,
    OP_STREAM_OPEN,
    OP_STREAM_PULL,
    pack_frame_parts,
    unpack_message,
)
from ..frames import (
    USER_CODE_OPS,
    Call,
    Err,
    Introspect,
    NextItem,
    Ok,
    Ready,
    Release,
    ReleaseSession,
    Reply,
    Request,
    StreamBatch,
    StreamClose,
    StreamNext,
    StreamOpen,
    StreamPull,
)
from ..refids import check_ref_id
from ..sandbox import SandboxSpec
from ..sandbox.apply import CpuBudget, read_paths, write_paths
from ..sandbox.apply import apply as apply_sandbox
from ..sandbox.explain import SandboxFacts
from ..sandbox.policy import CallPolicy
from .helpers import HelperLoadError, describe_helpers, load_helpers
from .introspect import describe
from .names import (
    ROUTINE_TYPES,
    format_strings,
    is_formatter,
    qualified_name,
    resolve,
    shared_by_every_caller,
    walk,
)
from .output import end_of_call, set_correlation_id
from .output import install as install_logging
from .refs import OverBudget, RefMinter, RefTable, type_name
from .streams import (
    DONE,
    ERROR,
    MORE,
    BatchLimits,
    CallInterrupted,
    WorkerStream,
    array_header,
)

_NO_SANDBOX: Final = SandboxSpec()
_CALLING_KINDS: Final = frozenset({KIND_FUNCTION, KIND_CLASS, KIND_METHOD, KIND_HELPER})
_MAX_REFS: Final = 100_000
_MAX_RESULT: Final = 64 * 1024 * 1024
_MAX_STREAMS: Final = 1024


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """The worker's command line (the server's ``supervisor.spawn`` writes it)."""

    fd: int
    ctrl_fd: int
    ref_prefix: str  # "<boot>.<pool>.<slot>.<incarnation>."
    pool: str
    max_refs: int = _MAX_REFS
    max_frame: int = DEFAULT_MAX_FRAME
    max_result: int = _MAX_RESULT
    helpers: tuple[str, ...] = ()
    helper_allow: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    python_path: tuple[str, ...] = ()  # directories put first on sys.path
    max_streams: int = _MAX_STREAMS
    sandbox: SandboxSpec = _NO_SANDBOX
    log_level: str = "info"
    concurrency: int = 1  # above 1: ``worker.concurrent`` serves the channel
    threads: bool = False  # sync functions in a thread pool of ``concurrency``

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> WorkerArgs:
        parser = argparse.ArgumentParser(prog="snakebridge_server.worker")
        parser.add_argument("--fd", type=int, required=True)
        parser.add_argument("--ctrl-fd", type=int, required=True)
        parser.add_argument("--ref-prefix", required=True)
        parser.add_argument("--pool", required=True)
        parser.add_argument("--max-refs", type=int, default=_MAX_REFS)
        parser.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME)
        parser.add_argument("--max-result", type=int, default=_MAX_RESULT)
        parser.add_argument("--helpers", default="[]")  # JSON list of sources
        parser.add_argument("--helper-allow", default="[]")  # JSON list of names
        parser.add_argument("--preload", default="")  # comma-separated module names
        parser.add_argument("--python-path", default="[]")  # JSON list of directories
        parser.add_argument("--max-streams", type=int, default=_MAX_STREAMS)
        parser.add_argument("--sandbox", default="{}")  # SandboxSpec as JSON
        parser.add_argument("--log-level", default="info")
        parser.add_argument("--concurrency", type=int, default=1)
        parser.add_argument("--threads", action="store_true")
        ns = parser.parse_args(argv)
        return cls(
            fd=ns.fd,
            ctrl_fd=ns.ctrl_fd,
            ref_prefix=ns.ref_prefix,
            pool=ns.pool,
            max_refs=ns.max_refs,
            max_frame=ns.max_frame,
            max_result=ns.max_result,
            helpers=tuple(json.loads(ns.helpers)),
            helper_allow=tuple(json.loads(ns.helper_allow)),
            preload=tuple(filter(None, ns.preload.split(","))),
            python_path=tuple(json.loads(ns.python_path)),
            max_streams=ns.max_streams,
            sandbox=SandboxSpec.from_json(ns.sandbox),
            log_level=ns.log_level,
            concurrency=max(1, ns.concurrency),
            threads=ns.threads,
        )


@dataclass(frozen=True, slots=True)
class Confinement:
    """What the sandbox became once applied, and the rules the worker enforces itself."""

    level: str = "none"
    layers: tuple[str, ...] = ()
    policy: CallPolicy | None = None  # None: no name policy enforced
    max_call_cpu: float = 0.0  # 0: no per-call CPU budget
    facts: SandboxFacts | None = None  # to tell sandbox refusals apart (None: no sandbox)


_UNCONFINED: Final = Confinement()


class Worker:
    """The worker's state and its frame loop (``serve``)."""

    def __init__(self, args: WorkerArgs, confinement: Confinement = _UNCONFINED) -> None:
        self.sock = socket.socket(fileno=args.fd)
        self.sock.setblocking(True)
        self.ctrl = socket.socket(fileno=args.ctrl_fd)
        self.ctrl.setblocking(False)
        self.rfile = self.sock.makefile("rb", buffering=256 * 1024)
        self.refs = RefTable(args.ref_prefix, args.pool, args.max_refs)
        self.max_frame = args.max_frame
        self.max_result = args.max_result
        self.helpers: dict[str, Any] = load_helpers(args.helpers, args.helper_allow)
        self.current = 0  # call id running in user code, 0 when idle
        self.last_done = 0
        self.cancelled: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.concurrent: Any = None  # the ``worker.concurrent.ConcurrentServer``, if any
        self.streams: dict[int, WorkerStream] = {}
        self.max_streams = args.max_streams
        self._next_stream = 1
        self.sandbox_level = confinement.level
        self.sandbox_layers = list(confinement.layers)
        policy = confinement.policy
        self.policy: CallPolicy | None = policy if policy is not None and policy.enforced else None
        facts = confinement.facts
        self.explain = facts.explain if facts is not None else None
        cpu = confinement.max_call_cpu
        self.cpu = CpuBudget(cpu, self._cpu_exceeded) if cpu else None
        # The frame loop's dispatch table: each opcode's frame type and handler.
        self.handlers: dict[int, tuple[type[Request], Callable[[Any], Reply]]] = {
            OP_CALL: (Call, self.call),
            OP_RELEASE: (Release, self.release),
            OP_RELEASE_SESSION: (ReleaseSession, self.release_session),
            OP_STREAM_OPEN: (StreamOpen, self.stream_open),
            OP_STREAM_PULL: (StreamPull, self.stream_pull),
            OP_STREAM_CLOSE: (StreamClose, self.stream_close_frame),
            OP_STREAM_NEXT: (StreamNext, self.stream_next),
            OP_INTROSPECT: (Introspect, self.introspect),
        }

    def describe(self, exc: BaseException) -> list[Any]:
        """``[type, message, traceback, detail]`` of an exception user code raised, as an
        ``Err`` or a stream's error carries it, with a note when the sandbox refused what
        it did (``sandbox.explain``)."""
        described = remote.describe(exc, self.explain)
        return [
            described["type"],
            described["message"],
            described["traceback"],
            remote.pack_extra(described),
        ]

    # -- cancellation -------------------------------------------------------------------

    def _cpu_exceeded(self) -> None:
        # With concurrency, only a sync call running on the main thread can be stopped
        # here; the server's CPU backstop handles the rest.
        running = self.current if self.concurrent is None else self.concurrent.inline
        if running:
            raise CpuExceeded

    def on_cancel_signal(self, signum: int, frame: FrameType | None) -> None:
        while True:
            try:
                data = self.ctrl.recv(4096)
            except BlockingIOError:
                break
            if not data:
                break
            for off in range(0, len(data) - len(data) % CANCEL.size, CANCEL.size):
                (call_id,) = CANCEL.unpack_from(data, off)
                if call_id > self.last_done:
                    self.cancelled.add(call_id)
        if self.current and self.current in self.cancelled:
            self.cancelled.discard(self.current)
            raise CallInterrupted

    # -- frame loop ---------------------------------------------------------------------

    def send(self, frame: Ready | Reply) -> None:
        for part in pack_frame_parts(frame.pack()):
            self.sock.sendall(part)

    def read_frame(self) -> bytes | None:
        header = self.rfile.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        (length,) = HEADER.unpack(header)
        if length > self.max_frame:
            raise SystemExit(f"frame of {length} bytes from server exceeds {self.max_frame}")
        body: bytes = self.rfile.read(length)
        if len(body) < length:
            return None
        return body

    def send_ready(self) -> None:
        self.send(
            Ready(
                os.getpid(),
                sys.version.split()[0],
                self.sandbox_level,
                self.sandbox_layers,
                describe_helpers(self.helpers),
            )
        )

    def serve(self) -> None:
        """Answer requests one at a time, in order, until the server closes the channel
        (a pool of concurrency 1; ``worker.concurrent`` serves the others)."""
        self.send_ready()
        while True:
            body = self.read_frame()
            if body is None:
                return  # server closed the channel: exit quietly
            message = unpack_message(body)
            op, call_id = message[0], message[1]
            user_code = op in USER_CODE_OPS
            if user_code:
                set_correlation_id(message[-1])  # user-code frames end with it
            if call_id in self.cancelled:
                self.cancelled.discard(call_id)
                self.last_done = call_id
                self.send(Err.of(call_id, "CallCancelled", "cancelled before it ran"))
                continue
            if self.cpu is not None and user_code:
                self.cpu.arm()
            try:
                reply = self.dispatch(op, call_id, message)
            except CpuExceeded:
                text = f"the call used more than its {self.cpu.seconds:g} CPU seconds"  # type: ignore[union-attr]
                reply = Err.of(call_id, "LimitExceeded", text)
            except CallInterrupted:
                reply = Err.of(call_id, "CallCancelled", "call interrupted")
            self.current = 0
            self.last_done = call_id
            if user_code:
                end_of_call()
            self.send(reply)

    def dispatch(self, op: int, call_id: int, message: list[Any]) -> Reply:
        try:
            entry = self.handlers.get(op)
            if entry is None:
                raise BadRequest(f"unknown opcode {op}")
            frame_type, handler = entry
            return handler(frame_type.unpack(message))
        except BridgeError as exc:
            return Err.of(call_id, type(exc).__name__, exc.message)

    def release(self, frame: Release) -> Reply:
        counts = self.refs.release(frame.ref_ids, frame.session_id)
        return Ok(frame.call_id, _pairs(counts), 0)

    def release_session(self, frame: ReleaseSession) -> Reply:
        return Ok(frame.call_id, self.refs.release_session(frame.session_id), 0)

    def stream_close_frame(self, frame: StreamClose) -> Reply:
        return Ok(frame.call_id, self.stream_close(frame.stream_id), 0)

    def call(self, frame: Call) -> Reply:
        call_id, kind, module, name, target_ref, session_id, args, ref_budget, _ = frame
        mint = RefMinter(self.refs, session_id, ref_budget, self._vetted)
        target = self._vetted(self.refs.get(target_ref, session_id)) if target_ref else None
        decoded = self._decode_args(args, session_id)
        outcome = self._user_step(
            call_id,
            mint,
            lambda: self.run_user_code(kind, module, name, target, decoded),
            lambda result: self._encode_result(kind, result, mint),
            "the result",
            "return a ref or a smaller value",
        )
        if not isinstance(outcome, bytes):
            return outcome
        return Ok(call_id, outcome, len(mint.created))

    def _user_step(
        self,
        call_id: int,
        mint: RefMinter,
        run: Callable[[], Any],
        encode: Callable[[Any], bytes],
        what: str,
        advice: str,
    ) -> bytes | Err:
        """Run user code as ``call_id`` (interruptible) and encode its value with ``mint``.
        Returns the encoding, or the R_ERR reply for an exception of the user code; refs
        are rolled back on any failure."""
        self.current = call_id
        try:
            try:
                value = run()
            finally:
                self.current = 0
            encoded = encode(value)
        except OverBudget:
            raise mint.over_budget() from None
        except (CallInterrupted, BridgeError):
            mint.rollback()
            raise
        except BaseException as exc:
            # Anything user code raises (sys.exit(), CancelledError, GeneratorExit, ...) is
            # an error of that call, never a reason for the worker to die.
            mint.rollback()
            return Err(call_id, "RemoteError", *self.describe(exc))
        if len(encoded) > self.max_result:
            mint.rollback()
            raise LimitExceeded(
                f"{what} is {len(encoded)} bytes, over the {self.max_result}-byte "
                f"message limit; {advice}"
            )
        return encoded

    def _encode_result(self, kind: int, result: Any, mint: RefMinter) -> bytes:
        if kind == KIND_CLASS:
            return codec.encode(mint(result, stream=False))
        try:
            return codec.encode(result, on_unencodable=mint)
        except SerializationError:
            # Cyclic or too deep to carry by value: hand the whole result out as one ref,
            # dropping the refs the failed attempt made for its leaves.
            mint.rollback()
            return codec.encode(mint(result))

    # -- streams ------------------------------------------------------------------------

    def stream_open(self, frame: StreamOpen) -> Reply:
        """Start iterating (a call's result, a ref's method result, or a ref itself) and
        answer with the first batch."""
        call_id, kind, module, name, target_ref, session_id, args, ref_budget = frame[:8]
        if len(self.streams) >= self.max_streams:
            raise LimitExceeded(f"worker has {self.max_streams} open streams, its maximum")
        target = self._vetted(self.refs.get(target_ref, session_id)) if target_ref else None
        decoded = self._decode_args(args, session_id)
        self.current = call_id
        try:
            if target_ref and not name:
                assert target is not None  # refs are never made for None
                source, owner = target, None
                if _is_iterator(target):  # the ref *is* the iterator: the ref owns it
                    owner = target_ref
            else:
                source, owner = self.run_user_code(kind, module, name, target, decoded), None
            stream = WorkerStream(source, self._get_loop, owner)
        except (CallInterrupted, BridgeError):
            raise
        except BaseException as exc:
            return Err(call_id, "RemoteError", *self.describe(exc))
        finally:
            self.current = 0
        stream_id = self._next_stream
        self._next_stream += 1
        self.streams[stream_id] = stream
        limits = BatchLimits(frame.max_items, frame.max_bytes, frame.linger)
        return self._batch(call_id, stream_id, session_id, ref_budget, limits)

    def stream_pull(self, frame: StreamPull) -> Reply:
        if frame.stream_id not in self.streams:
            raise RefNotFound(f"stream {frame.stream_id} is closed")
        limits = BatchLimits(frame.max_items, frame.max_bytes, frame.linger)
        return self._batch(
            frame.call_id, frame.stream_id, frame.session_id, frame.ref_budget, limits
        )

    def _batch(
        self, call_id: int, stream_id: int, session_id: str, budget: int, limits: BatchLimits
    ) -> Reply:
        stream = self.streams[stream_id]
        mint = RefMinter(self.refs, session_id, budget, self._vetted)

        def encode_chunk(chunk: list[Any]) -> bytes:
            made = len(mint.created)
            try:
                return codec.encode(chunk, on_unencodable=mint)
            except SerializationError:
                mint.rollback(since=made)  # the failed attempt's leaf refs
                # An item too cyclic or deep to carry by value goes out whole as a ref,
                # as a unary result would; the others stay values.
                return b"".join([array_header(len(chunk)), *(_item_or_ref(x, mint) for x in chunk)])

        self.current = call_id
        try:
            batch = stream.next_batch(limits, encode_chunk, time.monotonic)
        except OverBudget:
            self._drop_stream(stream_id)
            raise mint.over_budget() from None
        except (CallInterrupted, BridgeError):
            self._drop_stream(stream_id)
            mint.rollback()
            raise
        finally:
            self.current = 0
        if len(batch.body) > self.max_result:
            self._drop_stream(stream_id)
            mint.rollback()
            raise LimitExceeded(
                f"a stream batch ({batch.count} items) is {len(batch.body)} bytes, over the "
                f"{self.max_result}-byte message limit; yield smaller items"
            )
        error = None
        released: dict[str, int] = {}
        if batch.state != MORE:
            self.streams.pop(stream_id, None)
            if stream.owner_ref is not None and batch.state == DONE:
                # Exhausted: freed. Its opener owns it (checked when the stream opened).
                released = self.refs.release([stream.owner_ref], session_id)
        if batch.state == ERROR:
            assert batch.error is not None
            error = self.describe(batch.error)
        value = StreamBatch(stream_id, batch.body, batch.state, error, _pairs(released))
        return Ok(call_id, value, len(mint.created))

    def _drop_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            try:
                stream.close()
            except BaseException:  # a broken generator must not take the worker down
                print(f"closing stream {stream_id} raised:", file=sys.stderr)
                traceback.print_exc()  # stderr goes to the server's log

    def stream_close(self, stream_id: int) -> bool:
        """Close a stream the server abandoned; its generator's ``finally`` blocks run."""
        existed = stream_id in self.streams
        self._drop_stream(stream_id)
        return existed

    def stream_next(self, frame: StreamNext) -> Reply:
        """One item from a StreamRef (``StreamNext``): [done, encoded item]. An exhausted
        StreamRef is released."""
        call_id, ref_id, session_id, ref_budget, _ = frame
        it = self.refs.get(ref_id, session_id)
        mint = RefMinter(self.refs, session_id, ref_budget, self._vetted)

        def take() -> Any:
            if hasattr(it, "__anext__"):
                return self._get_loop().run_until_complete(_anext_or(it, _EXHAUSTED))
            return next(it, _EXHAUSTED)

        def encode(item: Any) -> bytes:
            return b"" if item is _EXHAUSTED else codec.encode(item, on_unencodable=mint)

        outcome = self._user_step(call_id, mint, take, encode, "the item", "yield smaller items")
        if not isinstance(outcome, bytes):
            return outcome
        if outcome == b"":  # exhausted: the StreamRef frees itself
            released = self.refs.release([ref_id], session_id)
            return Ok(call_id, NextItem(True, b"", _pairs(released)), 0)
        return Ok(call_id, NextItem(False, outcome, []), len(mint.created))

    def introspect(self, frame: Introspect) -> Reply:
        """Describe a module for code generation (``worker.introspect``): its import is
        user code, run and bounded like a call's; members the call policy denies are left
        out, and a denied module is a ``PolicyError``."""
        policy = self.policy

        def allowed(obj: Any) -> bool:
            try:
                self._vetted(obj, callee=True)
            except PolicyError:
                return False
            return True

        def run() -> Any:
            for name in (frame.module, *(f"{frame.module}.{s}" for s in frame.submodules)):
                if policy is not None:
                    policy.check_path(name, "")
                    self._vetted(importlib.import_module(name))
            return describe(
                frame.module,
                allowed,
                names=frame.names,
                submodules=frame.submodules,
                version_only=frame.version_only,
            )

        mint = RefMinter(self.refs, "", 0, self._vetted)
        outcome = self._user_step(
            frame.call_id, mint, run, codec.encode, "the description", "ask for fewer names"
        )
        if not isinstance(outcome, bytes):
            return outcome
        return Ok(frame.call_id, outcome, 0)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _decode_args(self, args: bytes, session_id: str) -> Any:
        """``args`` decoded, each ref in them replaced by its object, if ``session_id``
        owns it (the ``session_id`` a client wrote into the ref payload means nothing)."""
        if not args:
            return None
        return codec.decode(
            args,
            ref_factory=lambda payload: self._lookup(payload, session_id),
            resolve_type=self._resolve_type,
        )

    def _resolve_type(self, name: str) -> type | None:
        """The class of an enum member or record in the arguments, if its module is loaded
        and the call policy lets calls reach it (building a record calls its class)."""
        cls = loaded_type(name)
        return None if cls is None else self._vetted(cls, callee=True)

    def _lookup(self, payload: RefPayload, session_id: str) -> Any:
        # The server never decodes args, so a malformed id inside them is first seen here:
        # BadRequest, like one in arg_refs, not "its worker is gone".
        check_ref_id(payload.id)
        # A ref passed as an argument is vetted too: map(<posix.system>, ...) would call it.
        return self._vetted(self.refs.get(payload.id, session_id))

    def callee(
        self, kind: int, module: str, name: str, target: Any, decoded: Any
    ) -> tuple[Callable[..., Any], list[Any], dict[str, Any]] | None:
        """What a calling request (function, class, method, helper) calls, with its
        arguments, checked against the policy; None for the attribute kinds."""
        if kind not in _CALLING_KINDS:
            return None
        args, kwargs = _split_args(decoded)
        if kind == KIND_METHOD:
            fn = self._vetted(walk(target, name), callee=True)
        elif kind == KIND_HELPER:
            try:
                fn = self.helpers[name]
            except KeyError:
                raise HelperNotFound(f"no helper named {name!r}") from None
        else:
            fn = self._vetted(resolve(module, name), callee=True)
        if self.policy is not None and kind != KIND_HELPER:
            for text, field_name in format_strings(fn, args, kwargs):
                self.policy.check_format(text, field_name=field_name)
        return fn, args, kwargs

    def run_user_code(self, kind: int, module: str, name: str, target: Any, decoded: Any) -> Any:
        called = self.callee(kind, module, name, target, decoded)
        if called is not None:
            fn, args, kwargs = called
            result = fn(*args, **kwargs)
            if inspect.iscoroutine(result):
                result = self._run_coroutine(result)
            # pydoc.locate("os.system") must not hand out what a name could not reach.
            return self._vetted(result)
        return self.attribute(kind, module, name, target, decoded)

    def attribute(self, kind: int, module: str, name: str, target: Any, decoded: Any) -> Any:
        """Run an attribute request (module attribute, get, set): no user function."""
        if kind == KIND_MODULE_ATTR:
            return self._vetted(resolve(module, name))
        if kind == KIND_GET_ATTR:
            return self._vetted(walk(target, name))
        if kind == KIND_SET_ATTR:
            owner_path, _, attr = name.rpartition(".")
            owner = self._vetted(walk(target, owner_path)) if owner_path else target
            if self.policy is not None and shared_by_every_caller(owner):
                # A module, class or function is the same object for every client of
                # this worker: setting math.sqrt, or the policy's own class attributes,
                # would change what every later call does.
                what = "module" if isinstance(owner, ModuleType) else type_name(owner)
                if isinstance(owner, type):
                    what = "class"
                raise PolicyError(
                    f"set_attr on {what} {qualified_name(owner)!r} is not "
                    f"allowed at sandbox level {self.policy.level!r}: only instances' "
                    "attributes can be set"
                )
            setattr(owner, attr, decoded)
            return None
        raise BadRequest(f"unknown call kind {kind}")

    def _vetted(self, obj: Any, *, callee: bool = False) -> Any:
        """``obj``, unless the sandbox policy denies what it is (``logging.os.system`` is
        ``posix.system`` whatever path led to it). Unless it is the callee a request
        named, a private or dunder function, or a formatter (``str.format``, whose format
        string walks attributes), is refused too: as a ref it could be handed to ``map``
        or ``operator.call``, which call it with arguments the worker never sees."""
        if self.policy is not None:
            qualified = qualified_name(obj)
            if qualified:
                self.policy.check_qualified(qualified)
            if not callee and isinstance(obj, ROUTINE_TYPES):
                self.policy.check_routine(qualified, obj.__name__)
                if is_formatter(obj):
                    raise PolicyError(
                        f"{qualified!r} formats with attribute access; it cannot be handed "
                        f"over as a ref at sandbox level {self.policy.level!r}"
                    )
        return obj

    def _run_coroutine(self, coro: Any) -> Any:
        return self._get_loop().run_until_complete(coro)


class CpuExceeded(CallInterrupted):
    """The running call went past its CPU budget (SIGXCPU)."""


_EXHAUSTED: Final = object()


async def _anext_or(it: Any, default: Any) -> Any:
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return default


def _is_iterator(obj: Any) -> bool:
    """Whether ``obj`` is itself an iterator (sync or async), not just iterable."""
    if hasattr(type(obj), "__anext__"):
        return True
    return hasattr(type(obj), "__next__") and iter(obj) is obj


def _item_or_ref(item: Any, mint: RefMinter) -> bytes:
    made = len(mint.created)
    try:
        return codec.encode(item, on_unencodable=mint)
    except SerializationError:
        mint.rollback(since=made)
        return codec.encode(mint(item))


def _pairs(counts: dict[str, int]) -> list[list[Any]]:
    return [[session, n] for session, n in counts.items()]


def _split_args(decoded: Any) -> tuple[list[Any], dict[str, Any]]:
    if decoded is None:
        return [], {}
    if (
        type(decoded) is not list
        or len(decoded) != 2
        or type(decoded[0]) not in (list, tuple)
        or type(decoded[1]) is not dict
        or not all(type(k) is str for k in decoded[1])
    ):
        raise BadRequest("args must encode [positional list, keyword dict with str keys]")
    return list(decoded[0]), decoded[1]


def _set_parent_death_signal() -> None:
    """Die with the server even if it is SIGKILLed (Linux only; best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
    if os.getppid() == 1:  # the server died before prctl took effect
        os._exit(70)


class _FindsNothing:
    """The path-entry finder of a directory nothing may be imported from."""

    @staticmethod
    def find_spec(fullname: str, target: Any = None) -> None:
        return None

    @staticmethod
    def invalidate_caches() -> None:
        pass


def keep_off_import_path(*dirs: str) -> None:
    """Take ``dirs`` (the scratch dir, the start-up cwd) and every relative entry off
    ``sys.path``, and make the import system find nothing under them even when something
    puts them back (``unittest`` discovery does). A client can write files there: a
    module it wrote must never be importable. ``python -m`` put the cwd first."""
    roots = [os.path.realpath(d) for d in dirs if d]

    def under_a_root(entry: str) -> bool:
        if not entry or not os.path.isabs(entry):
            return True  # relative to the cwd, which is the scratch dir
        real = os.path.realpath(entry)
        return any(real == root or real.startswith(root + os.sep) for root in roots)

    def hook(entry: str) -> _FindsNothing:
        if under_a_root(entry):
            return _FindsNothing()
        raise ImportError  # not ours: the next hook (FileFinder, zipimport) decides

    sys.path[:] = [entry for entry in sys.path if not under_a_root(entry)]
    sys.path_hooks.insert(0, hook)
    for entry in [e for e in sys.path_importer_cache if under_a_root(e)]:
        del sys.path_importer_cache[entry]


def main(argv: list[str] | None = None) -> None:
    args = WorkerArgs.parse(argv)
    _set_parent_death_signal()
    # The server owns shutdown: a terminal's Ctrl-C must not kill workers mid-call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = args.sandbox
    if spec.level != "none":
        keep_off_import_path(os.getcwd(), spec.scratch)
    # Before the Worker exists: its helpers are user code and run inside the sandbox too.
    level, layers = apply_sandbox(spec)
    # The operator's own code (--python-path), ahead of site-packages as PYTHONPATH would
    # be. Readable because the server put these directories in ``spec.read_paths``.
    sys.path[0:0] = [p for p in args.python_path if p not in sys.path]
    install_logging(args.log_level)  # before helpers, which are user code that may log
    sandboxed = spec.level != "none"
    facts = SandboxFacts.of(
        args.pool, spec.level, layers, read_paths(spec), write_paths(spec), spec.max_memory
    )
    confinement = Confinement(
        level,
        tuple(layers),
        CallPolicy.build(spec.level, extra_deny=spec.deny_modules),
        spec.max_call_cpu if sandboxed else 0.0,
        facts if sandboxed else None,
    )
    # The operator's preloads, inside the sandbox like everything after it: a module that
    # fails to import fails the worker's start, with its traceback in the server's log.
    for module_name in args.preload:
        importlib.import_module(module_name)
    try:
        worker = Worker(args, confinement)
    except HelperLoadError as exc:
        # The cause's traceback for the operator, then one line naming the source: the
        # server quotes the last lines of a worker that failed to start.
        if exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"snakebridge worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    try:
        if args.concurrency > 1:
            from .concurrent import ConcurrentServer

            ConcurrentServer(worker, args.concurrency, threads=args.threads).serve()
        else:
            signal.signal(signal.SIGUSR1, worker.on_cancel_signal)
            worker.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
