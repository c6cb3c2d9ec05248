"""Hostile code for ``test_hostile_worker.py``: it runs in a worker (sandbox level
standard) and writes forged frames on the worker's channel to the server, as any user code
that reaches the worker's objects could (``gc`` finds them; the socket is an fd the
process holds).
"""

from __future__ import annotations

import gc
import struct
from typing import Any

import msgpack

from snakebridge.wire import codec
from snakebridge_server.channel import R_OK


def _worker() -> Any:
    return next(o for o in gc.get_objects() if type(o).__name__ == "Worker")


def _write(worker: Any, frame: bytes) -> None:
    try:
        worker.sock.sendall(frame)
    except OSError:
        pass  # the server closed the channel: it saw through us


def forge_new_refs(count: int) -> str:
    """Answer our own call first, claiming ``count`` new refs, then return normally."""
    worker = _worker()
    body = msgpack.packb([R_OK, worker.current, codec.encode("forged"), count])
    _write(worker, struct.pack(">I", len(body)) + body)
    return "honest"


def forge_reply_to(call_id: int) -> str:
    """A small reply for a call id the server never sent."""
    worker = _worker()
    body = msgpack.packb([R_OK, call_id, codec.encode("forged"), 0])
    _write(worker, struct.pack(">I", len(body)) + body)
    return "honest"


def forge_big_frame(size: int, call_id: int) -> str:
    """A ``size``-byte frame for ``call_id``: an array of ``size`` - 16 zeros, which
    decodes to a list ~8x its size."""
    count = size - 16
    head = b"\x94" + msgpack.packb(R_OK) + msgpack.packb(call_id) + b"\xdd"
    body_size = len(head) + 4 + count + 1
    _write(
        _worker(),
        b"".join(
            [struct.pack(">I", body_size), head, struct.pack(">I", count), bytes(count), b"\x00"]
        ),
    )
    return "honest"
