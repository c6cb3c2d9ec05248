"""Remote exceptions as data (``snakebridge.wire.remote``, ``wire.trailer``,
``errors.remote_type``), the way a worker describes them, a server forwards them and a
client rebuilds them: no server, no loop."""

from __future__ import annotations

import errno
import json
import sys
from typing import Any

import msgpack
import pytest

import snakebridge
from snakebridge import errors
from snakebridge.wire import remote, trailer
from snakebridge_server.service import status_message
from snakebridge_server.supervisor.handle import remote_error_of


def _raised(fn: Any, *args: Any) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def _round_trip(exc: BaseException, **explain: Any) -> errors.RemoteError:
    """worker describe -> channel bytes -> server -> trailer -> client, as in production."""
    described = remote.describe(exc, explain.get("explain"))
    extra = msgpack.unpackb(msgpack.packb(remote.pack_extra(described)))  # the channel
    server_side = remote_error_of(
        [described["type"], described["message"], described["traceback"], extra]
    )
    client_side = trailer.unpack(trailer.pack(server_side, "cid-1"))
    assert isinstance(client_side, errors.RemoteError)
    assert client_side.correlation_id == "cid-1"
    return client_side


def test_a_library_error_is_an_instance_of_its_builtin_ancestors() -> None:
    err = _round_trip(_raised(json.loads, "{"))
    assert isinstance(err, ValueError) and not isinstance(err, TypeError)
    assert err.remote_type == "json.decoder.JSONDecodeError"
    assert err.remote_mro == (
        "json.decoder.JSONDecodeError",
        "builtins.ValueError",
        "builtins.Exception",
        "builtins.BaseException",
    )
    assert str(err) == err.message and "JSONDecodeError" not in str(err)
    assert repr(err).startswith("JSONDecodeError(") and "remote_type=" in repr(err)
    assert type(err).__module__ == "snakebridge.remote"


def test_args_and_os_error_fields_travel_by_value() -> None:
    err = _round_trip(OSError(errno.EACCES, "Permission denied", "/etc/x", None, "/etc/y"))
    assert isinstance(err, PermissionError)  # OSError(EACCES) is built as one remotely
    assert (err.errno, err.strerror, err.filename, err.filename2) == (
        errno.EACCES,
        "Permission denied",
        "/etc/x",
        "/etc/y",
    )
    assert _round_trip(KeyError("k")).args == ("k",)
    assert _round_trip(ValueError(1, [2.5, b"x"], (3,))).args == (1, [2.5, b"x"], (3,))
    opaque = _round_trip(ValueError(object()))
    assert opaque.args == (opaque.message,)


def test_layouts_that_cannot_combine_keep_the_first_builtin() -> None:
    class Both(KeyError, AttributeError):
        pass

    err = _round_trip(Both("x"))
    assert isinstance(err, KeyError) and isinstance(err, LookupError)
    assert err.remote_mro[1:3] == ("builtins.KeyError", "builtins.LookupError")


def test_builtins_that_refuse_their_construction_still_become_errors() -> None:
    for exc in (
        MemoryError(),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        ExceptionGroup("group", [ValueError("a")]),
        StopIteration(),
        KeyboardInterrupt(),
    ):
        err = _round_trip(exc)
        assert isinstance(err, errors.RemoteError)
    assert isinstance(_round_trip(MemoryError()), MemoryError)
    assert not isinstance(_round_trip(StopIteration()), StopIteration)
    assert not isinstance(_round_trip(KeyboardInterrupt()), KeyboardInterrupt)


def test_remote_type_classes_match_errors_that_arrive_before_or_after() -> None:
    class Base(Exception):
        pass

    class Sub(Base, ValueError):
        pass

    name = f"{__name__}.test_remote_type_classes_match_errors_that_arrive_before_or_after"
    before = _round_trip(Sub("early"))
    base = snakebridge.remote_type(f"{name}.<locals>.Base")
    assert snakebridge.remote_type(f"{name}.<locals>.Base") is base
    after = _round_trip(Sub("late"))
    assert isinstance(before, base) and isinstance(after, base) and isinstance(after, ValueError)
    assert not isinstance(_round_trip(ValueError("other")), base)
    assert snakebridge.remote_type("builtins.ZeroDivisionError") is type(
        _round_trip(ZeroDivisionError("z"))
    )
    assert issubclass(snakebridge.remote_type("builtins.OSError"), OSError)
    with pytest.raises(ValueError):
        snakebridge.remote_type("")
    with pytest.raises(ValueError):
        snakebridge.remote_type("x" * 513)


def test_remote_type_does_not_import_the_types_module() -> None:
    assert "numpy.linalg" not in {m for m in sys.modules if m == "snakebridge.remote"}
    cls = snakebridge.remote_type("surely_not_installed_lib.Error")
    assert "surely_not_installed_lib" not in sys.modules and issubclass(cls, errors.RemoteError)


