"""The server <-> worker channel: length-prefixed msgpack frames over a socketpair.

Pure: no I/O here. Runs in both processes: the server (``supervisor``) and the worker
child (``worker``) import it, so it must stay light. The typed frames are in ``frames``.

Frame: 4-byte big-endian payload length, then a msgpack array whose first element is an
opcode. Argument and result values stay opaque ``bin`` blobs produced by the value codec.

server -> worker
  [OP_CALL, call_id, kind, module, name, target_ref, session_id, args, ref_budget, cid]
  [OP_RELEASE, call_id, [ref_id, ...], session_id]   (only refs session_id owns)
  [OP_RELEASE_SESSION, call_id, session_id]
  [OP_STREAM_OPEN, call_id, kind, module, name, target_ref, session_id, args, ref_budget,
   max_items, max_bytes, linger, cid]          -> [stream_id, batch, state, error, released]
  [OP_STREAM_PULL, call_id, stream_id, session_id, ref_budget, max_items, max_bytes, linger,
   cid]                                        -> [stream_id, batch, state, error, released]
  [OP_STREAM_CLOSE, call_id, stream_id]        -> closed: bool
  [OP_STREAM_NEXT, call_id, ref_id, session_id, ref_budget, cid] -> [done, item, released]
  [OP_INTROSPECT, call_id, module, names, submodules, version_only, cid] -> codec bytes
  (cid: the correlation id of the call, "" if none; the frames that run user code end
  with it, so the worker's log records carry it)
  (released: [[session_id, count], ...] of refs the worker freed itself: an exhausted
  StreamRef releases itself, and the server's ref accounting must hear of it)
worker -> server
  [R_READY, pid, python_version]                       once, first frame
  [R_OK, call_id, value, new_refs]                     value: codec bytes or a count
  [R_ERR, call_id, code, type_name, message, traceback, detail]

The server trusts nothing a worker sends (its user code can write to the channel too):
``FrameDecoder`` refuses a frame over ``max_frame`` from its header and, given
``check_head``, vets a large frame's call id before buffering its body; ``unpack_reply``
decodes with bounded containers; ``false_reply`` says why a reply cannot be the honest
answer to what the server asked. The server kills a worker whose frame fails any of them.

Cancellation travels on a second socketpair (the control channel) as 8-byte big-endian
call ids, followed by SIGUSR1 so a busy worker notices between bytecodes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import msgpack

OP_CALL: Final = 1
OP_RELEASE: Final = 2
OP_RELEASE_SESSION: Final = 3
OP_STREAM_OPEN: Final = 4
OP_STREAM_PULL: Final = 5
OP_STREAM_CLOSE: Final = 6
OP_STREAM_NEXT: Final = 7
OP_INTROSPECT: Final = 16  # apart from the others: room for more call-like opcodes

# Stream batch states (the worker's ``worker.streams`` module produces them).
STREAM_MORE: Final = 0
STREAM_DONE: Final = 1
STREAM_ERROR: Final = (
    2  # error = [type_name, message, traceback, detail] of the iterator's exception
)

R_OK: Final = 0
R_ERR: Final = 1
R_READY: Final = 9

HEADER: Final = struct.Struct(">I")
CANCEL: Final = struct.Struct(">Q")

#: Largest frame either side accepts; a bigger one means a broken or hostile peer.
DEFAULT_MAX_FRAME: Final = 80 * 1024 * 1024


class FrameTooLarge(Exception):
    """A frame header announced more than the configured maximum."""


#: Opcodes whose request carries a ref budget: their reply's ``new_refs`` must fit it.
BUDGETED_OPS: Final = frozenset({OP_CALL, OP_STREAM_OPEN, OP_STREAM_PULL, OP_STREAM_NEXT})
#: Array elements (all arrays together) a reply may decode to. Replies are a few small
#: arrays around ``bin`` blobs; the largest honest one, a release of 10,000 refs of
#: distinct sessions, has ~30,000. A frame of nested arrays otherwise decodes to objects
#: ~10x its size (60 MiB of them took ~600 MB and a second of the server's loop).
MAX_REPLY_ELEMENTS: Final = 1 << 18
#: Bytes of a frame's body enough to read its array header, opcode and call id.
HEAD_SIZE: Final = 32
_STATES: Final = (STREAM_MORE, STREAM_DONE, STREAM_ERROR)


#: A top-level blob this big travels as its own buffer (``pack_frame_parts``), not copied.
_BIG_BLOB: Final = 256 * 1024


def pack_frame(message: list[Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def _bin_header(size: int) -> bytes:
    if size < 0x100:
        return b"\xc4" + bytes((size,))
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def pack_frame_parts(message: list[Any]) -> list[bytes]:
    """The frame of ``message`` as buffers to write in order: the same bytes as
    ``pack_frame``, but a top-level ``bytes`` element of ``_BIG_BLOB`` or more (a large
    argument or result) is its own part, so it is neither packed (msgpack copies it at
    least twice) nor joined. Small messages are one part."""
    if not any(type(v) is bytes and len(v) >= _BIG_BLOB for v in message):
        return [pack_frame(message)]
    parts: list[bytes] = []
    small: list[bytes] = []
    for value in message:
        if type(value) is bytes and len(value) >= _BIG_BLOB:
            small.append(_bin_header(len(value)))
            parts.append(b"".join(small))
            parts.append(value)
            small = []
        else:
            small.append(msgpack.packb(value, use_bin_type=True))
    if small:
        parts.append(b"".join(small))
    count = len(message)
    head = bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
    size = len(head) + sum(len(p) for p in parts)
    parts[0] = HEADER.pack(size) + head + parts[0]
    return parts


def unpack_message(body: bytes | bytearray | memoryview) -> list[Any]:
    message = msgpack.unpackb(body, raw=False, use_list=True)
    if type(message) is not list or not message:
        raise ValueError("malformed channel message")
    return message


class _ElementBudget:
    """msgpack ``list_hook``: counts the elements of every array decoded, refusing more
    than ``MAX_REPLY_ELEMENTS`` (an array is built before the hook sees it, so
    ``max_array_len`` bounds each one)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_REPLY_ELEMENTS

    def __call__(self, items: list[Any]) -> list[Any]:
        self.left -= len(items) + 1
        if self.left < 0:
            raise ValueError(f"a reply of more than {MAX_REPLY_ELEMENTS} array elements")
        return items


