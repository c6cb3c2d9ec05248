"""Values that keep their type (issue #16 C) against a real server: paths, enum members,
dataclasses and namedtuples both ways, a dataclass with an unencodable field as a ref,
an enum the client does not have as a ``RemoteEnum`` that goes back as the member, and a
type registered in the client and, through a pool's preload, in the worker."""

from __future__ import annotations

import importlib
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import snakebridge

from .conftest import HERE

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

T = "typed_helpers"


@pytest.fixture(scope="module")
def typed() -> Iterator[Any]:
    """The worker's ``typed_helpers``, imported here under the same name."""
    sys.path.insert(0, str(HERE))
    try:
        module = importlib.import_module(T)
        module.register()
        yield module
    finally:
        sys.path.remove(str(HERE))
        snakebridge.unregister_type("typed.Money")


async def test_typed_values_round_trip(make_server: Any, typed: Any) -> None:
    srv = make_server("--workers", "1", "--preload", "typed_register")
    async with snakebridge.Client(srv.address) as client:
        home = await client.call(T, "home", ["ann"])
        assert home == pathlib.Path("/home/ann") and isinstance(home, pathlib.Path)
        assert await client.call(T, "parent", [pathlib.PurePosixPath("/a/b")]) == (
            pathlib.PurePosixPath("/a")
        )
        assert await client.call(T, "next_color", [typed.Color.RED]) is typed.Color.GREEN
        box = await client.call(T, "grow", [typed.Box("b", (1, 2))])
        assert box == typed.Box("b!", (2, 3)) and type(box) is typed.Box
        point = await client.call(T, "swap", [typed.Point(1, 2)])
        assert point == typed.Point(2, 1) and type(point) is typed.Point
        assert await client.call(T, "double", [typed.Money(21)]) == typed.Money(42)


async def test_what_cannot_travel_by_value_or_is_unknown(make_server: Any, typed: Any) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        locked = await client.call(T, "box_with_lock")
        assert isinstance(locked, snakebridge.Ref) and locked.type_name.endswith("Box")
        member = await client.call(T, "local_only")  # its module is not loaded here
        assert member == snakebridge.RemoteEnum("typed_worker_only:LocalOnly", "A", 1)
        # Sent back, it is the member again in the worker.
        assert await client.call("builtins", "repr", [member]) == "<LocalOnly.A: 1>"
        # Without the preload the worker does not know typed.Money: it gets a record.
        echoed = await client.call("builtins", "repr", [typed.Money(3)])
        assert "RemoteRecord(type_name='typed.Money', kind='registered'" in echoed


async def test_a_typed_value_cannot_reach_a_class_the_policy_denies(make_server: Any) -> None:
    """The attack: name a class of a denied module that the worker has loaded (its own
    runtime imports ``signal`` and ``inspect``) and have the worker build it while
    decoding the arguments. The worker checks the class like a call to it."""
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        member = snakebridge.RemoteEnum("signal:Signals", "SIGKILL", 9)
        with pytest.raises(snakebridge.errors.PolicyError, match=r"signal\.Signals"):
            await client.call("builtins", "repr", [member])
        record = snakebridge.RemoteRecord(
            "inspect:ArgInfo",
            "namedtuple",
            {"args": [], "varargs": None, "keywords": None, "locals": {}},
        )
        with pytest.raises(snakebridge.errors.PolicyError, match="inspect"):
            await client.call("builtins", "repr", [record])
    # At sandbox level none (no policy) the same value is the member: the check is
    # what refused it above.
    srv_none = make_server("--workers", "1", "--sandbox", "none")
    async with snakebridge.Client(srv_none.address) as client:
        assert await client.call("builtins", "repr", [member]) == "<Signals.SIGKILL: 9>"
