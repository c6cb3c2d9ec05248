"""The typed frames of the server <-> worker channel, defined once for both processes.

Runs in both processes: the server (``supervisor``) packs requests and unpacks replies,
the worker child (``worker``) unpacks requests and packs replies. Kept as light as
``channel`` (msgpack and the stdlib only): ``tests/unit/snakebridge/test_public_api.py`` checks the
worker's import closure.

Each frame is a ``NamedTuple``: built as fast as a tuple, and ``pack()`` gives the msgpack
array the channel carried when frames were written out as lists, ``[opcode, *fields]``
(see ``channel`` and docs/wire.md section 5). ``unpack()`` checks the array's shape; for
what a worker sends it checks everything the server relies on, since a worker's user code
can write to the channel too (``unpack_ok`` raises ``FalseReply``; the server kills the
worker).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from .channel import (
    OP_CALL,
    OP_INTROSPECT,
    OP_RELEASE,
    OP_RELEASE_SESSION,
    OP_STREAM_CLOSE,
    OP_STREAM_NEXT,
    OP_STREAM_OPEN,
    OP_STREAM_PULL,
    R_ERR,
    R_OK,
    R_READY,
    false_reply,
)


class FalseReply(ValueError):
    """A reply that cannot be the worker's honest answer to the request it names. Raised
    by ``unpack_ok`` in the server, which kills the worker that sent it."""


def _fields(message: list[Any], count: int, what: str) -> list[Any]:
    if len(message) != count + 1:
        raise ValueError(f"a {what} frame of {len(message)} fields, not {count + 1}")
    return message[1:]


# -- server -> worker ---------------------------------------------------------------------


class Call(NamedTuple):
    """``OP_CALL``: run user code once; answered by an ``Ok`` whose value is the result's
    codec bytes. ``cid`` is the correlation id of the RPC ("" if none)."""

    call_id: int
    kind: int
    module: str
    name: str
    target_ref: str
    session_id: str
    args: bytes
    ref_budget: int
    cid: str

    def pack(self) -> list[Any]:
        return [OP_CALL, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> Call:
        return cls._make(_fields(message, 9, "call"))

    def reply_bound(self, max_refs: int) -> int:
        return self.ref_budget


class Release(NamedTuple):
    """``OP_RELEASE``: free those of ``ref_ids`` that ``session_id`` owns; answered by an
    ``Ok`` whose value is ``[[session_id, count], ...]``."""

    call_id: int
    ref_ids: list[str]
    session_id: str

    def pack(self) -> list[Any]:
        return [OP_RELEASE, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> Release:
        return cls._make(_fields(message, 3, "release"))

    def reply_bound(self, max_refs: int) -> int:
        return len(self.ref_ids)


class ReleaseSession(NamedTuple):
    """``OP_RELEASE_SESSION``: free every ref of a session; answered with the count."""

    call_id: int
    session_id: str

    def pack(self) -> list[Any]:
        return [OP_RELEASE_SESSION, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> ReleaseSession:
        return cls._make(_fields(message, 2, "release-session"))

    def reply_bound(self, max_refs: int) -> int:
        return max_refs


class StreamOpen(NamedTuple):
    """``OP_STREAM_OPEN``: start iterating and answer the first ``StreamBatch``."""

    call_id: int
    kind: int
    module: str
    name: str
    target_ref: str
    session_id: str
    args: bytes
    ref_budget: int
    max_items: int
    max_bytes: int
    linger: float
    cid: str

    def pack(self) -> list[Any]:
        return [OP_STREAM_OPEN, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> StreamOpen:
        return cls._make(_fields(message, 12, "stream-open"))

    def reply_bound(self, max_refs: int) -> int:
        return self.ref_budget


class StreamPull(NamedTuple):
    """``OP_STREAM_PULL``: the next ``StreamBatch`` of an open stream."""

    call_id: int
    stream_id: int
    session_id: str
    ref_budget: int
    max_items: int
    max_bytes: int
    linger: float
    cid: str

    def pack(self) -> list[Any]:
        return [OP_STREAM_PULL, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> StreamPull:
        return cls._make(_fields(message, 8, "stream-pull"))

    def reply_bound(self, max_refs: int) -> int:
        return self.ref_budget


class StreamClose(NamedTuple):
    """``OP_STREAM_CLOSE``: close a stream the server abandoned; answered with whether
    it was open."""

    call_id: int
    stream_id: int

    def pack(self) -> list[Any]:
        return [OP_STREAM_CLOSE, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> StreamClose:
        return cls._make(_fields(message, 2, "stream-close"))

    def reply_bound(self, max_refs: int) -> int:
        return max_refs


class StreamNext(NamedTuple):
    """``OP_STREAM_NEXT``: one item of a StreamRef; answered by a ``NextItem``."""

    call_id: int
    ref_id: str
    session_id: str
    ref_budget: int
    cid: str

    def pack(self) -> list[Any]:
        return [OP_STREAM_NEXT, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> StreamNext:
        return cls._make(_fields(message, 5, "stream-next"))

    def reply_bound(self, max_refs: int) -> int:
        return self.ref_budget


class Introspect(NamedTuple):
    """``OP_INTROSPECT``: describe ``module`` (only ``names`` if any; ``submodules`` too)
    for code generation; answered by an ``Ok`` whose value is the codec bytes of the
    description (docs/wire.md, Introspect). Importing a module runs its code: a user-code
    frame, bounded like a call."""

    call_id: int
    module: str
    names: list[str]
    submodules: list[str]
    version_only: bool
    cid: str

    def pack(self) -> list[Any]:
        return [OP_INTROSPECT, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> Introspect:
        frame = cls._make(_fields(message, 6, "introspect"))
        if (
            type(frame.module) is not str
            or type(frame.names) is not list
            or not all(type(n) is str for n in frame.names)
            or type(frame.submodules) is not list
            or not all(type(n) is str for n in frame.submodules)
        ):
            raise ValueError("a malformed introspect frame")
        return frame

    def reply_bound(self, max_refs: int) -> int:
        return 0  # makes no refs


Request = (
    Call
    | Release
    | ReleaseSession
    | StreamOpen
    | StreamPull
    | StreamClose
    | StreamNext
    | Introspect
)

#: Each request frame by its opcode.
REQUESTS: Final[dict[int, type[Request]]] = {
    OP_CALL: Call,
    OP_RELEASE: Release,
    OP_RELEASE_SESSION: ReleaseSession,
    OP_STREAM_OPEN: StreamOpen,
    OP_STREAM_PULL: StreamPull,
    OP_STREAM_CLOSE: StreamClose,
    OP_STREAM_NEXT: StreamNext,
    OP_INTROSPECT: Introspect,
}
#: Opcodes whose frames run user code: they end with the correlation id.
USER_CODE_OPS: Final = frozenset(
    {OP_CALL, OP_STREAM_OPEN, OP_STREAM_PULL, OP_STREAM_NEXT, OP_INTROSPECT}
)


# -- values of Ok replies -----------------------------------------------------------------


class StreamBatch(NamedTuple):
    """The value of an ``Ok`` to ``StreamOpen`` / ``StreamPull``: one batch of a stream.
    ``error`` is ``[type_name, message, traceback, detail]`` when ``state`` is
    ``STREAM_ERROR`` (``detail`` as in ``Err``);
    ``released`` the ``[[session_id, count]]`` of refs the worker freed itself (an
    exhausted StreamRef releases itself)."""

    stream_id: int
    body: bytes
    state: int
    error: list[Any] | None
    released: list[list[Any]]


class NextItem(NamedTuple):
    """The value of an ``Ok`` to ``StreamNext``: ``(done, codec bytes, released)``."""

    done: bool
    item: bytes
    released: list[list[Any]]


# -- worker -> server ---------------------------------------------------------------------


class Ready(NamedTuple):
    """``R_READY``, the worker's first frame: who it is and what it became."""

    pid: int
    python_version: str
    sandbox_level: str
    sandbox_layers: list[str]
    helpers: list[list[str]]  # [name, signature, doc] of each helper

    def pack(self) -> list[Any]:
        return [R_READY, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> Ready:
        """Raises ``ValueError`` unless ``message`` is a well-formed READY frame."""
        if message[0] != R_READY:
            raise ValueError(f"a first frame of opcode {message[0]!r}, not READY")
        ready = cls._make(_fields(message, 5, "READY"))
        if (
            type(ready.pid) is not int
            or type(ready.python_version) is not str
            or type(ready.sandbox_level) is not str
            or type(ready.sandbox_layers) is not list
            or not all(type(x) is str for x in ready.sandbox_layers)
            or type(ready.helpers) is not list
            or not all(type(h) is list and len(h) == 3 for h in ready.helpers)
        ):
            raise ValueError("a malformed READY frame")
        return ready


class Ok(NamedTuple):
    """``R_OK``: the request ``call_id`` succeeded. ``value`` depends on the request:
    codec bytes (``Call``, ``Introspect``), a ``StreamBatch``, a ``NextItem``, released pairs
    (``Release``), a count (``ReleaseSession``), a bool (``StreamClose``)."""

    call_id: int
    value: Any
    new_refs: int

    def pack(self) -> list[Any]:
        return [R_OK, *self]


def unpack_ok(message: list[Any], op: int, limit: int) -> Ok:
    """The ``Ok`` of an ``R_OK`` frame answering a request ``op`` whose reply bound was
    ``limit`` (``reply_bound``), its value typed; ``FalseReply`` saying why when the
    frame cannot be the worker's honest answer (``channel.false_reply``)."""
    why = false_reply(message, op, limit)
    if why:
        raise FalseReply(why)
    return ok_of(message, op)


def ok_of(message: list[Any], op: int) -> Ok:
    """The typed ``Ok`` of an ``R_OK`` frame ``false_reply`` passed for a request ``op``."""
    value = message[2]
    if op == OP_STREAM_OPEN or op == OP_STREAM_PULL:
        value = StreamBatch._make(value)
    elif op == OP_STREAM_NEXT:
        value = NextItem._make(value)
    return Ok(message[1], value, message[3])


class Err(NamedTuple):
    """``R_ERR``: the request ``call_id`` failed. ``code`` is a ``snakebridge.errors``
    class name; for ``RemoteError`` (user code raised) ``type_name`` and ``traceback``
    describe the exception, and ``detail`` the rest of its description
    (``snakebridge.wire.remote.pack_extra``: mro, args, OSError fields, notes, chain,
    msgpack-packed, since the channel carries no maps), or None."""

    call_id: int
    code: str
    type_name: str
    message: str
    traceback: str
    detail: bytes | None = None

    def pack(self) -> list[Any]:
        return [R_ERR, *self]

    @classmethod
    def unpack(cls, message: list[Any]) -> Err:
        if len(message) == 6:  # written without a detail
            return cls._make([*_fields(message, 5, "R_ERR"), None])
        return cls._make(_fields(message, 6, "R_ERR"))

    @classmethod
    def of(cls, call_id: int, code: str, message: str) -> Err:
        """An error of the bridge itself (not of user code): no type name, no traceback."""
        return cls(call_id, code, "", message, "")


Reply = Ok | Err
