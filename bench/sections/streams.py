"""Streams through a real bridge-server: batched `stream` vs one-RPC-per-item
`stream_dynamic`, and bulk bytes. Figures are rates (items/s, MB/s), not latencies."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from bench.measure import Call, Rep, Settings, Target, Unavailable
from bench.procs import ServerFailed, ServerProcess, free_port
from bench.sections.snakebridge_sdk import HOST, _sdk, _server_binary

RANGE_ITEMS = 10**6
DYNAMIC_ITEMS = 10**4
CHUNK = 1 << 20
CHUNKS = 64
RANGE_TARGET_ITEMS_PER_S = 2_000_000


def _rate(
    run: Callable[[], Awaitable[int]], per_rep: int
) -> Callable[[Call, Settings], Awaitable[Rep]]:
    """A `measure` that runs the stream `per_rep` times and reports the median rate in
    `calls_per_s` (units given by the target's `extra["unit"]`) and the median duration
    of one whole stream as p50."""

    async def measure(call: Call, settings: Settings) -> Rep:
        await run()  # warm-up
        durations, rates = [], []
        for _ in range(per_rep):
            start = time.perf_counter()
            amount = await run()
            elapsed = time.perf_counter() - start
            durations.append(elapsed * 1e6)
            rates.append(amount / elapsed)
        durations.sort()
        rates.sort()
        mid = len(rates) // 2
        return Rep(durations[mid], durations[-1], rates[mid])

    return measure


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    sdk = _sdk()
    port = free_port(HOST)
    argv = [_server_binary(), "--listen", f"{HOST}:{port}", "--workers", "2"]
    server = ServerProcess("bridge-server (streams)", argv, "SERVING")
    try:
        try:
            await server.start()
        except ServerFailed as exc:
            raise Unavailable(str(exc)) from exc
        async with sdk.Client(f"{HOST}:{port}") as client:
            range_items = RANGE_ITEMS if settings.reps > 1 else RANGE_ITEMS // 4

            async def stream_range() -> int:
                n = 0
                async for _ in client.stream("builtins", "range", [range_items]):
                    n += 1
                assert n == range_items
                return n

            async def stream_dynamic() -> int:
                n = 0
                async for _ in client.stream_dynamic("builtins", "range", [DYNAMIC_ITEMS]):
                    n += 1
                assert n == DYNAMIC_ITEMS
                return n

            async def stream_chunks() -> int:
                total = 0
                async for chunk in client.stream("itertools", "repeat", [b"x" * CHUNK, CHUNKS]):
                    total += len(chunk)
                assert total == CHUNK * CHUNKS
                return total // 1_000_000  # MB

            reps = 3 if settings.reps > 1 else 1
            none: Call = _never
            yield [
                Target(
                    f"stream range({range_items:.0e})",
                    none,
                    {"unit": "items/s", "target": RANGE_TARGET_ITEMS_PER_S},
                    _rate(stream_range, reps),
                ),
                Target(
                    f"stream_dynamic {DYNAMIC_ITEMS:.0e} items",
                    none,
                    {"unit": "items/s", "note": "one StreamNext RPC per item"},
                    _rate(stream_dynamic, 1),
                ),
                Target(
                    f"stream {CHUNKS} x 1 MiB chunks",
                    none,
                    {"unit": "MB/s"},
                    _rate(stream_chunks, reps),
                ),
            ]
    finally:
        await server.stop()


async def _never() -> Any:
    raise AssertionError("stream targets are measured by their own `measure`")
