"""The unary Runtime API against a real server, through the SDK."""

from __future__ import annotations

import datetime as dt
import math
import pathlib
import uuid
from decimal import Decimal
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import Ref, RefNotFound, StreamRef

from .conftest import ServerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_call_returns_the_worker_result(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        assert await client.call("math", "sqrt", [16]) == 4.0
        result = await client.call("builtins", "sorted", [[3, 1, 2]], kwargs={"reverse": True})
        assert result == [3, 2, 1]


async def test_call_runs_in_a_worker_process_not_the_server(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        pid = await client.call("remote_helpers", "pid")
    assert pid in server.worker_pids
    assert pid != server.pid


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        2**64 + 1,
        -(10**40),
        1.5,
        float("inf"),
        -0.0,
        3 + 4j,
        "héllo \U0001f40d",
        b"\x00\xff bytes",
        bytearray(b"ba"),
        [1, [2, [3]]],
        (1, (2, "t")),
        {"id": 7, "session_id": "not-a-ref"},
        {(1, 2): "tuple key", frozenset({1}): "frozenset key", 3: None},
        {1, 2, 3},
        frozenset({"a"}),
        dt.datetime(2026, 11, 25, 12, 30, 1, 5),
        dt.datetime(2026, 11, 25, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.date(2026, 1, 2),
        dt.time(23, 59, 59, 999999),
        dt.timedelta(days=-1, seconds=5, microseconds=7),
        Decimal("3.14159265358979323846264338327950288"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ],
    ids=repr,
)
async def test_values_round_trip_exactly_through_a_worker(
    server: ServerProcess, value: Any
) -> None:
    async with snakebridge.Client(server.address) as client:
        back = await client.call("remote_helpers", "echo", [value])
    assert type(back) is type(value)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, back) == math.copysign(1, value)
    assert back == value


async def test_nan_round_trips_as_nan(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        back = await client.call("remote_helpers", "echo", [float("nan")])
    assert isinstance(back, float) and math.isnan(back)


async def test_numpy_arrays_travel_as_arrays(server: ServerProcess) -> None:
    np = pytest.importorskip("numpy", reason="numpy is a test dependency")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    async with snakebridge.Client(server.address) as client:
        doubled = await client.call("numpy", "multiply", [a, 2])
        total = await client.call("numpy", "sum", [a])
    assert isinstance(doubled, np.ndarray)
    assert doubled.dtype == np.float32 and doubled.shape == (3, 4)
    assert np.array_equal(doubled, a * 2)
    doubled[0, 0] = -1  # arrays come back writable
    assert type(total) is np.float32 and total == a.sum()


async def test_call_class_returns_a_ref_and_call_method_uses_it(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        counter = await client.call_class("collections", "Counter", ["hello"])
        assert isinstance(counter, Ref)
        assert counter.type_name == "collections.Counter"
        assert counter.session_id == client.current_session()
        assert counter.pool == "default"
        assert await client.call_method(counter, "most_common", [1]) == [("l", 2)]


async def test_ref_repr_makes_no_remote_call(server: ServerProcess) -> None:
    client = snakebridge.Client(server.address)
    async with client:
        ref = await client.call_class("remote_helpers", "Thing", ["x"])
    # The client is closed: a remote call would fail, repr must not need one.
    assert "remote_helpers.Thing" in repr(ref) and ref.id in repr(ref)


async def test_get_attr_and_set_attr_including_dotted_names(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        thing = await client.call_class("remote_helpers", "Thing", [], kwargs={"name": "a"})
        assert await client.get_attr(thing, "name") == "a"
        await client.set_attr(thing, "name", "b")
        assert await client.get_attr(thing, "name") == "b"
        assert await client.get_attr(thing, "child.label") == "child"
        await client.set_attr(thing, "child.label", "renamed")
        assert await client.get_attr(thing, "child.label") == "renamed"


async def test_set_attr_can_store_another_ref(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        a = await client.call_class("remote_helpers", "Thing", ["a"])
        b = await client.call_class("remote_helpers", "Thing", ["b"], affinity="strict")
        await client.set_attr(a, "peer", b)
        assert await client.get_attr(a, "peer.name") == "b"


async def test_get_module_attr_reads_without_calling(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        assert await client.get_module_attr("math", "pi") == math.pi
        assert await client.get_module_attr("os", "sep") == "/"


async def test_dotted_function_names_resolve_attribute_by_attribute(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        home = await client.call("pathlib", "Path.home")
        # A path travels by value (docs/wire.md, EXT_PATH): the worker's HOME, its scratch dir.
        assert isinstance(home, pathlib.PosixPath) and home.is_absolute(), home
        assert await client.call_dynamic("os.path.join", ["a", "b"]) == "a/b"
        # A submodule its parent does not import by itself.
        root = await client.call("xml", "etree.ElementTree.fromstring", ["<a><b/></a>"])
        assert await client.get_attr(root, "tag") == "a"
        assert await client.call("os.path", "basename", ["/x/y.txt"]) == "y.txt"


async def test_module_proxy_calls_and_reads_attributes(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        math_mod = client.module("math")
        assert await math_mod.floor(2.5) == 2
        assert await math_mod.e == math.e
        assert await client.module("os").path.join("a", "b") == "a/b"


async def test_async_functions_are_awaited_in_the_worker(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        assert await client.call("remote_helpers", "async_add", [2, 3]) == 5


async def test_call_helper_runs_a_registered_helper(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        assert await client.call_helper("add", [2, 3]) == 5
        assert await client.call_helper("greet", ["bob"], kwargs={"punctuation": "?"}) == (
            "hello bob?"
        )


async def test_unencodable_results_become_refs_in_place(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        result = await client.call("remote_helpers", "mixed")
    one, obj, inner, pair = result
    assert one == 1 and pair == (2, 3)
    assert isinstance(obj, Ref) and obj.type_name == "remote_helpers.Thing"
    assert set(inner) == {"again", "lock"}
    assert inner["again"] == obj and inner["again"].id == obj.id  # same object, same ref
    assert isinstance(inner["lock"], Ref) and inner["lock"].id != obj.id


async def test_generators_come_back_as_stream_refs(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        gen = await client.call("remote_helpers", "counter")
    assert isinstance(gen, StreamRef) and gen.type_name == "generator"


async def test_cyclic_results_come_back_as_a_ref_without_hanging(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address, timeout=10) as client:
        cyc = await client.call("remote_helpers", "cyclic")
        assert isinstance(cyc, Ref) and cyc.type_name == "list"
        assert await client.call("builtins", "len", [cyc]) == 2


async def test_refs_nested_in_containers_arrive_as_the_real_objects(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        a = await client.call_class("remote_helpers", "Thing", ["a"])
        b = await client.call_method(a, "rename", ["a2"])
        assert b == "a2"
        arranged = await client.call("remote_helpers", "type_names", [[a, {"k": a, "n": 1}, [[a]]]])
    assert arranged == ["Thing", {"k": "Thing", "n": "int"}, [["Thing"]]]


async def test_release_ref_frees_the_object_and_marks_the_handle(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        thing = await client.call_class("remote_helpers", "Thing", [])
        twin = Ref(thing.__snakebridge_ref__(), client)  # a second handle to the same id
        assert await client.release_ref(thing) == 1
        assert thing.released
        with pytest.raises(RefNotFound):  # locally, no round trip
            await client.get_attr(thing, "name")
        with pytest.raises(RefNotFound):  # the server has forgotten it too
            await client.get_attr(twin, "name")


async def test_async_with_ref_releases_it(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        async with await client.call_class("remote_helpers", "Thing", []) as thing:
            assert await client.get_attr(thing, "name") == "thing"
        assert thing.released
        with pytest.raises(RefNotFound):
            await client.call_method(thing, "rename", ["x"])


async def test_explicit_session_releases_its_refs_on_exit(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        async with client.session() as session:
            thing = await session.call_class("remote_helpers", "Thing", [])
            assert thing.session_id == session.id != client.current_session()
            assert await session.get_attr(thing, "name") == "thing"
        twin = Ref(thing.__snakebridge_ref__(), client)
        with pytest.raises(RefNotFound):
            await client.get_attr(twin, "name")


async def test_release_session_frees_refs_on_every_worker_it_touched(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        session = client.session()
        # Keep worker A busy so the second object lands on worker B (least loaded).
        first = await session.call_class("remote_helpers", "Thing", ["one"])
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call, "remote_helpers", "sleep", [0.6])
            await anyio.sleep(0.2)
            second = await session.call_class("remote_helpers", "Thing", ["two"])
        assert await session.get_attr(first, "name") == "one"
        assert await session.get_attr(second, "name") == "two"
        owners = {first.id.split(".")[2], second.id.split(".")[2]}
        assert len(owners) == 2, f"expected refs on two workers, got {first.id}, {second.id}"
        assert await client.release_session(session.id) == 2
        for ref in (first, second):
            with pytest.raises(RefNotFound):
                await client.get_attr(Ref(ref.__snakebridge_ref__(), client), "name")


async def test_auto_session_is_lazy_stable_and_replaceable(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        sid = client.current_session()
        assert sid == client.current_session()
        thing = await client.call_class("remote_helpers", "Thing", [])
        assert thing.session_id == sid
        client.clear_auto_session()
        assert client.current_session() != sid
        # clearing did not release: the old ref still works
        assert await client.get_attr(thing, "name") == "thing"
        new_sid = client.current_session()
        other = await client.call_class("remote_helpers", "Thing", [])
        assert await client.release_auto_session() == 1
        assert client.current_session() not in (sid, new_sid)
        with pytest.raises(RefNotFound):
            await client.get_attr(Ref(other.__snakebridge_ref__(), client), "name")


async def test_closing_the_client_releases_its_auto_session(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        thing = await client.call_class("remote_helpers", "Thing", [])
    async with snakebridge.Client(server.address) as other:
        with pytest.raises(RefNotFound):
            await other.get_attr(Ref(thing.__snakebridge_ref__(), other), "name")


async def test_a_closed_client_raises_client_closed_instead_of_reconnecting(
    server: ServerProcess,
) -> None:
    client = snakebridge.Client(server.address)
    assert await client.call("math", "sqrt", [16]) == 4.0  # connects on first use
    async with client:
        thing = await client.call_class("remote_helpers", "Thing", [])
    with pytest.raises(snakebridge.errors.ClientClosed):
        await client.call("math", "sqrt", [16])
    with pytest.raises(snakebridge.errors.ClientClosed):
        await client.get_attr(thing, "name")
    with pytest.raises(snakebridge.errors.ClientClosed):
        [x async for x in client.stream("builtins", "range", [3])]
    with pytest.raises(snakebridge.errors.ClientClosed):
        async with client:
            pass
    await client.close()  # again: nothing to do, nothing raised
    async with snakebridge.Client(server.address) as other:
        assert await other.call("math", "sqrt", [16]) == 4.0
        with pytest.raises(RefNotFound):  # closing released the auto session, once
            await other.get_attr(Ref(thing.__snakebridge_ref__(), other), "name")


async def test_describe_reports_versions_pools_and_workers(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        info = await client.describe()
    assert info.server_version == snakebridge.__version__
    assert info.protocol_version == 1
    (pool,) = info.pools
    assert pool.name == "default" and pool.size == 2
    assert {w.pid for w in pool.workers} == server.worker_pids
    assert all(w.state == "ready" for w in pool.workers)
    # The shared server registers remote_helpers, whose __all__ is add and greet: names,
    # not sources, so no server path reaches a client.
    assert list(info.helpers) == ["add", "greet"]


async def test_five_hundred_concurrent_calls_all_succeed(server: ServerProcess) -> None:
    results: dict[int, Any] = {}
    async with snakebridge.Client(server.address) as client:

        async def one(i: int) -> None:
            results[i] = await client.call("math", "sqrt", [i * i])

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(one, i)
    assert results == {i: float(i) for i in range(500)}


async def test_address_from_environment_variable(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAKEBRIDGE_ADDRESS", server.address)
    async with snakebridge.Client() as client:
        assert client.address == server.address
        assert await client.call("math", "sqrt", [4]) == 2.0