def unpack_reply(body: bytes | bytearray | memoryview) -> list[Any]:
    """``unpack_message`` for what a worker sends: arrays bounded (see
    ``MAX_REPLY_ELEMENTS``), no maps. Raises ``ValueError`` on anything else."""
    message = msgpack.unpackb(
        body,
        raw=False,
        use_list=True,
        list_hook=_ElementBudget(),
        max_array_len=MAX_REPLY_ELEMENTS,
        max_map_len=0,
    )
    if type(message) is not list or not message:
        raise ValueError("malformed channel message")
    return message


def frame_head(head: bytes | bytearray | memoryview) -> tuple[Any, Any]:
    """``(opcode, call id)`` from the first bytes of a frame's body; ``ValueError`` if
    they are not an array starting with two integers."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=HEAD_SIZE * 2)
    unpacker.feed(head)
    try:
        if unpacker.read_array_header() < 2:
            raise ValueError("a frame of fewer than two fields")
        op, call_id = unpacker.unpack(), unpacker.unpack()
    except (msgpack.OutOfData, msgpack.UnpackException, ValueError) as exc:
        raise ValueError(
            f"a frame that does not start with an opcode and a call id: {exc}"
        ) from None
    if type(op) is not int or type(call_id) is not int:
        raise ValueError("a frame whose opcode or call id is not an integer")
    return op, call_id


def _count(value: Any, limit: int) -> bool:
    return type(value) is int and 0 <= value <= limit


def _released_ok(released: Any, limit: int) -> bool:
    """``[[session_id, count], ...]`` with counts in ``0..limit`` together."""
    if type(released) is not list:
        return False
    total = 0
    for pair in released:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
            return False
        if not _count(pair[1], limit):
            return False
        total += pair[1]
    return total <= limit


def false_reply(message: list[Any], op: int, limit: int) -> str:
    """Why an ``R_OK`` reply cannot be the worker's honest answer to a request ``op``
    whose bound was ``limit``; "" if it can be. ``limit`` is the ref budget sent with a
    ``BUDGETED_OPS`` request, the number of ref ids of an ``OP_RELEASE``, and the
    worker's ref cap for the other requests. Pure, for the server's reader."""
    if len(message) != 4:
        return f"an R_OK frame of {len(message)} fields"
    value, new_refs = message[2], message[3]
    budget = limit if op in BUDGETED_OPS else 0
    if not _count(new_refs, budget):
        return f"new_refs={new_refs!r} for a request with a ref budget of {budget}"
    if op == OP_CALL or op == OP_INTROSPECT:
        ok = type(value) is bytes
    elif op in (OP_STREAM_OPEN, OP_STREAM_PULL):
        ok = (
            type(value) is list
            and len(value) == 5
            and type(value[0]) is int
            and type(value[1]) is bytes
            and value[2] in _STATES
            and (
                value[3] is None
                or (
                    type(value[3]) is list
                    and len(value[3]) in (3, 4)
                    and all(type(x) is str for x in value[3][:3])
                    and (len(value[3]) == 3 or value[3][3] is None or type(value[3][3]) is bytes)
                )
            )
            and (value[3] is None) == (value[2] != STREAM_ERROR)
            and _released_ok(value[4], limit)
        )
    elif op == OP_STREAM_NEXT:
        ok = (
            type(value) is list
            and len(value) == 3
            and type(value[0]) is bool
            and type(value[1]) is bytes
            and _released_ok(value[2], limit)
        )
    elif op == OP_RELEASE:
        ok = _released_ok(value, limit)
    elif op == OP_RELEASE_SESSION:
        ok = _count(value, limit)
    elif op == OP_STREAM_CLOSE:
        ok = type(value) is bool
    else:
        return f"a reply to an unknown request opcode {op}"
    return "" if ok else f"a malformed value for a request of opcode {op}"


class FrameDecoder:
    """Accumulates bytes and yields complete frame bodies. Synchronous and I/O-free.

    A large frame (a big argument or result) is collected in a buffer of its exact size,
    allocated when its header arrives, and handed out as that buffer: each byte is copied
    once, where growing one buffer and slicing a ``bytes`` out of it copied it about three
    times."""

    __slots__ = ("_big", "_big_filled", "_buf", "_check_head", "_max_frame")

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        check_head: Callable[[bytes], None] | None = None,
    ) -> None:
        """``check_head``, given the first ``HEAD_SIZE`` bytes of a large frame's body,
        raises to refuse the frame before its body is buffered."""
        self._buf = bytearray()
        self._max_frame = max_frame
        self._check_head = check_head
        self._big: bytearray | None = None  # the large frame being collected
        self._big_filled = 0

    def feed(self, data: bytes | memoryview) -> list[bytes | bytearray]:
        frames: list[bytes | bytearray] = []
        if self._big is not None:
            big, filled = self._big, self._big_filled
            take = min(len(data), len(big) - filled)
            with memoryview(data) as incoming:
                big[filled : filled + take] = incoming[:take]
                rest = bytes(incoming[take:])  # the start of the next frame, if any
            self._big_filled = filled + take
            if self._big_filled < len(big):
                return frames
            frames.append(big)
            self._big = None
            if not rest:
                return frames
            data = rest
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:  # one copy per frame, not two (slice, then bytes)
            while end - pos >= 4:
                (length,) = HEADER.unpack_from(buf, pos)
                if length > self._max_frame:
                    raise FrameTooLarge(f"frame of {length} bytes exceeds {self._max_frame}")
                if length >= _BIG_BLOB and self._check_head is not None:
                    if end - pos - 4 < HEAD_SIZE:
                        break  # vetted once its head is here
                    self._check_head(bytes(view[pos + 4 : pos + 4 + HEAD_SIZE]))
                if end - pos - 4 < length:
                    if length >= _BIG_BLOB:
                        big = bytearray(length)
                        have = end - pos - 4
                        big[:have] = view[pos + 4 : end]
                        self._big, self._big_filled = big, have
                        pos = end
                    break
                frames.append(bytes(view[pos + 4 : pos + 4 + length]))
                pos += 4 + length
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._big_filled * (self._big is not None)
