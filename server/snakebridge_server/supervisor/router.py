"""The replies a worker owes, and whether what it sends is one of them. Sans-IO.

Runs in the server process. ``ReplyRouter`` owns the bookkeeping of one worker's channel:
the calls sent and not answered (each with what its reply is checked against), the calls
the caller gave up on that still occupy the worker, and the last call answered. The
worker answers every request, in order, so the call after the last one answered is the
one running; the others queued behind it never started. It does no I/O and knows nothing
of asyncio: a waiter is whatever the handle hands in (a future there, anything in tests),
and every method says what to do with which waiter.

``ConcurrentReplyRouter`` is the same bookkeeping for a worker of a pool whose
``concurrency`` is above 1: replies come in any order, so the router itself holds back
user-code requests beyond the worker's concurrency (``sendable`` hands them out as calls
finish). What was sent may be running; what is still held back never started.
"""

from __future__ import annotations

from typing import Any, Generic, NamedTuple, TypeVar

from ..channel import R_OK
from ..frames import USER_CODE_OPS, Err, FalseReply, Ok, Request, unpack_ok

W = TypeVar("W")


class FalseFrame(Exception):
    """A frame that cannot be the worker's honest reply: for a call not in flight, out of
    order, over its budget or malformed. The handle kills the worker (``WorkerLied``)."""


class Delivery(NamedTuple, Generic[W]):
    """A reply and who waits for it (None: the caller gave up, or the call was forgotten)."""

    waiter: W | None
    reply: Ok | Err


class Orphan(NamedTuple, Generic[W]):
    """A call left unanswered when the worker died: ``running`` (it may have run) or
    queued behind the running one (it never started)."""

    call_id: int
    waiter: W
    running: bool