def test_the_chain_travels_with_cause_and_context() -> None:
    def caused() -> None:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise RuntimeError("outer") from exc

    def context() -> None:
        try:
            raise ValueError("first")
        except ValueError:
            raise TypeError("second")  # noqa: B904

    err = _round_trip(_raised(caused))
    assert isinstance(err.__cause__, KeyError) and err.__cause__.args == ("inner",)
    assert err.__suppress_context__
    assert "direct cause" in err.traceback and err.traceback.index("inner") < err.traceback.index(
        "outer"
    )
    err = _round_trip(_raised(context))
    assert isinstance(err.__context__, ValueError) and err.__cause__ is None
    assert "During handling" in err.traceback
    suppressed = _round_trip(RuntimeError("alone"))
    assert suppressed.__cause__ is None and suppressed.__context__ is None


def test_the_remote_traceback_is_the_first_note() -> None:
    err = _round_trip(_raised(json.loads, "{"))
    note = err.__notes__[0]
    assert note.startswith("Remote traceback (most recent call last):")
    assert "json/decoder.py" in note and f"{__name__.rpartition('.')[2]}.py" in note
    noted = ValueError("x")
    noted.add_note("from the library")
    assert _round_trip(noted).__notes__[1:] == ["from the library"]


def _chain(depth: int) -> BaseException:
    exc: BaseException = ValueError("bottom")
    for i in range(depth):
        top = ValueError(f"level {i}")
        top.__cause__ = exc
        exc = top
    return exc


def test_what_travels_is_bounded() -> None:
    links, err = 0, _round_trip(_chain(50)).__cause__
    while err is not None:
        links, err = links + 1, err.__cause__
    assert links == remote.MAX_CHAIN
    many = ValueError("n")
    for i in range(100):
        many.add_note(f"{i} " + "y" * 5000)
    notes = _round_trip(many).__notes__[1:]
    assert len(notes) == remote.MAX_NOTES and all(len(n) <= remote.MAX_NOTE + 64 for n in notes)
    assert notes[-1].startswith("99 ")  # the last notes are kept
    link = ValueError("link")
    link.__notes__ = [f"{i}" * 2000 for i in range(9)]
    top = ValueError("top")
    top.__cause__ = link
    link_notes = _round_trip(top).__cause__.__notes__[1:]  # type: ignore[union-attr]
    assert len(link_notes) == remote.MAX_LINK_NOTES
    assert all(len(n) <= remote.MAX_LINK_NOTE + 64 for n in link_notes)
    big = _round_trip(ValueError("m" * 100_000, b"z" * 100_000))
    assert len(big.message) <= remote.MAX_MESSAGE + 64 and big.args == (big.message,)
    cls: type = Exception
    for i in range(40):
        cls = type(f"L{i}", (cls,), {})
    assert len(_round_trip(cls("deep")).remote_mro) == remote.MAX_MRO
    packed = trailer.pack(remote_error_of(_worst_case()), "c")
    size = len(next(iter(packed.values())))
    assert 24 * 1024 < size <= trailer.MAX_TRAILER  # every bound reached, and no more
    client_side = trailer.unpack(packed)
    assert client_side is not None and client_side.__cause__ is not None  # nothing dropped


def _worst_case() -> list[Any]:
    """A description with every field at its bound, at every level of the chain."""

    def level(depth: int) -> dict[str, Any]:
        top = depth == 0
        out: dict[str, Any] = {
            "type": "t" * remote.MAX_TYPE_NAME,
            "message": "m" * (remote.MAX_MESSAGE if top else remote.MAX_LINK_MESSAGE),
            "traceback": "b" * (remote.MAX_TRACEBACK if top else remote.MAX_LINK_TRACEBACK),
            "mro": ["n" * remote.MAX_TYPE_NAME] * remote.MAX_MRO,
            "args": b"\x90" * remote.MAX_ARGS,
            "notes": ["o" * remote.MAX_NOTE] * remote.MAX_NOTES,
            "filename": "f" * remote.MAX_FILENAME,
        }
        if depth < remote.MAX_CHAIN:
            out["cause"] = level(depth + 1)
        return out

    d = level(0)
    return [d["type"], d["message"], d["traceback"], remote.pack_extra(d)]


@pytest.mark.parametrize(
    "extra",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"mro": "not a list", "notes": [1, None], "errno": "x", "cause": 7}),
        msgpack.packb({"args": b"\xc1", "errno": 2**40}),
        msgpack.packb({"mro": ["a"] * 100}),
        b"\x00" * (remote.MAX_EXTRA + 1),
    ],
)
def test_a_malformed_description_from_a_worker_still_becomes_an_error(extra: bytes) -> None:
    err = remote_error_of(["builtins.ValueError", "m", "tb", extra])
    assert isinstance(err, ValueError) and err.message == "m"
    client_side = trailer.unpack(trailer.pack(err))
    assert isinstance(client_side, ValueError)
    assert client_side.args == ("m",) or isinstance(client_side.args, tuple)


def test_a_trailer_of_the_previous_release_still_works() -> None:
    old = {"code": "RemoteError", "message": "bad", "type": "builtins.ValueError", "traceback": "T"}
    err = trailer.unpack({"snakebridge-error-bin": msgpack.packb(old)})
    assert isinstance(err, ValueError) and str(err) == "bad" and err.traceback == "T"


def test_the_status_message_keeps_the_type_and_str_does_not() -> None:
    err = _round_trip(KeyError("k"))
    assert str(err) == "'k'" and status_message(err) == "builtins.KeyError: 'k'"
