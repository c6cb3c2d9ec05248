"""The error trailer, both halves: how a failed RPC says which ``BridgeError`` it is.

A failed RPC ends with its gRPC status and, in the trailing metadata key
``ERROR_TRAILER``, a msgpack map: ``code`` (a public error class name), ``message``,
``correlation_id`` when known, and for a ``RemoteError`` the remote exception's
description (``wire.remote``: ``type``, ``traceback``, and the optional ``mro``, ``args``,
OSError fields, ``notes`` and chain). The server packs it (``pack``); the SDK unpacks it
(``unpack``). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgpack

from ..errors import BridgeError, RemoteError, error_class
from . import remote
from .constants import ERROR_TRAILER
from .text import clip

# hpack's cost grows with the square of a header's size: keep the trailer small. A little
# above the worker's own cuts, so text it already clipped is not clipped twice.
MAX_MESSAGE: Final = 8 * 1024 + 64
MAX_TRACEBACK: Final = remote.MAX_TRACEBACK + 64
MAX_TYPE_NAME: Final = 512
#: The packed trailer at most: base64 makes it 4/3 larger, and hpack's decoder (the
#: client's) refuses a header list over 64 KiB. A remote error at every bound of
#: ``wire.remote`` packs into about 26 KiB.
MAX_TRAILER: Final = 40 * 1024


def public_name(exc: BridgeError) -> str:
    """The public class: server-internal subclasses (NeverStarted) mean nothing to
    clients, and every remote exception is a ``RemoteError`` (its type travels apart)."""
    if isinstance(exc, RemoteError):
        return "RemoteError"
    return next(c for c in type(exc).__mro__ if c.__module__ == "snakebridge.errors").__name__


def pack(exc: BridgeError, correlation_id: str | None = None) -> dict[str, bytes]:
    """The trailing metadata that carries ``exc`` (server side)."""
    details: dict[str, Any] = {
        "code": public_name(exc),
        "message": clip(exc.message, MAX_MESSAGE),
    }
    if correlation_id is not None:
        details["correlation_id"] = correlation_id
    if isinstance(exc, RemoteError) and exc.detail is not None:
        # Bounded when it came in from the worker; the client rebuilds the classes.
        details.update({k: v for k, v in exc.detail.items() if k != "message"})
    elif isinstance(exc, RemoteError):
        details.update(
            type=exc.type_name[:MAX_TYPE_NAME],
            traceback=clip(exc.traceback, MAX_TRACEBACK, keep_end=True),
        )
    packed: bytes = msgpack.packb(details, use_bin_type=True)
    if len(packed) > MAX_TRAILER:  # never at the bounds of wire.remote; a last guard
        for key in ("cause", "context", "notes", "args", "mro"):
            details.pop(key, None)
        packed = msgpack.packb(details, use_bin_type=True)
    return {ERROR_TRAILER: packed}


def unpack(trailers: Mapping[str, Any] | None) -> BridgeError | None:
    """The error the trailer describes (SDK side), or None when there is no readable
    trailer (a status from a proxy, a peer that is not a bridge-server)."""
    raw = trailers.get(ERROR_TRAILER) if trailers is not None else None
    if not isinstance(raw, bytes):
        return None
    try:
        details = msgpack.unpackb(raw, raw=False)
        code = details["code"]
        message = details.get("message", "")
        error: BridgeError
        described = remote.bounded(details) if code == "RemoteError" else None
        if described is not None:
            error = remote.build(described)
        elif code == "RemoteError":
            error = remote.build({"type": "", "message": message})
        else:
            error = error_class(code)(message)
        cid = details.get("correlation_id")
        if isinstance(cid, str):
            error.correlation_id = cid
        return error
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException):
        return None
