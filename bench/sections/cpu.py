"""CPU-bound calls across workers: 8 concurrent calls of ~50 ms of pure Python each, against
a bridge-server with 1 worker and one with 2. Figures: wall time of the 8 calls on each, and
the speedup (1-worker wall / 2-worker wall; ideal 2.0 on 2 free cores)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from bench import remote_funcs
from bench.measure import Call, Figure, Rep, Settings, Target, Unavailable
from bench.procs import OtherLoad, ServerFailed, ServerProcess, free_port, repo_on_pythonpath
from bench.sections.snakebridge_sdk import HOST, _sdk, _server_binary

MODULE = "bench.remote_funcs"
CALLS = 8
CALL_MS = 50.0
SPEEDUP_TARGET = 1.8
# Batches of 8 calls per server in one rep (alternating 1-worker, 2-worker); a rep's wall
# time per server is the median of its batches.
BATCHES = 5


def calibrate(ms: float) -> int:
    """Loop iterations of `remote_funcs.spin` that take about `ms` here (the workers run the
    same interpreter on the same machine): the fastest of a few timings, scaled."""
    n = 100_000
    best = min(_time(remote_funcs.spin, n) for _ in range(5))
    return max(1, round(n * ms / 1000 / best))


def _time(fn: Any, arg: int) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


async def _start(stack: AsyncExitStack, workers: int) -> tuple[int, int]:
    """Start a server; its port and pid."""
    port = free_port(HOST)
    argv = [_server_binary(), "--listen", f"{HOST}:{port}", "--workers", str(workers)]
    name = f"bridge-server (cpu, {workers} workers)"
    server = ServerProcess(name, argv, "SERVING", env=repo_on_pythonpath())
    try:
        await server.start()
    except ServerFailed as exc:
        raise Unavailable(str(exc)) from exc
    stack.push_async_callback(server.stop)
    assert server.pid is not None
    return port, server.pid


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    sdk = _sdk()
    n = calibrate(CALL_MS)
    expected = remote_funcs.spin(n)
    batches = 1 if settings.smoke else BATCHES
    async with AsyncExitStack() as stack:
        clients = {}
        servers = set()
        for workers in (1, 2):
            port, pid = await _start(stack, workers)
            servers.add(pid)
            clients[workers] = await stack.enter_async_context(sdk.Client(f"{HOST}:{port}"))
        other_load = OtherLoad(servers)

        async def batch(workers: int) -> float:
            """Wall seconds of CALLS concurrent spin calls."""
            client = clients[workers]
            start = time.perf_counter()
            results = await asyncio.gather(
                *(client.call(MODULE, "spin", [n]) for _ in range(CALLS))
            )
            elapsed = time.perf_counter() - start
            if results != [expected] * CALLS:
                raise RuntimeError(f"spin({n}) returned {results}, not {expected}")
            return elapsed

        for workers in (1, 2):  # every worker imports the module and warms up
            await batch(workers)

        async def measure(call: Call, settings: Settings) -> Rep:
            one: list[float] = []
            two: list[float] = []
            other_load.start()
            for i in range(batches):
                order = (1, 2) if i % 2 == 0 else (2, 1)
                for workers in order:
                    (one if workers == 1 else two).append(await batch(workers))
            other = other_load.stop()
            start = time.perf_counter()
            await clients[1].call(MODULE, "spin", [n])
            alone = time.perf_counter() - start
            wall_1, wall_2 = statistics.median(one), statistics.median(two)
            return Rep(
                figures={
                    "wall_1w_ms": wall_1 * 1000,
                    "wall_2w_ms": wall_2 * 1000,
                    "speedup": wall_1 / wall_2,
                    "call_ms": alone * 1000,
                    **({} if other is None else {"other_cpus": other}),
                }
            )

        figures = (
            Figure("wall_1w_ms", f"{CALLS} calls, 1 worker (wall)", "ms", ".0f"),
            Figure("wall_2w_ms", f"{CALLS} calls, 2 workers (wall)", "ms", ".0f"),
            Figure(
                "speedup",
                "speedup (1-worker wall / 2-worker wall)",
                "x",
                ".2f",
                ">=",
                SPEEDUP_TARGET,
                "median over reps of each rep's ratio",
            ),
            Figure("call_ms", "one call alone, 1 worker", "ms", ".1f"),
            Figure(
                "other_cpus",
                "other processes' CPU use during the batches",
                "CPUs",
                ".2f",
                note=f"of {len(os.sched_getaffinity(0))}; any of it takes CPU from the workers",
            ),
        )
        about = (
            f"{CALLS} concurrent calls of {MODULE}.spin({n:,}), ~{CALL_MS:g} ms of pure Python "
            f"each; a rep's walls are the median of {batches} batch(es) per server"
        )
        yield [
            Target(
                f"cpu {CALLS} x {CALL_MS:g} ms",
                _never,
                {"about": about, "spin_iterations": n, "calls": CALLS},
                measure,
                figures,
            )
        ]


async def _never() -> Any:
    raise AssertionError("the cpu target is measured by its own `measure`")