class ReplyRouter(Generic[W]):
    """Pending calls, abandoned calls and the last reply of one worker's channel."""

    __slots__ = ("_abandoned", "_asked", "_pending", "last_reply_id", "next_id")

    def __init__(self) -> None:
        self._pending: dict[int, W] = {}
        # (opcode, bound) of each call sent and not answered yet: ``frames.unpack_ok``.
        self._asked: dict[int, tuple[int, int]] = {}
        # Calls the caller gave up on that the worker has not answered yet: they still
        # occupy it, so they count as load.
        self._abandoned: set[int] = set()
        self.next_id = 1
        self.last_reply_id = 0  # the worker answers in order: it is busy with the next id

    def __repr__(self) -> str:
        return (
            f"<ReplyRouter pending={sorted(self._pending)} abandoned={sorted(self._abandoned)} "
            f"last_reply={self.last_reply_id}>"
        )

    @property
    def load(self) -> int:
        """Calls the worker still owes a reply: waited for or abandoned."""
        return len(self._pending) + len(self._abandoned)

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    @property
    def running(self) -> int:
        """The call the worker is busy with, if it is busy at all."""
        return self.last_reply_id + 1

    def in_flight(self, call_id: int) -> bool:
        return call_id in self._pending or call_id in self._abandoned

    def send(self, frame: Request, waiter: W, max_refs: int, **fields: Any) -> list[Any]:
        """``frame`` with the next call id and ``fields`` set, recorded as owed to
        ``waiter``, as the array to pack. Its reply is checked against the frame's
        ``reply_bound`` (``max_refs``: the worker's ref cap)."""
        call_id = self.next_id
        self.next_id += 1
        frame = frame._replace(call_id=call_id, **fields)
        message = frame.pack()
        self._pending[call_id] = waiter
        self._asked[call_id] = (message[0], frame.reply_bound(max_refs))
        return message

    def received(self, message: list[Any], *, open_: bool) -> Delivery[W] | None:
        """What an ``R_OK``/``R_ERR`` frame answers; ``FalseFrame`` when it cannot be the
        worker's honest reply. A reply must be for the call after the last one answered:
        a late reply to a call the caller gave up on is in order too; a reply for an id
        never sent, answered already, or skipped over is not. None: a reply for a call
        forgotten while the channel closes (``open_`` False), which nobody waits for."""
        call_id = message[1]
        expected = self.last_reply_id + 1
        if type(call_id) is not int or call_id != expected or call_id >= self.next_id:
            raise FalseFrame(f"a reply for call {call_id!r}; the next reply is for {expected}")
        asked = self._asked.pop(call_id, None)
        if asked is None:
            if open_:
                raise FalseFrame(f"a reply for call {call_id}, which is not in flight")
            return None
        reply: Ok | Err
        if message[0] == R_OK:
            try:
                reply = unpack_ok(message, *asked)
            except FalseReply as exc:
                raise FalseFrame(str(exc)) from None
        else:
            try:
                reply = Err.unpack(message)
            except ValueError as exc:  # still an answer: the caller gets an error
                reply = Err.of(call_id, "BridgeError", f"malformed error reply: {exc}")
        self.last_reply_id = call_id
        self._abandoned.discard(call_id)
        return Delivery(self._pending.pop(call_id, None), reply)

    def abandon(self, call_id: int, *, open_: bool) -> W | None:
        """The caller gave up on ``call_id``: its waiter (None if answered already). While
        ``open_``, the worker still owes the reply, so the call still counts as load."""
        waiter = self._pending.pop(call_id, None)
        if waiter is not None and open_:
            self._abandoned.add(call_id)
        return waiter

    def answered(self, call_id: int) -> bool:
        return self.last_reply_id >= call_id

    def started(self, call_id: int) -> bool:
        """Whether the worker may have begun ``call_id`` (it runs requests in order)."""
        return self.running >= call_id

    def sendable(self) -> tuple[list[Any], ...]:
        """Requests held back that may go now: never any (each is sent at once)."""
        return ()

    def close(self) -> list[Orphan[W]]:
        """The worker is gone: every call still waited for, each marked running or not;
        nothing is owed any more."""
        running = self.running
        orphans = [Orphan(i, w, i == running) for i, w in self._pending.items()]
        self._pending = {}
        self._abandoned.clear()
        self._asked.clear()
        return orphans


