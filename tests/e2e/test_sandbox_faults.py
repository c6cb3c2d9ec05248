"""Sandboxed workers (level standard, the default) under faults: a worker SIGKILLed under
load, the ways a process can crash, deadlines the interpreter can and cannot honour, the
per-worker rlimits, the bounded queue, and process hygiene (env, cwd, session).

The functions the workers run are in ``fault_helpers.py``: the sandbox policy keeps
``os``/``sys``/``faulthandler`` out of reach by name, a helper module of our own is not.
Time bounds here are hang detection (``fail_after``), never performance assertions.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import stat
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import errors

from .conftest import ServerProcess, pid_alive

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

MiB = 1024 * 1024
H = "fault_helpers"


async def _ready_workers(client: snakebridge.Client, size: int, gone: set[int]) -> list[Any]:
    """Poll Describe until the pool has ``size`` ready workers, none of them in ``gone``."""
    with anyio.fail_after(10):
        while True:
            workers = list((await client.describe()).pools[0].workers)
            if (
                len(workers) == size
                and all(w.state == "ready" for w in workers)
                and not gone & {w.pid for w in workers}
            ):
                return workers
            await anyio.sleep(0.05)


async def _ready_pid(client: snakebridge.Client, slot: int) -> int:
    """The pid of the worker in ``slot`` once it is ready (never 0: kill(0) is our group)."""
    with anyio.fail_after(10):
        while True:
            for w in (await client.describe()).pools[0].workers:
                if w.slot == slot and w.state == "ready" and w.pid > 0:
                    return int(w.pid)
            await anyio.sleep(0.02)


def _started(markers: Path) -> dict[int, list[int]]:
    """call token -> pids of the workers it started in (from ``sleep_pid``'s markers)."""
    ran: dict[int, list[int]] = {}
    for marker in markers.iterdir():
        token, pid = marker.name.split(".")
        ran.setdefault(int(token), []).append(int(pid))
    return ran


async def _gone(path: str) -> None:
    """Wait (bounded) for ``path`` to disappear; nothing to wait on but the file system."""
    with anyio.fail_after(10):
        while os.path.exists(path):  # noqa: ASYNC110
            await anyio.sleep(0.05)


# -- 1. SIGKILL under load ------------------------------------------------------------------

CALLS = 500
# One HTTP/2 connection carries at most 100 concurrent calls (the server's
# SETTINGS_MAX_CONCURRENT_STREAMS, h2's default; the client waits for a free stream), so
# 500 calls in flight at once take 5 clients.
CLIENTS = 5
KILL_AFTER = 400  # completed calls before the SIGKILL: the rest are running or queued


async def test_sigkill_under_500_concurrent_calls_fails_only_the_running_call(
    make_server: Any, tmp_path: Path
) -> None:
    """Calls are pipelined to a worker as they arrive, so the killed worker has one call
    running and many queued. The server knows which one was running (replies come in
    order): that one fails with WorkerCrashed (or is retried elsewhere if idempotent),
    every queued one never ran and is re-routed. Marker files written by each call as it
    starts show which calls ran where: a non-idempotent call must never run twice."""
    srv = make_server("--workers", "2")
    markers = tmp_path / "started"
    markers.mkdir()
    results: dict[int, int] = {}
    crashed: list[int] = []
    failed: dict[int, BaseException] = {}
    finished = 0
    kill_now = anyio.Event()

    async def one(client: snakebridge.Client, i: int) -> None:
        nonlocal finished
        idempotent = i % 2 == 0
        seconds = 0.02 + (i % 4) / 1000
        try:
            results[i] = await client.call(
                H, "sleep_pid", [seconds, str(markers), str(i)], idempotent=idempotent
            )
        except errors.WorkerCrashed:
            crashed.append(i)
        except Exception as exc:
            failed[i] = exc
        finally:
            finished += 1
            if finished == KILL_AFTER:
                kill_now.set()

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(snakebridge.Client(srv.address)) for _ in range(CLIENTS)
        ]
        client = clients[0]
        victim = next(w.pid for w in (await client.describe()).pools[0].workers if w.slot == 0)
        survivor = next(iter(srv.worker_pids - {victim}))
        at_kill = 0
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(CALLS):
                    tg.start_soon(one, clients[i % CLIENTS], i)
                await kill_now.wait()
                at_kill = (await client.describe()).pools[0].in_flight
                os.kill(victim, signal.SIGKILL)
        assert not failed, failed
        assert len(results) + len(crashed) == CALLS
        # Idempotent calls were retried on the other worker: all of them succeeded.
        assert all(i % 2 == 1 for i in crashed), crashed
        # Only the one call that was running on the killed worker may be lost.
        assert len(crashed) <= 1, crashed

        ran = _started(markers)
        for i in range(CALLS):
            where = ran.get(i, [])
            if i in results:
                assert results[i] in where, (i, results[i], where)
            if i % 2 == 1:
                # at most once: a call reported as never started must not have started
                assert len(where) <= 1, f"non-idempotent call {i} ran in {where}"
            else:
                assert 1 <= len(where) <= 2, (i, where)

        # The pool is whole again: two ready workers, the victim replaced by a new process.
        workers = await _ready_workers(client, 2, {victim})
        assert survivor in {w.pid for w in workers}
        by_pid = Counter(results.values())
        assert set(by_pid) <= {victim} | {w.pid for w in workers}
        print(
            f"\nin flight at the kill: {at_kill}; results by pid: {dict(by_pid)} "
            f"(victim {victim}, survivor {survivor}); crashed: {crashed}"
        )
        assert (await client.describe()).pools[0].restarts == {"crash": 1}
        assert not pid_alive(victim)
        # and both take calls (concurrent calls go to the least-loaded worker)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                pids: list[int] = []

                async def call_pid() -> None:
                    pids.append(await client.call(H, "sleep_pid", [0.3]))

                tg.start_soon(call_pid)
                tg.start_soon(call_pid)
        assert set(pids) == {w.pid for w in workers}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_calls_a_killed_worker_completed_are_never_run_again(
    make_server: Any, tmp_path: Path
) -> None:
    """At-most-once for non-idempotent calls, under a steady stream of fast calls (the
    server, not the worker, is the bottleneck, so replies wait in the channel): each of
    three SIGKILLs may fail the one call that was running, nothing may run twice."""
    srv = make_server("--workers", "2", "--crash-loop-max", "100", "--session-crash-limit", "0")
    markers = tmp_path / "started"
    markers.mkdir()
    tokens = itertools.count()
    results: dict[int, int] = {}
    crashed: list[int] = []
    failed: dict[int, BaseException] = {}
    killed: list[int] = []
    stop = False

    async def caller(client: snakebridge.Client) -> None:
        while not stop:
            i = next(tokens)
            try:
                results[i] = await client.call(H, "sleep_pid", [0, str(markers), str(i)])
            except errors.WorkerCrashed:
                crashed.append(i)
            except Exception as exc:
                failed[i] = exc

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(snakebridge.Client(srv.address)) for _ in range(CLIENTS)
        ]
        # Its own connection: the callers keep theirs at the 100-stream HTTP/2 limit, where
        # a Describe could wait for a free stream for as long as they run.
        observer = await stack.enter_async_context(snakebridge.Client(srv.address))
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for k in range(CALLS):
                    tg.start_soon(caller, clients[k % CLIENTS])
                for slot in (0, 1, 0):
                    await anyio.sleep(0.3)
                    pid = await _ready_pid(observer, slot)
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                await anyio.sleep(0.3)
                stop = True
    assert not failed, failed
    assert len(crashed) <= len(killed), crashed
    ran = _started(markers)
    twice = {i: pids for i, pids in ran.items() if len(pids) > 1}
    print(f"\n{len(results)} calls, {len(killed)} kills, {len(crashed)} crashed")
    message = f"{len(twice)} non-idempotent calls ran twice, e.g. {sorted(twice)[:5]}"
    assert not twice, message


