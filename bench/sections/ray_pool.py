"""A Ray pool beside a process pool: the SDK calling `math.sqrt` through one bridge-server
whose two pools have 2 workers each, one of processes and one of Ray actors on a local
Ray runtime (`--ray-address local`). Sequential p50 and calls/s at the run's concurrency
(64 in flight) for both, measured in the same run. Unavailable without `ray`."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.measure import Settings, Target, Unavailable
from bench.procs import ServerFailed, ServerProcess, free_port
from bench.sections.snakebridge_sdk import _sdk, _server_binary

HOST = "127.0.0.1"
WORKERS = 2
CONFIG = f"""
ray_address = "local"
pool = "process"

[pools.process]
workers = {WORKERS}

[pools.ray]
backend = "ray"
workers = {WORKERS}
num_cpus = 1
"""


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    if importlib.util.find_spec("ray") is None:
        raise Unavailable("ray is not installed (pip install 'snakebridge[ray]')")
    sdk = _sdk()
    port = free_port(HOST)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(CONFIG)
    argv = [_server_binary(), "--listen", f"{HOST}:{port}", "--config", f.name]
    # Starting a Ray runtime takes seconds (13-15 s on 2 busy cores).
    server = ServerProcess("bridge-server (Ray pool)", argv, "SERVING", ready_timeout=120.0)
    extra = {"workers": WORKERS, "in_flight": settings.concurrency}
    try:
        try:
            await server.start()
        except ServerFailed as exc:
            raise Unavailable(str(exc)) from exc
        async with sdk.Client(f"{HOST}:{port}") as client:
            for pool in ("process", "ray"):
                answer = await client.call("math", "sqrt", [16], pool=pool)
                if answer != 4.0:
                    raise RuntimeError(f"pool {pool}: sqrt(16) returned {answer!r}")

            async def process_call() -> object:
                return await client.call("math", "sqrt", [16], pool="process")

            async def ray_call() -> object:
                return await client.call("math", "sqrt", [16], pool="ray")

            yield [
                Target("snakebridge, process pool (beside Ray)", process_call, dict(extra)),
                Target("snakebridge, Ray pool (2 local actors)", ray_call, dict(extra)),
            ]
    finally:
        await server.stop()
        os.unlink(f.name)
        extra["server_exit_code"] = server.returncode
