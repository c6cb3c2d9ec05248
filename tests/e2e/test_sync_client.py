"""``snakebridge.SyncClient``: the blocking Runtime API on a loop thread it owns, against
a real server. Plain (not async) tests: that is the point of the facade."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import snakebridge
from snakebridge import Ref, StreamRef, errors

from .conftest import ServerProcess

pytestmark = pytest.mark.e2e

LOOP_THREAD = "snakebridge-sync-loop"


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    # Written by another process: nothing to wait on but its existence.
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.02)
    return path.read_text()


@pytest.fixture(autouse=True)
def _no_loop_thread_left() -> Iterator[None]:
    before = set(loop_threads())
    yield
    gc.collect()
    assert set(loop_threads()) <= before, "a SyncClient left its loop thread running"


def test_the_readme_flow_without_await(server: ServerProcess) -> None:
    with snakebridge.SyncClient(server.address) as client:
        assert client.server_version == snakebridge.__version__
        assert client.call("math", "sqrt", [16]) == 4.0
        counter = client.call_class("collections", "Counter", ["hello"])
        assert isinstance(counter, Ref)
        assert client.call_method(counter, "most_common", [1]) == [("l", 2)]
        assert client.get_module_attr("math", "pi") == 3.141592653589793
        assert client.call_dynamic("operator.add", [2, 3]) == 5
        assert client.module("math").pow(2, 10) == 1024.0
        assert client.call_helper("add", [2, 3]) == 5
        assert [h.name for h in client.helpers()][:1] == ["add"]
        assert client.describe().pools[0].name == "default"


def test_errors_arrive_as_the_async_client_raises_them(server: ServerProcess) -> None:
    with snakebridge.SyncClient(server.address) as client:
        with pytest.raises(ZeroDivisionError) as info:
            client.call("operator", "truediv", [1, 0])
        assert isinstance(info.value, errors.RemoteError)
        with pytest.raises(errors.CallTimeout):
            client.call("remote_helpers", "sleep", [5], timeout=0.3)
        with pytest.raises(ValueError, match="timeout"):
            client.call("math", "sqrt", [4], timeout=0)
    with snakebridge.SyncClient(server.address, timeout=0.3) as client:  # Client's options
        with pytest.raises(errors.CallTimeout):
            client.call("remote_helpers", "sleep", [5])


def test_defaults_blocks_apply_to_the_calls_of_their_thread(server: ServerProcess) -> None:
    with snakebridge.SyncClient(server.address) as client:
        with client.defaults(timeout=0.3), pytest.raises(errors.CallTimeout):
            client.call("remote_helpers", "sleep", [5])
        assert client.call("remote_helpers", "sleep", [0.5]) == 0.5  # outside: no limit
        with client.session() as session, client.defaults(session=session):
            ref = client.call_class("io", "StringIO")
            assert ref.session_id == session.id


def test_a_session_frees_its_refs_on_exit_and_refs_work_across_calls(
    server: ServerProcess,
) -> None:
    with snakebridge.SyncClient(server.address) as client:
        with client.session() as session:
            buf = session.call_class("io", "StringIO")
            assert buf.session_id == session.id
            session.call_method(buf, "write", ["hi"])
            client.set_attr(buf, "marker", 7)
            assert client.get_attr(buf, "marker") == 7
            assert session.call_method(buf, "getvalue") == "hi"
        with pytest.raises(errors.RefNotFound):
            client.call_method(buf, "getvalue")
        kept = client.call_class("io", "StringIO", session=client.session("explicit"))
        assert kept.session_id == "explicit"
        assert client.release_ref(kept) == 1
        with pytest.raises(errors.RefNotFound):
            client.call_method(kept, "getvalue")


def test_for_over_a_stream_yields_every_item_in_order(server: ServerProcess) -> None:
    with snakebridge.SyncClient(server.address) as client:
        assert list(client.stream("builtins", "range", [50_000])) == list(range(50_000))
        assert list(client.stream("remote_helpers", "async_numbers", [5])) == [0, 1, 2, 3, 4]


def test_breaking_out_of_a_for_loop_closes_the_remote_generator(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    with snakebridge.SyncClient(server.address) as client:
        seen = []
        for x in client.stream("remote_helpers", "forever", [str(marker)]):
            seen.append(x)
            if x == 1000:
                break
        assert seen == list(range(1001))
        assert wait_for_file(marker).startswith("closed after")
        assert client.call("math", "sqrt", [9]) == 3.0  # the worker is free again


def test_leaving_with_closes_the_stream_before_the_next_statement(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    with snakebridge.SyncClient(server.address) as client:
        with client.stream("remote_helpers", "async_forever", [str(marker)]) as items:
            for x in items:
                if x == 10:
                    break
        assert wait_for_file(marker) == "closed"
        assert list(items) == []  # closed: nothing more


def test_a_stream_error_arrives_after_its_items(server: ServerProcess) -> None:
    with snakebridge.SyncClient(server.address) as client:
        got = []
        with pytest.raises(errors.RemoteError):
            for x in client.stream("remote_helpers", "fails_after", [3]):
                got.append(x)  # noqa: PERF402 - the items before the error are the point
        assert got == [0, 1, 2]


def test_a_stream_timeout_bounds_the_whole_iteration(server: ServerProcess) -> None:
    with snakebridge.SyncClient(server.address) as client:
        with pytest.raises(errors.CallTimeout):
            for _ in client.stream("remote_helpers", "ticks", [0.05], timeout=0.5):
                pass


def test_stream_refs_by_next_and_by_stream(server: ServerProcess) -> None:
    with snakebridge.SyncClient(server.address) as client:
        it = client.call("builtins", "iter", [[1, 2, 3]])
        assert isinstance(it, StreamRef)
        assert client.stream_next(it) == 1
        assert list(client.stream(it)) == [2, 3]
        short = client.call("builtins", "iter", [[1]])
        assert client.stream_next(short) == 1
        with pytest.raises(StopIteration):
            client.stream_next(short)
        assert list(client.stream_dynamic("builtins", "iter", [[4, 5]])) == [4, 5]
        items = client.call_class("builtins", "list", [[7, 8, 9]])
        assert client.stream_len(items) == 3
        assert list(client.stream(items)) == [7, 8, 9]  # an iterable, not an iterator
        assert client.release_auto_session() >= 1


def test_close_joins_the_loop_thread_and_later_calls_raise_client_closed(
    server: ServerProcess,
) -> None:
    before = len(loop_threads())
    client = snakebridge.SyncClient(server.address)
    assert len(loop_threads()) == before + 1
    assert client.call("math", "sqrt", [4]) == 2.0  # connects on first use
    client.close()
    assert len(loop_threads()) == before
    assert client.closed
    client.close()  # again: nothing
    with pytest.raises(errors.ClientClosed):
        client.call("math", "sqrt", [4])


def test_a_client_that_is_never_closed_stops_its_thread_when_collected(
    server: ServerProcess,
) -> None:
    before = len(loop_threads())
    client = snakebridge.SyncClient(server.address)
    assert client.call("math", "sqrt", [4]) == 2.0
    del client
    gc.collect()
    assert len(loop_threads()) == before


def test_an_unreachable_server_fails_with_and_leaves_no_thread() -> None:
    before = len(loop_threads())
    with pytest.raises(errors.ConnectionFailed), snakebridge.SyncClient("127.0.0.1:1"):
        pass
    assert len(loop_threads()) == before


def test_it_works_inside_a_running_event_loop_as_in_a_notebook(server: ServerProcess) -> None:
    async def cell() -> float:
        with snakebridge.SyncClient(server.address) as client:
            result: float = client.call("math", "sqrt", [25])
            return result

    assert asyncio.run(cell()) == 5.0


def test_threads_share_one_client(server: ServerProcess) -> None:
    results: dict[int, object] = {}
    with snakebridge.SyncClient(server.address) as client:

        def work(i: int) -> None:
            results[i] = client.call("operator", "mul", [i, i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {i: i * i for i in range(8)}


def test_a_call_in_flight_when_another_thread_closes_the_client_fails_at_once(
    server: ServerProcess,
) -> None:
    client = snakebridge.SyncClient(server.address)
    assert client.call("math", "sqrt", [4]) == 2.0
    outcome: list[BaseException] = []

    def slow_call() -> None:
        try:
            client.call("remote_helpers", "sleep", [30])
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.3)  # let the call reach the server (if it has not, it fails the same way)
    client.close()
    caller.join(10)
    assert not caller.is_alive(), "the call kept waiting after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], errors.ClientClosed), outcome
    assert "closed (close()) while this call ran" in str(outcome[0])
