"""Session isolation's cost (issue #12): a new session's first call, with warm spares and
without, on `bridge-server --isolation session --workers 4`.

Each sample opens a session (client side, no RPC), times its first call (`math.sqrt`,
which is when the server dedicates a worker to it) and releases it (the worker is
discarded). With `--spare-workers 2`, the sample starts once describe() shows the spares
back (polled every 5 ms, not timed): the figure is acquiring a spare plus one call. With
`--spare-workers 0`, every session's worker is started for it: the figure is a cold
start (spawn, sandbox, READY) plus one call.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from bench.measure import Call, Figure, Rep, Settings, Target
from bench.procs import ServerFailed, ServerProcess, free_port, repo_on_pythonpath
from bench.sections.snakebridge_sdk import HOST, _sdk, _server_binary

WORKERS = 4
SPARES = 2
SAMPLES = 15
SMOKE_SAMPLES = 3
POLL_S = 0.005
SPARE_TARGET_MS = 5.0


async def _spares_back(client: Any, want: int) -> None:
    deadline = time.perf_counter() + 30.0
    while time.perf_counter() < deadline:
        if (await client.describe()).pools[0].spare_workers >= want:
            return
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"the pool did not get {want} spares back within 30s")


async def _first_calls(client: Any, spares: int, samples: int) -> tuple[float, float]:
    """Median ms of a new session's first call, and of its second (the same worker,
    already dedicated: the cost of the call alone on this machine now)."""
    times, seconds = [], []
    for _ in range(samples):
        if spares:
            await _spares_back(client, spares)
        session = client.session()
        start = time.perf_counter()
        await session.call("math", "sqrt", [16])
        times.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        await session.call("math", "sqrt", [16])
        seconds.append((time.perf_counter() - start) * 1000)
        await session.release()
    return statistics.median(times), statistics.median(seconds)


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    sdk = _sdk()
    async with AsyncExitStack() as stack:
        clients = {}
        for spares in (SPARES, 0):
            port = free_port(HOST)
            argv = [
                _server_binary(), "--listen", f"{HOST}:{port}", "--workers", str(WORKERS),
                "--isolation", "session", "--spare-workers", str(spares),
            ]  # fmt: skip
            server = ServerProcess(
                f"bridge-server (session isolation, {spares} spares)",
                argv,
                "SERVING",
                env=repo_on_pythonpath(),
            )
            try:
                await server.start()
            except ServerFailed as exc:
                raise RuntimeError(str(exc)) from exc
            stack.push_async_callback(server.stop)
            clients[spares] = await stack.enter_async_context(sdk.Client(f"{HOST}:{port}"))

        async def measure(call: Call, settings: Settings) -> Rep:
            n = SMOKE_SAMPLES if settings.smoke else SAMPLES
            spare_ms, second_ms = await _first_calls(clients[SPARES], SPARES, n)
            cold_ms, _ = await _first_calls(clients[0], 0, n)
            return Rep(figures={"spare_ms": spare_ms, "second_ms": second_ms, "cold_ms": cold_ms})

        figures = (
            Figure(
                "spare_ms",
                f"new session + first call, {SPARES} spares ready",
                "ms",
                ".2f",
                "<=",
                SPARE_TARGET_MS,
                "median of a rep's samples",
            ),
            Figure("second_ms", "the same session's second call", "ms", ".2f"),
            Figure("cold_ms", "new session + first call, no spares", "ms", ".1f"),
        )
        about = (
            f"bridge-server --isolation session --workers {WORKERS} (default sandbox), "
            f"--spare-workers {SPARES} vs 0; {SAMPLES} sessions per rep each"
        )
        yield [Target("isolation", _never, {"about": about}, measure, figures)]


async def _never() -> Any:
    raise AssertionError("the isolation target is measured by its own `measure`")