# -- 2. crash kinds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("helper", "args"),
    [("segfault", []), ("hard_exit", [1]), ("abort", [])],
    ids=["segfault", "os._exit", "os.abort"],
)
async def test_a_crashing_call_is_worker_crashed_and_the_next_runs_on_a_replacement(
    make_server: Any, helper: str, args: list[Any]
) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        before = await client.call(H, "pid")
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(errors.WorkerCrashed):
            await client.call(H, helper, args)
        print(f"\n{helper}: WorkerCrashed after {time.monotonic() - started:.3f}s")
        with anyio.fail_after(10):
            after = await client.call(H, "pid")
        assert after != before
        assert not pid_alive(before)
        assert (await client.describe()).pools[0].restarts == {"crash": 1}


# -- 3. deadlines -----------------------------------------------------------------------


async def test_a_python_busy_loop_is_interrupted_at_its_deadline_and_the_worker_survives(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call(H, "pid")
        with anyio.fail_after(10), pytest.raises(errors.CallTimeout):
            await client.call(H, "busy_forever", timeout=1)
        # Within the cancel grace (default 2 s) the loop was interrupted: same process.
        with anyio.fail_after(10):
            assert await client.call(H, "pid") == pid
        assert (await client.describe()).pools[0].restarts == {}


async def test_a_c_loop_that_ignores_the_deadline_gets_its_worker_killed_and_replaced(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--cancel-grace", "1")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call(H, "pid")
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(errors.CallTimeout):
            await client.call(H, "c_loop_forever", timeout=1)
        print(f"\nC loop: CallTimeout after {time.monotonic() - started:.3f}s")
        # Sent at once, this call queues behind the stuck one on the same worker; the kill
        # after the grace re-routes it to the replacement.
        with anyio.fail_after(10):
            new_pid = await client.call(H, "pid")
        print(f"C loop: next call answered {time.monotonic() - started:.3f}s after the first")
        assert new_pid != pid
        assert not pid_alive(pid)
        assert (await client.describe()).pools[0].restarts == {"killed": 1}
    srv.wait_for_log("ignored cancellation")


async def test_server_default_and_maximum_call_timeouts_apply(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--call-timeout", "0.5", "--max-call-timeout", "1")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call(H, "pid")
        # no client timeout: the server's default
        with (
            anyio.fail_after(10),
            pytest.raises(errors.CallTimeout, match=r"within its timeout \(0\.5s\)"),
        ):
            await client.call(H, "busy_forever")
        # a client timeout above the maximum: capped
        with (
            anyio.fail_after(10),
            pytest.raises(errors.CallTimeout, match=r"within its timeout \(1s\)"),
        ):
            await client.call(H, "busy_forever", timeout=30)
        with anyio.fail_after(10):
            assert await client.call(H, "pid") == pid


# -- 4. rlimits -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited() -> Iterator[ServerProcess]:
    """One worker with small limits, shared by the rlimit tests (none of them kills it)."""
    srv = ServerProcess(
        "--workers", "1",
        "--max-call-cpu", "1",
        "--max-memory", str(512 * MiB),
        "--max-file-size", str(MiB),
        "--max-open-files", "64",
    ).start()  # fmt: skip
    yield srv
    assert srv.stop() == 0


async def test_limits_are_reported_as_sandbox_layers(limited: ServerProcess) -> None:
    async with snakebridge.Client(limited.address) as client:
        (pool,) = (await client.describe()).pools
    rlimits = next(layer for layer in pool.sandbox_layers if layer.startswith("rlimits:"))
    for part in (f"as={512 * MiB}", "nofile=64", f"fsize={MiB}", "cpu=1s per call"):
        assert part in rlimits, rlimits


async def test_cpu_budget_is_per_call_and_the_worker_survives(limited: ServerProcess) -> None:
    async with snakebridge.Client(limited.address) as client:
        pid = await client.call(H, "pid")
        with anyio.fail_after(20), pytest.raises(errors.LimitExceeded, match="CPU"):
            await client.call(H, "burn_cpu", [3.0])
        assert await client.call(H, "pid") == pid
        # Each call gets a fresh budget: together these use more than one budget.
        with anyio.fail_after(20):
            assert await client.call(H, "burn_cpu", [0.6]) == pid
            assert await client.call(H, "burn_cpu", [0.6]) == pid


async def test_address_space_limit_is_a_memory_error(limited: ServerProcess) -> None:
    async with snakebridge.Client(limited.address) as client:
        pid = await client.call(H, "pid")
        with pytest.raises(MemoryError) as exc:
            await client.call(H, "allocate", [1024 * MiB], timeout=10)
        assert isinstance(exc.value, errors.RemoteError)
        assert await client.call(H, "allocate", [64 * MiB]) == pid


async def test_file_size_limit_is_efbig_and_the_worker_survives(limited: ServerProcess) -> None:
    async with snakebridge.Client(limited.address) as client:
        pid = await client.call(H, "pid")
        with pytest.raises(OSError, match=r"\[Errno 27\] File too large"):
            await client.call(H, "write_file", ["big.bin", 2 * MiB])
        assert await client.call(H, "write_file", ["small.bin", MiB // 2]) == MiB // 2
        assert await client.call(H, "pid") == pid


async def test_open_files_limit_is_emfile_and_the_worker_survives(limited: ServerProcess) -> None:
    async with snakebridge.Client(limited.address) as client:
        pid = await client.call(H, "pid")
        with pytest.raises(OSError, match=r"\[Errno 24\] Too many open files"):
            await client.call(H, "open_many", [100])
        assert await client.call(H, "open_many", [20]) == 20
        assert await client.call(H, "pid") == pid


# -- 5. bounded queue -------------------------------------------------------------------


async def test_a_full_queue_rejects_calls_at_once_with_pool_saturated(make_server: Any) -> None:
    """``--max-queued`` bounds the calls in flight on the pool, the running ones included:
    with one worker and 4, four of ten concurrent calls are taken, six refused."""
    srv = make_server("--workers", "1", "--max-queued", "4")
    finished: list[float] = []
    refused: list[float] = []
    async with snakebridge.Client(srv.address) as client:

        async def slow() -> None:
            try:
                await client.call(H, "sleep_pid", [0.3])
                finished.append(time.monotonic())
            except errors.PoolSaturated:
                refused.append(time.monotonic())

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(slow)
    assert (len(finished), len(refused)) == (4, 6)
    assert max(refused) < min(finished)  # refused before even the first call was done


# -- 6. hygiene -------------------------------------------------------------------------


async def test_workers_get_a_scrubbed_env_and_their_own_scratch_dir_and_session(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    srv = make_server("--workers", "2", env={"MY_SECRET_TOKEN": "x"})
    server_cwd = os.readlink(f"/proc/{srv.pid}/cwd")
    async with snakebridge.Client(srv.address) as client:
        infos: list[dict[str, Any]] = []

        async def identity() -> None:
            infos.append(await client.call(H, "identity", [0.3]))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(identity)
                tg.start_soon(identity)
        assert {i["pid"] for i in infos} == srv.worker_pids  # one call on each worker
        for info in infos:
            cwd = info["cwd"]
            assert os.path.realpath(cwd) != os.path.realpath(server_cwd)
            assert os.path.isdir(cwd) and stat.S_IMODE(os.stat(cwd).st_mode) == 0o700
            assert info["written"] == "written"
            assert os.path.realpath(info["home"]) == os.path.realpath(info["tmpdir"]) == cwd
            assert info["secret"] is None
            assert info["omp"] == "1"
            # its own session and process group, led by itself
            assert info["sid"] == info["pgid"] == info["pid"]
            assert info["sid"] != os.getsid(srv.pid)
            assert info["pgid"] != os.getpgid(srv.pid)
        first, second = infos
        assert first["cwd"] != second["cwd"]

        # The scratch dir goes with its worker; the other worker's stays.
        os.kill(first["pid"], signal.SIGKILL)
        await _gone(first["cwd"])
        assert os.path.isdir(second["cwd"])
        workers = await _ready_workers(client, 2, {first["pid"]})
        replacement = ({w.pid for w in workers} - {second["pid"]}).pop()
        # The replacement has a fresh one (concurrent calls reach both workers).
        infos.clear()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(identity)
                tg.start_soon(identity)
        info = next(i for i in infos if i["pid"] == replacement)
        assert info["cwd"] not in (first["cwd"], second["cwd"]) and os.path.isdir(info["cwd"])
    assert srv.stop() == 0
    assert not os.path.exists(second["cwd"]) and not os.path.exists(info["cwd"])


async def test_thread_limits_from_the_server_env_win(make_server: Any) -> None:
    srv = make_server("--workers", "1", env={"OMP_NUM_THREADS": "3"})
    async with snakebridge.Client(srv.address) as client:
        assert (await client.call(H, "identity"))["omp"] == "3"


async def test_at_level_none_the_worker_inherits_env_and_cwd(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documents level ``none``: a separate process, nothing more."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    srv = make_server("--workers", "1", "--sandbox", "none", env={"MY_SECRET_TOKEN": "x"})
    async with snakebridge.Client(srv.address) as client:
        info = await client.call(H, "identity", [0.0, False])
    assert info["secret"] == "x"
    assert info["cwd"] == os.readlink(f"/proc/{srv.pid}/cwd")
    assert info["omp"] == "1"  # the thread limits apply at every level
