"""Concurrency inside a worker (issue #16 A), on `bridge-server --workers 1 --concurrency
100`: seconds for 200 calls of `asyncio.sleep(0.1)` started together from one client.
One call at a time this takes 200 x 0.1 s = 20 s; with 100 running at once, two rounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bench.measure import Call, Figure, Rep, Settings, Target, Unavailable
from bench.procs import ServerFailed, ServerProcess, free_port
from bench.sections.snakebridge_sdk import HOST, _sdk, _server_binary

CONCURRENCY = 100
CALLS = 200
SLEEP_S = 0.1
TARGET_S = 0.3


async def _burst(client: Any) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(client.call("asyncio", "sleep", [SLEEP_S]) for _ in range(CALLS)))
    return time.perf_counter() - start


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    sdk = _sdk()
    port = free_port(HOST)
    argv = [
        _server_binary(),
        "--listen", f"{HOST}:{port}",
        "--workers", "1",
        "--concurrency", str(CONCURRENCY),
    ]  # fmt: skip
    server = ServerProcess("bridge-server (concurrency)", argv, "SERVING")
    try:
        try:
            await server.start()
        except ServerFailed as exc:
            raise Unavailable(str(exc)) from exc
        async with sdk.Client(f"{HOST}:{port}") as client:
            await _burst(client)  # warm: connection, imports in the worker

            async def measure(call: Call, settings: Settings) -> Rep:
                return Rep(figures={"sleep_burst_s": await _burst(client)})

            figure = Figure(
                "sleep_burst_s",
                f"{CALLS} x asyncio.sleep({SLEEP_S:g}), 1 worker, concurrency {CONCURRENCY}",
                "s",
                ".3f",
                "<=",
                TARGET_S,
                f"{CALLS * SLEEP_S:g} s one call at a time",
            )
            about = f"bridge-server --workers 1 --concurrency {CONCURRENCY}; {CALLS} calls at once"
            yield [
                Target(
                    "concurrency",
                    _never,
                    {"about": about, "workers": 1, "concurrency": CONCURRENCY},
                    measure,
                    (figure,),
                )
            ]
    finally:
        await server.stop()


async def _never() -> Any:
    raise AssertionError("the concurrency target is measured by its own `measure`")