class ConcurrentReplyRouter(Generic[W]):
    """The pending calls of a worker that runs up to ``concurrency`` user-code requests
    at once and answers them in any order.

    A user-code request (``frames.USER_CODE_OPS``) beyond ``concurrency`` unanswered ones
    is held back here, not sent: ``send`` returns None for it and ``sendable`` hands it
    out once a running one is answered or abandoned-and-answered. Other requests (a
    release, a stream close) are sent at once and do not count. So when the worker dies,
    the calls sent may have run (``WorkerCrashed``) and those held back never started
    (the bridge routes them again).
    """

    __slots__ = (
        "_abandoned",
        "_asked",
        "_held",
        "_pending",
        "_running",
        "_sent_at",
        "concurrency",
        "next_id",
    )

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.concurrency = concurrency
        self._pending: dict[int, W] = {}  # waited for: sent or held back
        self._asked: dict[int, tuple[int, int]] = {}  # sent, not answered: (opcode, bound)
        # Held back, in order: the message to send and its reply bound.
        self._held: dict[int, tuple[list[Any], int]] = {}
        self._abandoned: set[int] = set()  # sent, the caller gave up, not answered yet
        self._running = 0  # user-code requests sent and not answered
        self._sent_at: dict[int, int] = {}  # user-code requests sent: call id -> call id
        self.next_id = 1

    def __repr__(self) -> str:
        return (
            f"<ConcurrentReplyRouter concurrency={self.concurrency} running={self._running} "
            f"held={len(self._held)} pending={len(self._pending)} "
            f"abandoned={len(self._abandoned)}>"
        )

    @property
    def load(self) -> int:
        """Calls the worker still owes a reply or has not been sent yet."""
        return len(self._pending) + len(self._abandoned)

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    @property
    def running(self) -> int:
        """The oldest user-code request sent and not answered (0: none): what the CPU
        backstop watches."""
        return next(iter(self._sent_at), 0)

    def in_flight(self, call_id: int) -> bool:
        """Whether a reply for ``call_id`` is owed (sent, not answered)."""
        return call_id in self._asked

    def send(self, frame: Request, waiter: W, max_refs: int, **fields: Any) -> list[Any] | None:
        """As ``ReplyRouter.send``; None when the request is held back (the worker runs
        ``concurrency`` user-code requests already)."""
        call_id = self.next_id
        self.next_id += 1
        frame = frame._replace(call_id=call_id, **fields)
        message = frame.pack()
        self._pending[call_id] = waiter
        op = message[0]
        bound = frame.reply_bound(max_refs)
        if op in USER_CODE_OPS:
            if self._running >= self.concurrency:
                self._held[call_id] = (message, bound)
                return None
            self._running += 1
            self._sent_at[call_id] = call_id
        self._asked[call_id] = (op, bound)
        return message

    def sendable(self) -> list[list[Any]]:
        """Held-back requests that may go now, in order; each counts as sent."""
        out: list[list[Any]] = []
        while self._held and self._running < self.concurrency:
            call_id = next(iter(self._held))
            message, bound = self._held.pop(call_id)
            self._running += 1
            self._sent_at[call_id] = call_id
            self._asked[call_id] = (message[0], bound)
            out.append(message)
        return out

    def received(self, message: list[Any], *, open_: bool) -> Delivery[W] | None:
        """What an ``R_OK``/``R_ERR`` frame answers (any request sent and not answered);
        ``FalseFrame`` when it cannot be the worker's honest reply."""
        call_id = message[1]
        if type(call_id) is not int:
            raise FalseFrame(f"a reply for call {call_id!r}")
        asked = self._asked.pop(call_id, None)
        if asked is None:
            if open_ or call_id >= self.next_id or call_id in self._held:
                raise FalseFrame(f"a reply for call {call_id}, which is not in flight")
            return None
        reply: Ok | Err
        if message[0] == R_OK:
            try:
                reply = unpack_ok(message, *asked)
            except FalseReply as exc:
                raise FalseFrame(str(exc)) from None
        else:
            try:
                reply = Err.unpack(message)
            except ValueError as exc:
                reply = Err.of(call_id, "BridgeError", f"malformed error reply: {exc}")
        if self._sent_at.pop(call_id, None) is not None:
            self._running -= 1
        self._abandoned.discard(call_id)
        return Delivery(self._pending.pop(call_id, None), reply)

    def abandon(self, call_id: int, *, open_: bool) -> W | None:
        """The caller gave up on ``call_id``: its waiter (None if answered already). A
        held-back request is dropped (never sent, nothing owed); a sent one still counts
        while ``open_``, until the worker answers it."""
        waiter = self._pending.pop(call_id, None)
        if waiter is None:
            return None
        if self._held.pop(call_id, None) is not None:
            return waiter
        if open_:
            self._abandoned.add(call_id)
        return waiter

    def answered(self, call_id: int) -> bool:
        """Nothing is owed for ``call_id`` (answered, never sent, or dropped)."""
        return call_id not in self._asked

    def started(self, call_id: int) -> bool:
        """Whether ``call_id`` was sent (held-back requests never started)."""
        return call_id < self.next_id and call_id not in self._held

    def close(self) -> list[Orphan[W]]:
        """The worker is gone: every call still waited for, ``running`` if it was sent."""
        orphans = [Orphan(i, w, i in self._asked) for i, w in self._pending.items()]
        self._pending = {}
        self._abandoned.clear()
        self._asked.clear()
        self._held.clear()
        self._sent_at.clear()
        self._running = 0
        return orphans
