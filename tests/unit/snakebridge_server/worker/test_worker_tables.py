"""Worker-child pieces that need no process: the ref table and dotted-name resolution."""

from __future__ import annotations

import pytest

from snakebridge.errors import BadRequest, LimitExceeded, SessionLost
from snakebridge_server.worker.names import resolve
from snakebridge_server.worker.refs import RefTable

TOKEN = "0123456789abcdef" * 2  # the shape of a ref id's random part


def test_ref_table_dedups_per_session_and_releases_by_session() -> None:
    t = RefTable("b.default.0.1.", "default", max_refs=10)
    obj = object()
    r1, new1 = t.add(obj, "s", stream=False)
    r2, new2 = t.add(obj, "s", stream=False)
    r3, _ = t.add(obj, "other", stream=False)
    assert (r1.id, new1, new2) == (r2.id, True, False)
    assert r3.id != r1.id
    assert t.get(r1.id, "s") is obj
    assert t.release_session("s") == 1 and len(t) == 1


def test_ref_table_tells_lost_from_released() -> None:
    t = RefTable("b.default.0.2.", "default", max_refs=10)
    ref, _ = t.add(object(), "s", stream=False)
    assert t.release([ref.id], "s") == {"s": 1}
    from snakebridge.errors import RefNotFound

    with pytest.raises(RefNotFound):
        t.get(ref.id, "s")
    with pytest.raises(SessionLost):  # minted by incarnation 1 of the same slot
        t.get(f"b.default.0.1.{TOKEN}", "s")


def test_ref_table_cap_is_limit_exceeded() -> None:
    t = RefTable("b.default.0.1.", "default", max_refs=1)
    t.add(object(), "s", stream=False)
    with pytest.raises(LimitExceeded):
        t.add(object(), "s", stream=False)


def test_resolve_walks_dotted_names_and_imports_submodules() -> None:
    import os.path
    import pathlib

    assert resolve("os", "path.join") is os.path.join
    assert resolve("pathlib", "Path.home") == pathlib.Path.home
    assert resolve("", "os.path.join") is os.path.join
    assert resolve("xml", "etree.ElementTree").__name__ == "xml.etree.ElementTree"
    with pytest.raises(AttributeError):
        resolve("math", "nope")
    with pytest.raises(BadRequest):
        resolve("", "no_such_module_xyz.f")
