"""Remote exceptions on the wire: how an exception raised by user code is described in the
worker (``describe``), bounded by whoever receives it from a process it does not trust
(``bounded``: the server reading a worker, the SDK reading a server), and rebuilt as a
``RemoteError`` (``build``: the SDK, and the server, which forwards it). Pure; every
process (the worker imports it too, so it stays free of the gRPC stack).

A description is a map (docs/wire.md section 2 lists it): ``type``, ``message``,
``traceback`` (this exception's own frames, the last 20), and optionally ``mro`` (the
qualified names of its classes), ``args`` (codec bytes of ``exc.args`` when they encode),
``errno``/``strerror``/``filename``/``filename2`` (the ``OSError`` family), ``notes``
(``__notes__``, and what the worker adds, such as which sandbox layer refused), and one of
``cause``/``context``: the description of the exception it chains to.
"""

from __future__ import annotations

import sys
import traceback as _tb
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgpack

from ..errors import RemoteError, SerializationError, remote_error
from . import codec
from .text import clip

#: Bounds on what travels, per description; a link of the chain gets the smaller ones.
#: Every field at its bound, for the top and each link, packs into about 36 KiB
#: (``tests/unit/test_remote_errors.py``), under the trailer's cap (``trailer``), which
#: keeps the header under hpack's 64 KiB header-list limit once base64-encoded.
MAX_TYPE_NAME: Final = 512
MAX_MRO: Final = 12
MAX_LINK_MRO: Final = 4
MAX_MRO_NAME: Final = 128
MAX_MESSAGE: Final = 8 * 1024
MAX_LINK_MESSAGE: Final = 256
MAX_TRACEBACK: Final = 12 * 1024
MAX_LINK_TRACEBACK: Final = 1024
MAX_ARGS: Final = 1024  # encoded bytes
MAX_LINK_ARGS: Final = 128
MAX_NOTES: Final = 4
MAX_LINK_NOTES: Final = 2
MAX_NOTE: Final = 512
MAX_LINK_NOTE: Final = 256
MAX_FILENAME: Final = 512
MAX_LINK_NAME: Final = 256  # a link's type name and file names
MAX_STRERROR: Final = 256
MAX_CHAIN: Final = 3  # chained exceptions below the one raised
TRACEBACK_FRAMES: Final = 20
# The receiver's caps sit a little above the sender's, so text the worker already cut
# (its "...[N characters cut]..." note included) passes unchanged.
_SLACK: Final = 64
_ARGS_LIMITS: Final = codec.Limits(
    max_size=MAX_ARGS, max_items=256, max_depth=8, max_decoded_size=1 << 20
)
_SHALLOW_ARGS: Final = 16 * 1024  # args bigger than this (sys.getsizeof) are not encoded

Explain = Callable[[BaseException], "str | None"]


