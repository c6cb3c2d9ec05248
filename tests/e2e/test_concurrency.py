"""Workers that run many calls at once (pool setting ``concurrency``, issue #16 A),
against a real server: coroutine calls overlap on one worker's event loop, sync calls
overlap in its thread pool with ``threads``, a cancel stops only its own call, a thread
that cannot be interrupted gets its worker replaced with clear errors for its other
calls and the held-back ones routed again, and refs, streams and metrics keep working.

Overlap is proved with rendezvous functions (``concurrency_helpers``): each returns only
once ``n`` calls are inside it together, which a one-call-at-a-time worker never allows.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import errors

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

H = "concurrency_helpers"


async def _gather(*calls: Any) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    async def run(i: int, call: Any) -> None:
        try:
            results[i] = await call
        except Exception as exc:  # collected: the test asserts on each outcome
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i, call in enumerate(calls):
            tg.start_soon(run, i, call)
    return results


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


async def _worker_pids(client: snakebridge.Client) -> list[int]:
    info = await client.describe()
    return [w.pid for w in info.pools[0].workers if w.state == "ready"]


async def test_coroutine_calls_run_together_on_one_worker(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--concurrency", "8")
    async with snakebridge.Client(srv.address) as client:
        pids = await _gather(
            *(client.call(H, "rendezvous", [8, "a"], timeout=30) for _ in range(8))
        )
        assert len(set(pids)) == 1 and isinstance(pids[0], int), pids
        # More calls than the concurrency: the extra ones wait and then run.
        more = await _gather(
            *(client.call(H, "rendezvous", [4, "b"], timeout=30) for _ in range(12))
        )
        assert all(isinstance(p, int) for p in more), more


async def test_at_concurrency_1_calls_still_run_one_at_a_time(make_server: Any) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        results = await _gather(
            *(client.call(H, "rendezvous", [2, "c", 1.0], timeout=30) for _ in range(2))
        )
        # The first waited alone and gave up: never two at once.
        assert any(isinstance(r, errors.RemoteError) for r in results), results
        assert "alone for 1.0s" in str(next(r for r in results if isinstance(r, Exception)))


async def test_sync_functions_run_together_in_threads(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--concurrency", "4", "--threads")
    async with snakebridge.Client(srv.address) as client:
        pids = await _gather(
            *(client.call(H, "thread_rendezvous", [4, "t"], timeout=30) for _ in range(4))
        )
        assert all(isinstance(p, int) for p in pids) and len(set(pids)) == 1, pids


async def test_without_threads_sync_functions_do_not_overlap(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--concurrency", "4")
    async with snakebridge.Client(srv.address) as client:
        results = await _gather(
            *(client.call(H, "thread_rendezvous", [2, "u", 1.0], timeout=30) for _ in range(2))
        )
        assert any(isinstance(r, errors.RemoteError) for r in results), results


async def test_a_timeout_cancels_only_its_own_coroutine(make_server: Any, tmp_path: Path) -> None:
    srv = make_server("--workers", "1", "--concurrency", "4")
    marker = tmp_path / "cancelled"
    async with snakebridge.Client(srv.address) as client:
        before = await _worker_pids(client)
        results = await _gather(
            client.call(H, "sleep_noting_cancel", [60, str(marker)], timeout=0.5),
            client.call(H, "rendezvous", [2, "d"], timeout=30),
            client.call(H, "rendezvous", [2, "d"], timeout=30),
        )
        assert isinstance(results[0], errors.CallTimeout), results
        assert results[1] == results[2] == before[0]
        with anyio.fail_after(10):
            # A file another process writes: there is no event to wait on.
            while not marker.exists():  # noqa: ASYNC110
                await anyio.sleep(0.02)
        assert marker.read_text() == "cancelled"  # the coroutine itself was cancelled
        assert await client.call(H, "pid") == before[0]  # and the worker serves on
        assert await _worker_pids(client) == before
    assert "killing it" not in srv.log


async def test_an_uninterruptible_thread_gets_its_worker_replaced(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--concurrency", "2", "--threads", "--cancel-grace", "0.5")
    async with snakebridge.Client(srv.address) as client:
        before = await _worker_pids(client)

        async def held_back() -> Any:
            await anyio.sleep(0.3)  # after the two blocking calls took both slots
            return await client.call(H, "pid", timeout=30)

        results = await _gather(
            client.call(H, "block", [60], timeout=0.5),
            client.call(H, "block", [60], timeout=30),
            held_back(),
        )
        assert isinstance(results[0], errors.CallTimeout), results
        # The other started call ends with a clear error ...
        assert isinstance(results[1], errors.WorkerCrashed), results
        assert "could not be interrupted" in str(results[1])
        # ... and the one held back never started: it ran on the replacement.
        assert isinstance(results[2], int) and results[2] not in before, (results, before)
        srv.wait_for_log("ignored cancellation of call")


async def test_refs_streams_and_metrics_with_concurrency(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--concurrency", "4", "--metrics", "127.0.0.1:0")
    async with snakebridge.Client(srv.address) as client:
        counters = await _gather(*(client.call(H, "make_counter") for _ in range(6)))
        bumped = await _gather(*(client.call_method(c, "bump") for c in counters for _ in range(3)))
        assert sorted(bumped) == sorted([1, 2, 3] * 6)
        assert [n async for n in client.stream("builtins", "range", [5])] == [0, 1, 2, 3, 4]

        async def drain() -> list[int]:
            return [n async for n in client.stream(H, "agen", [50])]

        # Async generators stream too, while coroutine calls overlap beside them.
        streamed = await _gather(
            drain(),
            drain(),
            *(client.call(H, "rendezvous", [2, "s"], timeout=30) for _ in range(2)),
        )
        assert streamed[0] == streamed[1] == list(range(50)), streamed
        assert isinstance(streamed[2], int) and isinstance(streamed[3], int), streamed
        info = (await client.describe()).pools[0]
        assert all(w.in_flight == 0 for w in info.workers)
    line = srv.wait_for_log(r"metrics on http://\S+/metrics")
    url = line.split("metrics on ", 1)[1].split()[0]
    text = await anyio.to_thread.run_sync(_get, url)
    assert 'snakebridge_worker_in_flight{pool="default",slot="0"} 0' in text


async def test_a_sync_call_on_the_loop_is_interrupted_and_the_worker_serves_on(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--concurrency", "4", "--cancel-grace", "5")
    async with snakebridge.Client(srv.address) as client:
        before = await _worker_pids(client)
        with pytest.raises(errors.CallTimeout):
            await client.call(H, "block", [60], timeout=0.5)
        # Interrupted (SIGUSR1), not killed: the same worker answers at once.
        assert await client.call(H, "pid", timeout=4) == before[0]
        assert await _worker_pids(client) == before
    assert "killing it" not in srv.log
