"""snakebridge end to end: the SDK calling `math.sqrt` through a real bridge-server with 2
workers. Unary `Call` (`Client(batching=False)`, one HTTP/2 stream per call) at the run's
concurrency (64 in flight: the headline row) and at 1; the micro-batched `Exchange`
stream (`Client(batching=True)`) at 1, 8, 64, 200, 1000 and 8000 in flight (issue #14)."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.compare import (
    BATCHED_IN_FLIGHT,
    CALLS_PER_S_VS_FLOOR_TARGET,
    MUST_BEAT,
    SNAKEBRIDGE,
    batched_name,
    peer_names,
    recording,
)
from bench.measure import Call, Rep, Settings, Target, Unavailable, measure_rep
from bench.procs import ServerFailed, ServerProcess, free_port

HOST = "127.0.0.1"
WORKERS = 2
# snakebridge p50 / bare grpclib p50 must stay at or under this.
P50_RATIO_TARGET = 1.25
# Calls in flight besides the run's own (settings.concurrency, 64): each is its own target.
OTHER_CONCURRENCY = (1,)
# 8000 calls in flight need a pool that may queue them (the default --max-queued is 4096).
MAX_QUEUED = 16384


def _server_binary() -> str:
    beside_python = Path(sys.executable).parent / "bridge-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("bridge-server")
    if found is None:
        raise Unavailable("bridge-server is not installed")
    return found


def at_concurrency(in_flight: int) -> Callable[[Call, Settings], Awaitable[Rep]]:
    """`measure_rep` with `in_flight` calls kept in flight instead of settings.concurrency.

    Its sequential p50/p99 are measured afresh, like every target's. The JSON's
    `concurrency` field still says settings.concurrency (aggregate() sets it); the real
    figure is in the target's `in_flight`.
    """

    async def measure(call: Call, settings: Settings) -> Rep:
        # Thousands of calls in flight take a while to reach a steady state (the first
        # results come back only once the whole first wave is queued): warm up longer.
        warmup = max(settings.tput_warmup_s, in_flight / 2000)
        return await measure_rep(
            call, replace(settings, concurrency=in_flight, tput_warmup_s=warmup)
        )

    return measure


def _sdk() -> Any:
    try:
        module = importlib.import_module("snakebridge")
    except ImportError as exc:
        raise Unavailable(f"cannot import snakebridge: {exc}") from exc
    if not hasattr(module, "Client"):
        raise Unavailable("snakebridge has no Client yet")
    return module


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    sdk = _sdk()
    port = free_port(HOST)
    argv = [
        _server_binary(),
        "--listen",
        f"{HOST}:{port}",
        "--workers",
        str(WORKERS),
        "--max-queued",
        str(MAX_QUEUED),
    ]
    server = ServerProcess("bridge-server", argv, "SERVING")
    extra: dict[str, Any] = {
        "workers": WORKERS,
        "in_flight": settings.concurrency,
        "p50_ratio_target": P50_RATIO_TARGET,
        "calls_per_s_ratio_target": CALLS_PER_S_VS_FLOOR_TARGET,
        # Peers whose calls/s (same concurrency, in client threads) this must at least match.
        "must_beat": [peer_names(settings)[peer] for peer in MUST_BEAT],
    }
    try:
        try:
            await server.start()
        except ServerFailed as exc:
            raise Unavailable(str(exc)) from exc
        # The unary path (one Call RPC per call), as before the Exchange stream existed.
        async with sdk.Client(f"{HOST}:{port}", batching=False) as client:
            answer = await client.call("math", "sqrt", [16])
            if answer != 4.0:
                raise RuntimeError(f'call("math", "sqrt", [16]) returned {answer!r}, not 4.0')

            async def call() -> object:
                return await client.call("math", "sqrt", [16])

            others = [
                Target(
                    f"{SNAKEBRIDGE}, {n} in flight",
                    call,
                    {"workers": WORKERS, "in_flight": n},
                    at_concurrency(n),
                )
                for n in OTHER_CONCURRENCY
                if n != settings.concurrency
            ]
            async with sdk.Client(f"{HOST}:{port}", batching=True) as batched:

                async def batched_call() -> object:
                    return await batched.call("math", "sqrt", [16])

                if await batched_call() != 4.0:
                    raise RuntimeError("the batched client's math.sqrt(16) is not 4.0")
                batching = [
                    Target(
                        batched_name(n),
                        batched_call,
                        {
                            "workers": WORKERS,
                            "in_flight": n,
                            **({"p50_ratio_target": P50_RATIO_TARGET} if n == 1 else {}),
                        },
                        recording(batched_name(n), at_concurrency(n)),
                    )
                    for n in BATCHED_IN_FLIGHT
                ]
                yield [
                    Target(SNAKEBRIDGE, call, extra, recording(SNAKEBRIDGE)),
                    *others,
                    *batching,
                ]
    finally:
        await server.stop()
        extra["server_exit_code"] = server.returncode
        if server.killed or server.left_children:
            extra["server_unclean_exit"] = {
                "killed_after_timeout": server.killed,
                "left_children": server.left_children,
            }