def qualified(cls: type) -> str:
    """``module.QualName`` of a class, as ``remote_type`` names it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(exc: BaseException, explain: Explain | None = None) -> dict[str, Any]:
    """The bounded description of ``exc`` and of its chain (worker side). ``explain``
    may return one more note for an exception (the sandbox layer that refused it)."""
    return _describe(exc, explain, 0, {id(exc)})


def _describe(
    exc: BaseException, explain: Explain | None, depth: int, seen: set[int]
) -> dict[str, Any]:
    top = depth == 0
    try:
        message = str(exc)
    except BaseException:  # a broken __str__ must not break error reporting
        message = f"<unprintable {type(exc).__name__}>"
    out: dict[str, Any] = {
        "type": qualified(type(exc))[: MAX_TYPE_NAME if top else MAX_LINK_NAME],
        "message": clip(message, MAX_MESSAGE if top else MAX_LINK_MESSAGE),
        "traceback": clip(
            _own_traceback(exc), MAX_TRACEBACK if top else MAX_LINK_TRACEBACK, keep_end=True
        ),
        "mro": [qualified(c)[:MAX_MRO_NAME] for c in type(exc).__mro__[:-1]][
            : MAX_MRO if top else MAX_LINK_MRO
        ],
    }
    args = _encoded_args(exc, MAX_ARGS if top else MAX_LINK_ARGS)
    if args is not None:
        out["args"] = args
    if isinstance(exc, OSError):
        out.update(_os_fields(exc, MAX_FILENAME if top else MAX_LINK_NAME))
    notes = [n for n in getattr(exc, "__notes__", None) or () if isinstance(n, str)]
    if explain is not None:
        try:
            extra = explain(exc)
        except Exception:  # an explanation is a courtesy; never fail the reply over it
            extra = None
        if extra:
            notes.append(extra)
    if notes:
        # The worker's own note last: it survives the cut.
        count, size = (MAX_NOTES, MAX_NOTE) if top else (MAX_LINK_NOTES, MAX_LINK_NOTE)
        out["notes"] = [clip(n, size) for n in notes[-count:]]
    link, key = _link_of(exc)
    if link is not None and depth < MAX_CHAIN and id(link) not in seen:
        seen.add(id(link))
        out[key] = _describe(link, explain, depth + 1, seen)
    return out


def _link_of(exc: BaseException) -> tuple[BaseException | None, str]:
    """The exception Python would print above ``exc``, and how they are linked."""
    if exc.__cause__ is not None:
        return exc.__cause__, "cause"
    if exc.__context__ is not None and not exc.__suppress_context__:
        return exc.__context__, "context"
    return None, ""


def _own_traceback(exc: BaseException) -> str:
    """``exc``'s last frames and its ``Type: message`` line, without its chain (which
    travels as links) or its notes (which travel apart)."""
    try:
        te = _tb.TracebackException.from_exception(exc, limit=-TRACEBACK_FRAMES)
        te.__notes__ = None  # they travel apart, as "notes"
        return "".join(te.format(chain=False))
    except Exception:  # a traceback that cannot be formatted: say so, keep the error
        return f"<traceback of {type(exc).__name__} could not be formatted>"


def _encoded_args(exc: BaseException, limit: int) -> bytes | None:
    args = exc.args
    try:
        if sum(sys.getsizeof(a) for a in args) > _SHALLOW_ARGS:
            return None
        data = codec.encode(tuple(args), max_depth=_ARGS_LIMITS.max_depth)
    except (SerializationError, TypeError, ValueError):
        return None
    except Exception:  # user objects' __sizeof__ and the like: args stay local
        return None
    return data if len(data) <= limit else None


def _os_fields(exc: OSError, name_limit: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if type(exc.errno) is int:
        out["errno"] = exc.errno
    if isinstance(exc.strerror, str):
        out["strerror"] = exc.strerror[:MAX_STRERROR]
    for key in ("filename", "filename2"):
        value = getattr(exc, key, None)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "backslashreplace")
        if isinstance(value, str):
            out[key] = value[:name_limit]
    return out


#: Most bytes the optional part of a description may take packed (``pack_extra``): every
#: field at its bound, for the top and each link, fits.
MAX_EXTRA: Final = 128 * 1024
_CORE: Final = ("type", "message", "traceback")


def pack_extra(described: Mapping[str, Any]) -> bytes | None:
    """The optional keys of a description (all but ``type``, ``message``,
    ``traceback``), msgpack-packed for the worker channel, which carries no maps; None
    when there are none."""
    rest = {k: v for k, v in described.items() if k not in _CORE}
    return msgpack.packb(rest, use_bin_type=True) if rest else None


def unpack_extra(data: Any) -> dict[str, Any]:
    """What ``pack_extra`` packed, read with bounds (a worker's user code could have
    written it); {} for anything malformed. ``bounded`` still checks each field."""
    if not isinstance(data, bytes) or len(data) > MAX_EXTRA:
        return {}
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            max_str_len=MAX_EXTRA,
            max_bin_len=MAX_ARGS,
            max_array_len=max(MAX_MRO, MAX_NOTES),
            max_map_len=32,
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        return {}
    return value if isinstance(value, dict) else {}


def bounded(raw: Any, depth: int = 0) -> dict[str, Any] | None:
    """``raw`` as a description holding only known keys of the right types within their
    bounds (a little above the sender's, see ``_SLACK``), or None when it is not a map
    with a str ``type``. For the server reading a worker and the SDK reading a server."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
        return None
    top = depth == 0
    out: dict[str, Any] = {
        "type": raw["type"][: MAX_TYPE_NAME if top else MAX_LINK_NAME],
        "message": _text(raw.get("message"), MAX_MESSAGE if top else MAX_LINK_MESSAGE),
        "traceback": _text(
            raw.get("traceback"), MAX_TRACEBACK if top else MAX_LINK_TRACEBACK, keep_end=True
        ),
    }
    mro = raw.get("mro")
    if isinstance(mro, list):
        most = MAX_MRO if top else MAX_LINK_MRO
        out["mro"] = [n[:MAX_MRO_NAME] for n in mro[:most] if isinstance(n, str) and n]
    args = raw.get("args")
    if isinstance(args, bytes) and len(args) <= (MAX_ARGS if top else MAX_LINK_ARGS):
        out["args"] = args
    if type(raw.get("errno")) is int and -(2**31) <= raw["errno"] < 2**31:
        out["errno"] = raw["errno"]
    name_cap = MAX_FILENAME if top else MAX_LINK_NAME
    for key, cap in (("strerror", MAX_STRERROR), ("filename", name_cap), ("filename2", name_cap)):
        if isinstance(raw.get(key), str):
            out[key] = raw[key][:cap]
    notes = raw.get("notes")
    if isinstance(notes, list):
        count, size = (MAX_NOTES, MAX_NOTE) if top else (MAX_LINK_NOTES, MAX_LINK_NOTE)
        kept = [_text(n, size) for n in notes[-count:] if isinstance(n, str)]
        if kept:
            out["notes"] = kept
    if depth < MAX_CHAIN:
        for key in ("cause", "context"):
            link = bounded(raw.get(key), depth + 1)
            if link is not None:
                out[key] = link
                break
    return out


def _text(value: Any, limit: int, *, keep_end: bool = False) -> str:
    return clip(value, limit + _SLACK, keep_end=keep_end) if isinstance(value, str) else ""


def build(detail: Mapping[str, Any], *, decode_args: bool = True) -> RemoteError:
    """The ``RemoteError`` a bounded description stands for: an instance of every builtin
    class in its mro, with ``args`` (decoded when ``decode_args``), the ``OSError``
    fields, the remote traceback and notes as exception notes, and its chain as
    ``__cause__``/``__context__``. ``traceback`` holds the whole chain's text, as Python
    prints it. Never raises for a description ``bounded`` returned."""
    err, _ = _build(detail, decode_args)
    return err


_CAUSE_LINE: Final = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT_LINE: Final = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _build(detail: Mapping[str, Any], decode_args: bool) -> tuple[RemoteError, str]:
    own_tb = detail.get("traceback", "")
    chained = ""
    link: RemoteError | None = None
    key = "cause" if "cause" in detail else "context" if "context" in detail else ""
    if key:
        link, link_tb = _build(detail[key], decode_args)
        chained = link_tb + (_CAUSE_LINE if key == "cause" else _CONTEXT_LINE)
    full_tb = chained + own_tb
    mro = tuple(detail.get("mro") or ())
    err = remote_error(detail["type"], detail.get("message", ""), full_tb, mro=mro)
    args = detail.get("args")
    if decode_args and isinstance(args, bytes):
        try:
            value = codec.decode(args, limits=_ARGS_LIMITS)
        except SerializationError:
            value = None
        if type(value) is tuple:
            err.args = value
    if isinstance(err, OSError):
        for name in ("errno", "strerror", "filename", "filename2"):
            if name in detail:
                setattr(err, name, detail[name])
    if own_tb:
        err.add_note(_as_note(own_tb))
    for note in detail.get("notes", ()):
        err.add_note(note)
    if link is not None:
        if key == "cause":
            err.__cause__ = link
        else:
            err.__context__ = link
    err.detail = dict(detail)  # what the server forwards, unchanged
    return err, full_tb


def _as_note(traceback_text: str) -> str:
    text = traceback_text.rstrip("\n")
    if text.startswith("Traceback (most recent call last):"):
        return "Remote traceback" + text[len("Traceback") :]
    return "Remote exception:\n" + text
