"""What generated code runs on (``snakebridge.bindings``) and the current client
(``snakebridge.use``): omitted arguments are not sent, typed refs keep their identity, and
a wrapper with no client says how to get one. No server: the client is never connected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import snakebridge
from snakebridge import _current, bindings
from snakebridge.bindings import OMIT, _keywords, _positional
from snakebridge.wire.codec import RefPayload

pytestmark = pytest.mark.anyio


def test_positional_arguments_stop_at_the_first_omitted_one() -> None:
    assert _positional("f", (1, 2)) == [1, 2]
    assert _positional("f", (1, OMIT, OMIT)) == [1]
    assert _positional("f", (OMIT,)) == []
    with pytest.raises(TypeError, match="after the omitted positional argument 2"):
        _positional("f", (1, OMIT, 3))


def test_omitted_keywords_are_not_sent_but_falsy_values_are() -> None:
    assert _keywords({"a": OMIT, "b": None, "c": 0, "d": False}) == {"b": None, "c": 0, "d": False}
    assert repr(OMIT) == "OMIT" and not OMIT


class Point(bindings.RemoteObject):
    __slots__ = ()
    _sb_name = "Point"


def test_typed_retypes_the_same_ref_and_leaves_other_values() -> None:
    ref = snakebridge.Ref(RefPayload(False, "b.p.0.1.x", "s", "p", "demo.Point"))
    point = bindings.typed(Point, ref)
    assert point is ref and type(point) is Point
    assert point.id == "b.p.0.1.x" and point.session_id == "s"
    assert bindings.typed(Point, None) is None
    stream = snakebridge.StreamRef(RefPayload(True, "b.p.0.1.y", "s", "p", "generator"))
    kept: Any = bindings.typed(Point, stream)
    assert type(kept) is snakebridge.StreamRef  # an iterator stays a stream


async def test_a_wrapper_without_a_client_raises_no_current_client() -> None:
    library = bindings.Library("math", "python 3")
    with pytest.raises(snakebridge.NoCurrentClient, match="pass client="):
        await library.call(None, "sqrt", (4,), {})
    with pytest.raises(TypeError, match="client= takes a Client or a Session"):
        await library.call("127.0.0.1:1", "sqrt", (4,), {})  # type: ignore[arg-type]


async def test_use_sets_the_current_client_for_the_task_and_restores_it() -> None:
    client = snakebridge.Client("127.0.0.1:1")
    session = client.session("s1")
    assert _current.CURRENT.get() is None
    with snakebridge.use(client):
        assert bindings.current() is client
        with snakebridge.use(session):
            assert bindings.current() is session
        assert bindings.current() is client

        async def other_task() -> Any:
            return bindings.current()

        # A task started inside copies the context: it sees the same client.
        assert await asyncio.create_task(other_task()) is client
    with pytest.raises(snakebridge.NoCurrentClient):
        bindings.current()
    with pytest.raises(TypeError):
        snakebridge.use("127.0.0.1:1")  # type: ignore[arg-type]


async def test_current_clients_of_two_tasks_do_not_mix() -> None:
    a, b = snakebridge.Client("127.0.0.1:1"), snakebridge.Client("127.0.0.1:2")
    seen: dict[str, Any] = {}
    gate = asyncio.Event()

    async def run(name: str, client: snakebridge.Client) -> None:
        snakebridge.use(client)
        await gate.wait()
        seen[name] = bindings.current()

    tasks = [asyncio.create_task(run("a", a)), asyncio.create_task(run("b", b))]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert seen == {"a": a, "b": b}
    assert _current.CURRENT.get() is None
