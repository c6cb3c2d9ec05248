"""Large values through one call: `bench.remote_funcs.echo(payload)` returns its argument,
against a bare grpclib echo (raw-bytes codec, uvloop, own process) of the same number of
bytes. Figures in MB/s = payload bytes / round-trip time of one call (the payload crosses
once each way, so this is the rate each way; MB = 10^6 bytes).

Sizes: the server's --max-message-size defaults to 64 MiB, the most it allows, and bounds
the *encoded* argument and result, which add a few bytes (8 for `bytes`, ~30 for an array)
to the payload. So "64 MiB" here is 64 MiB - 64 B = 67,108,800 bytes, stated in the output.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.config import Configuration

from bench.codec import RawCodec
from bench.echo_server import ECHO_METHOD
from bench.measure import Call, Figure, Rep, Settings, Target, Unavailable
from bench.procs import ServerFailed, ServerProcess, free_port, repo_on_pythonpath
from bench.sections.snakebridge_sdk import HOST, _sdk, _server_binary

MODULE = "bench.remote_funcs"
MIB = 1 << 20
MARGIN = 64
BIG = 64 * MIB - MARGIN
RATIO_TARGET = 0.8  # 64 MiB: snakebridge MB/s >= 0.8 x bare grpclib MB/s
# The SDK's HTTP/2 connection window (grpclib's default is 4 MiB); the floor client uses
# the same, so both clients differ only in what they send.
CONNECTION_WINDOW = 1 << 30

Echo = Callable[[], Awaitable[None]]


async def _start(stack: AsyncExitStack, name: str, argv: list[str], marker: str) -> None:
    server = ServerProcess(name, argv, marker, env=repo_on_pythonpath())
    try:
        await server.start()
    except ServerFailed as exc:
        raise Unavailable(str(exc)) from exc
    stack.push_async_callback(server.stop)


def _rate(
    size: int, ours: Echo, floor: Echo, warmup: int, calls: int
) -> Callable[[Call, Settings], Awaitable[Rep]]:
    """A `measure`: `warmup` then `calls` round trips of each, alternating; each side's
    MB/s from its median round trip."""

    async def measure(call: Call, settings: Settings) -> Rep:
        for _ in range(warmup):
            await ours()
            await floor()
        mine: list[float] = []
        theirs: list[float] = []
        for i in range(calls):
            pair = ((ours, mine), (floor, theirs))
            for echo, times in pair if i % 2 == 0 else pair[::-1]:
                start = time.perf_counter()
                await echo()
                times.append(time.perf_counter() - start)
        t_ours, t_floor = statistics.median(mine), statistics.median(theirs)
        return Rep(
            figures={
                "mb_s": size / t_ours / 1e6,
                "floor_mb_s": size / t_floor / 1e6,
                "ratio": t_floor / t_ours,
                "rt_ms": t_ours * 1000,
                "floor_rt_ms": t_floor * 1000,
            }
        )

    return measure


def _figures(big: bool) -> tuple[Figure, ...]:
    return (
        Figure("mb_s", "snakebridge", "MB/s", ".0f"),
        Figure("floor_mb_s", "bare grpclib echo, same bytes", "MB/s", ".0f"),
        Figure(
            "ratio",
            "snakebridge MB/s / grpclib MB/s",
            "x",
            ".2f",
            ">=" if big else None,
            RATIO_TARGET if big else None,
        ),
        Figure("rt_ms", "snakebridge round trip", "ms", ".1f"),
        Figure("floor_rt_ms", "grpclib round trip", "ms", ".1f"),
    )


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    sdk = _sdk()
    try:
        import numpy as np
    except ImportError as exc:
        raise Unavailable(f"numpy is not installed: {exc}") from exc
    async with AsyncExitStack() as stack:
        port, echo_port = free_port(HOST), free_port(HOST)
        argv = [_server_binary(), "--listen", f"{HOST}:{port}", "--workers", "1"]
        await _start(stack, "bridge-server (payloads)", argv, "SERVING")
        argv = [sys.executable, "-m", "bench.echo_server", "--host", HOST]
        await _start(stack, "echo server (payloads)", [*argv, "--port", str(echo_port)], "READY")
        client = await stack.enter_async_context(sdk.Client(f"{HOST}:{port}"))
        config = Configuration(http2_connection_window_size=CONNECTION_WINDOW)
        channel = Channel(HOST, echo_port, codec=RawCodec(), config=config)
        stack.callback(channel.close)
        raw_echo = UnaryUnaryMethod(channel, ECHO_METHOD, bytes, bytes)

        small, big = os.urandom(MIB), os.urandom(BIG)
        array = np.arange(BIG // 8, dtype=np.float64)
        # Checked once here, not in the timed calls.
        for payload in (small, big):
            if await client.call(MODULE, "echo", [payload]) != payload:
                raise RuntimeError(f"echo of {len(payload)} bytes came back different")
            if await raw_echo(payload) != payload:
                raise RuntimeError(f"grpclib echo of {len(payload)} bytes came back different")
        back = await client.call(MODULE, "echo", [array])
        if not (back.dtype == array.dtype and back.shape == array.shape and (back == array).all()):
            raise RuntimeError("echo of the float64 array came back different")
        del back

        def ours(value: Any) -> Echo:
            async def echo() -> None:
                await client.call(MODULE, "echo", [value])

            return echo

        def floor(value: bytes) -> Echo:
            async def echo() -> None:
                await raw_echo(value)

            return echo

        smoke = settings.smoke
        big_rate = _rate(BIG, ours(big), floor(big), 1, 2 if smoke else 3)
        array_rate = _rate(BIG, ours(array), floor(big), 1, 2 if smoke else 3)
        small_rate = _rate(MIB, ours(small), floor(small), 3, 10 if smoke else 20)
        never: Call = _never
        yield [
            Target(
                "payload bytes 1 MiB",
                never,
                {"about": f"{MIB:,} bytes each way", "payload_bytes": MIB},
                small_rate,
                _figures(big=False),
            ),
            Target(
                "payload bytes 64 MiB - 64 B",
                never,
                {"about": f"{BIG:,} bytes each way", "payload_bytes": BIG},
                big_rate,
                _figures(big=True),
            ),
            Target(
                f"payload float64[{BIG // 8:,}] array",
                never,
                {
                    "about": f"numpy float64 array, {BIG // 8:,} elements = {BIG:,} bytes "
                    "each way; floor: raw bytes of the same size",
                    "payload_bytes": BIG,
                },
                array_rate,
                _figures(big=True),
            ),
        ]


async def _never() -> Any:
    raise AssertionError("payload targets are measured by their own `measure`")
