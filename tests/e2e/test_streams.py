"""Server-side streaming: batching, backpressure, cancellation, and the StreamRef API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import Ref, StreamRef, errors

from .conftest import HERE, ServerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    with anyio.fail_after(timeout):
        # The file is written by another process: nothing to wait on but its existence.
        while not path.exists():  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return path.read_text()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def test_finite_generator_streams_every_item_in_order(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        items = [x async for x in client.stream("remote_helpers", "numbers", [25_000])]
    assert items == list(range(25_000))


async def test_builtin_iterables_stream_too(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        assert [x async for x in client.stream("builtins", "range", [5])] == [0, 1, 2, 3, 4]
        assert [x async for x in client.stream("builtins", "range", [0])] == []


async def test_async_generators_stream(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        items = [x async for x in client.stream("remote_helpers", "async_numbers", [300])]
        slow = [x async for x in client.stream("remote_helpers", "async_numbers", [5, 0.02])]
    assert items == list(range(300))
    assert slow == list(range(5))


async def test_unencodable_items_arrive_as_refs(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        things = [t async for t in client.stream("remote_helpers", "things", [3])]
        assert all(isinstance(t, Ref) for t in things)
        assert [await client.get_attr(t, "name") for t in things] == ["0", "1", "2"]


async def test_breaking_out_closes_the_generator_and_runs_finally(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    async with snakebridge.Client(server.address) as client:
        seen = []
        async for x in client.stream("remote_helpers", "forever", [str(marker)]):
            seen.append(x)
            if x == 1000:
                break
        assert seen == list(range(1001))
        assert (await wait_for_file(marker)).startswith("closed after")


async def test_leaving_the_context_closes_an_async_generator(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    async with snakebridge.Client(server.address) as client:
        async with client.stream("remote_helpers", "async_forever", [str(marker)]) as items:
            async for x in items:
                if x == 10:
                    break
        assert await wait_for_file(marker) == "closed"


async def test_cancelled_slow_stream_frees_its_worker_promptly(
    make_server: Any, tmp_path: Path
) -> None:
    srv = make_server("--workers", "1")
    marker = tmp_path / "closed"
    async with snakebridge.Client(srv.address) as client:
        async with client.stream("remote_helpers", "slow", [str(marker), 30]) as items:
            async for first in items:
                assert first == 0
                break
        # The worker was blocked in time.sleep(30) inside the generator: it must have been
        # interrupted (not waited out) for this to answer well inside the bound.
        with anyio.fail_after(3):
            assert await client.call("math", "sqrt", [4]) == 2.0
        assert await wait_for_file(marker) == "closed"


async def test_exception_mid_stream_arrives_after_the_items_before_it(
    server: ServerProcess,
) -> None:
    seen: list[int] = []
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(ValueError, match="boom after 20000") as info:
            async for x in client.stream("remote_helpers", "fails_after", [20_000]):
                seen.append(x)
    assert seen == list(range(20_000))
    assert isinstance(info.value, errors.RemoteError)
    assert info.value.type_name == "builtins.ValueError"
    assert "fails_after" in info.value.traceback


async def test_timeout_mid_stream_is_call_timeout_and_closes_the_generator(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    seen = 0
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.CallTimeout):
            async for _ in client.stream(
                "remote_helpers", "slow", [str(marker), 0.05], timeout=0.5
            ):
                seen += 1
    assert 2 <= seen <= 20
    assert await wait_for_file(marker) == "closed"


async def test_stream_timeout_holds_per_item_for_a_slow_consumer(
    server: ServerProcess, tmp_path: Path
) -> None:
    # A fast generator fills the client's buffer with whole batches (8192 items each); a
    # consumer taking ~1 ms per item would drain one for 8 s before grpclib's deadline,
    # checked only when a batch is fetched, fired.
    marker = tmp_path / "closed"
    seen = 0
    async with snakebridge.Client(server.address) as client:
        started = time.monotonic()
        with pytest.raises(errors.CallTimeout, match="within its timeout"):
            async for _ in client.stream("remote_helpers", "forever", [str(marker)], timeout=0.5):
                seen += 1
                await anyio.sleep(0.001)
        elapsed = time.monotonic() - started
    assert seen < 8192 // 4 and elapsed < 2.0, (seen, elapsed)
    # The RPC was reset, so the server closed the generator in the worker.
    assert (await wait_for_file(marker)).startswith("closed after")


async def test_client_disconnect_mid_stream_closes_the_generator(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import asyncio, snakebridge
        async def main():
            async with snakebridge.Client({server.address!r}) as client:
                async for x in client.stream("remote_helpers", "forever", [{str(marker)!r}]):
                    if x == 100:
                        open({str(ready)!r}, "w").close()
                        await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    try:
        await wait_for_file(ready, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)  # no goodbye: the connection just drops
        proc.wait(10)
        assert (await wait_for_file(marker, timeout=10)).startswith("closed after")
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_slow_consumer_keeps_server_and_worker_memory_bounded(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1")
    (worker_pid,) = srv.worker_pids
    chunk = 256 * 1024
    async with snakebridge.Client(srv.address) as client:
        base_server, base_worker = rss_kib(srv.pid), rss_kib(worker_pid)
        peak_server = peak_worker = 0
        consumed = 0
        # An infinite generator of 256 KiB chunks; without backpressure the worker would
        # produce gigabytes while we dawdle for ~2.5 s.
        async for item in client.stream("remote_helpers", "forever", ["", chunk]):
            assert len(item) == chunk
            consumed += 1
            await anyio.sleep(0.01)
            if consumed % 20 == 0:
                peak_server = max(peak_server, rss_kib(srv.pid))
                peak_worker = max(peak_worker, rss_kib(worker_pid))
            if consumed == 200:
                break
    growth_server = (peak_server - base_server) / 1024
    growth_worker = (peak_worker - base_worker) / 1024
    print(
        f"RSS growth over 200 slow items: server {growth_server:.1f} MiB, "
        f"worker {growth_worker:.1f} MiB"
    )
    assert growth_server < 64, growth_server
    assert growth_worker < 64, growth_worker


async def test_twenty_concurrent_streams_each_get_their_own_items(
    server: ServerProcess,
) -> None:
    results: dict[int, list[int]] = {}
    async with snakebridge.Client(server.address) as client:

        async def consume(i: int) -> None:
            results[i] = [x async for x in client.stream("builtins", "range", [i, i + 2000])]

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(consume, i)
    assert results == {i: list(range(i, i + 2000)) for i in range(20)}


async def test_a_long_stream_does_not_block_calls_on_other_workers(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "closed"
    async with snakebridge.Client(server.address) as client:
        async with client.stream("remote_helpers", "slow", [str(marker), 0.05]) as items:
            async for x in items:
                if x == 0:
                    info = await client.describe()
                    busy = [w for w in info.pools[0].workers if w.in_flight]
                    assert len(busy) == 1  # the open stream counts as load on its worker
                    for _ in range(10):  # unary calls keep flowing meanwhile
                        with anyio.fail_after(2):
                            assert await client.call("math", "sqrt", [9]) == 3.0
                if x == 3:
                    break


async def test_stream_next_walks_a_stream_ref_and_stops_like_anext(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        gen = await client.call("remote_helpers", "numbers", [3])
        assert isinstance(gen, StreamRef)
        assert [await client.stream_next(gen) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(StopAsyncIteration):
            await client.stream_next(gen)
        assert gen.released  # released automatically once exhausted
        with pytest.raises(errors.RefNotFound):
            await client.stream_next(gen)


async def test_stream_ref_is_async_iterable_and_released_when_exhausted(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        gen = await client.call("remote_helpers", "numbers", [5])
        assert await client.stream_next(gen) == 0
        assert [x async for x in gen] == [1, 2, 3, 4]
        twin = StreamRef(gen.__snakebridge_ref__(), client)
        with pytest.raises(errors.RefNotFound):
            await client.stream_next(twin)


async def test_stream_ref_passed_back_as_an_argument(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        gen = await client.call("remote_helpers", "numbers", [4])
        assert await client.stream_next(gen) == 0
        assert await client.call("builtins", "list", [gen]) == [1, 2, 3]


async def test_generators_inside_containers_come_back_as_stream_refs(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        result = await client.call("remote_helpers", "gen_in_container")
        assert result["n"] == 1 and isinstance(result["gen"], StreamRef)
        assert [x async for x in result["gen"]] == [0, 1, 4, 9]


async def test_stream_len_is_the_iterable_length_or_a_remote_type_error(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        bag = await client.call_class("remote_helpers", "Bag", [])
        assert await client.stream_len(bag) == 3
        gen = await client.call("remote_helpers", "numbers", [3])
        with pytest.raises(TypeError):
            await client.stream_len(gen)


async def test_stream_over_a_ref_and_over_a_method_of_a_ref(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        bag = await client.call_class("remote_helpers", "Bag", [])
        assert [x async for x in client.stream(bag)] == [3, 1, 2]
        assert [x async for x in client.stream(bag, "items")] == [1, 2, 3]
        # iterating an iterable (not an iterator) leaves the ref alive
        assert await client.stream_len(bag) == 3


async def test_stream_dynamic_iterates_one_rpc_per_item(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        items = [x async for x in client.stream_dynamic("remote_helpers", "numbers", [5])]
        from_iterable = [x async for x in client.stream_dynamic("remote_helpers", "Bag", [])]
    assert items == [0, 1, 2, 3, 4]
    assert from_iterable == [3, 1, 2]


async def test_streaming_something_not_iterable_is_a_remote_type_error(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(TypeError):
            async for _ in client.stream("math", "sqrt", [4]):
                pass


def test_remote_helpers_module_is_where_the_server_finds_it() -> None:
    assert (HERE / "remote_helpers.py").exists()


async def test_an_async_generator_stream_ref_is_iterable(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        agen = await client.call("remote_helpers", "async_numbers", [4])
        assert isinstance(agen, StreamRef) and agen.type_name == "async_generator"
        assert await client.stream_next(agen) == 0
        assert [x async for x in agen] == [1, 2, 3]


async def test_exhausted_stream_refs_stop_counting_against_the_ref_cap(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--max-refs-per-session", "2")
    async with snakebridge.Client(srv.address) as client:
        for _ in range(3):  # three StreamRefs in turn, each exhausted: never over the cap
            gen = await client.call("remote_helpers", "numbers", [2])
            assert [x async for x in gen] == [0, 1]
        gen = await client.call("remote_helpers", "numbers", [1])
        assert await client.stream_next(gen) == 0
        with pytest.raises(StopAsyncIteration):
            await client.stream_next(gen)
        a = await client.call_class("remote_helpers", "Thing", [])
        b = await client.call_class("remote_helpers", "Thing", [])
        assert a != b


async def test_a_cyclic_item_arrives_as_a_ref_and_the_stream_goes_on(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        first, cyc, last = [x async for x in client.stream("remote_helpers", "with_cyclic_item")]
        assert (first, last) == (0, 2)
        assert isinstance(cyc, Ref) and cyc.type_name == "list"
        assert await client.call("builtins", "len", [cyc]) == 2


async def test_oversized_stream_item_is_limit_exceeded_and_the_worker_survives(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--max-message-size", "100000")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call("remote_helpers", "pid")
        seen = []
        with pytest.raises(errors.LimitExceeded, match="stream batch"):
            async for x in client.stream("remote_helpers", "huge_items", [200_000]):
                seen.append(x)
        assert seen == [b"x" * 10]
        with pytest.raises(errors.LimitExceeded, match="arguments are"):
            async for _ in client.stream("remote_helpers", "echo", [b"x" * 200_000]):
                pass
        assert await client.call("remote_helpers", "pid") == pid


async def test_an_unread_stream_does_not_stall_other_calls_on_the_client(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        async with client.stream("remote_helpers", "forever", ["", 256 * 1024]) as items:
            async for _ in items:
                break  # leave it unread (not closed) while we do other work
            await anyio.sleep(0.5)  # the stream fills its window meanwhile
            for _ in range(5):
                with anyio.fail_after(5):
                    assert await client.call("math", "sqrt", [16]) == 4.0


async def test_an_oversized_stream_request_is_limit_exceeded(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-message-size", "1000000")
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(errors.LimitExceeded, match="request message"):
            async for _ in client.stream("remote_helpers", "echo", [b"x" * 8_000_000]):
                pass
