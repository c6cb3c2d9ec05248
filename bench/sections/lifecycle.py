"""Server life cycle, on a fresh `bridge-server --workers 2` each rep:

- SERVING: seconds from spawning the server process to reading its `SERVING` log line
  (both workers started and ready, listener bound);
- replacement: seconds from SIGKILLing a worker (a pid from the SERVING line) until
  `describe()` lists a new pid in `ready` state in that slot (polled every 5 ms);
- idle RSS (VmRSS from /proc/<pid>/status) of the server and of the larger of its two
  workers, after 20 calls spread over both workers and 1 s idle (measured before the kill).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bench.measure import Call, Figure, Rep, Settings, Target
from bench.procs import ServerFailed, ServerProcess, free_port, repo_on_pythonpath, rss_bytes
from bench.sections.snakebridge_sdk import HOST, _sdk, _server_binary

WORKERS = 2
WARM_CALLS = 20
IDLE_S = 1.0
POLL_S = 0.005
REPLACE_TIMEOUT_S = 10.0
MIB = 1 << 20

SERVING_TARGET_S = 1.0
REPLACE_TARGET_S = 0.5
SERVER_RSS_TARGET_MIB = 60.0
WORKER_RSS_TARGET_MIB = 30.0

_PIDS = re.compile(r"\(pids? ([\d ]+)\)")


def worker_pids(serving_line: str) -> list[int]:
    """The worker pids in `... SERVING on ... (pool default: 2 workers (pids 12 13))`."""
    match = _PIDS.search(serving_line)
    return [int(p) for p in match.group(1).split()] if match else []


async def _replaced(client: Any, killed: int, slot: int | None) -> float:
    """Poll describe() until a new pid is ready in `slot` (any slot if unknown)."""
    start = time.perf_counter()
    deadline = start + REPLACE_TIMEOUT_S
    while time.perf_counter() < deadline:
        info = await client.describe()
        for worker in info.pools[0].workers:
            if (
                worker.state == "ready"
                and worker.pid != killed
                and (slot is None or worker.slot == slot)
                and worker.incarnation > 1
            ):
                return time.perf_counter()
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"no worker replaced pid {killed} within {REPLACE_TIMEOUT_S:g}s")


async def one_life(sdk: Any) -> dict[str, float]:
    port = free_port(HOST)
    argv = [_server_binary(), "--listen", f"{HOST}:{port}", "--workers", str(WORKERS)]
    argv.append("--describe-pids")  # matched against the SERVING line's pids below
    server = ServerProcess("bridge-server (lifecycle)", argv, "SERVING", env=repo_on_pythonpath())
    try:
        await server.start()
        assert server.spawned_at is not None and server.ready_at is not None
        assert server.ready_line is not None and server.pid is not None
        serving = server.ready_at - server.spawned_at
        pids = worker_pids(server.ready_line)
        if len(pids) != WORKERS:
            raise RuntimeError(f"cannot read {WORKERS} worker pids in {server.ready_line!r}")
        async with sdk.Client(f"{HOST}:{port}") as client:
            await asyncio.gather(*(client.call("math", "sqrt", [16]) for _ in range(WARM_CALLS)))
            await asyncio.sleep(IDLE_S)
            rss_server = rss_bytes(server.pid)
            rss_workers = [rss_bytes(pid) for pid in pids]
            if rss_server is None or None in rss_workers:
                raise RuntimeError("cannot read VmRSS from /proc")
            info = await client.describe()
            slot = next((w.slot for w in info.pools[0].workers if w.pid == pids[0]), None)
            killed_at = time.perf_counter()
            os.kill(pids[0], signal.SIGKILL)
            replaced_at = await _replaced(client, pids[0], slot)
    except ServerFailed as exc:
        raise RuntimeError(str(exc)) from exc
    finally:
        await server.stop()
    return {
        "serving_s": serving,
        "replace_s": replaced_at - killed_at,
        "rss_server_mib": rss_server / MIB,
        "rss_worker_mib": max(r for r in rss_workers if r is not None) / MIB,
    }


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    sdk = _sdk()
    _server_binary()  # Unavailable now rather than in the first rep

    async def measure(call: Call, settings: Settings) -> Rep:
        return Rep(figures=await one_life(sdk))

    figures = (
        Figure(
            "serving_s",
            "spawn to SERVING line",
            "s",
            ".3f",
            "<=",
            SERVING_TARGET_S,
        ),
        Figure(
            "replace_s",
            "SIGKILLed worker to a new one ready",
            "s",
            ".3f",
            "<=",
            REPLACE_TARGET_S,
            f"describe() polled every {POLL_S * 1000:g} ms",
        ),
        Figure(
            "rss_server_mib",
            "idle RSS, server",
            "MiB",
            ".1f",
            "<=",
            SERVER_RSS_TARGET_MIB,
        ),
        Figure(
            "rss_worker_mib",
            "idle RSS, worker (larger of 2)",
            "MiB",
            ".1f",
            "<=",
            WORKER_RSS_TARGET_MIB,
        ),
    )
    about = (
        f"a fresh bridge-server --workers {WORKERS} (default sandbox) per rep; RSS after "
        f"{WARM_CALLS} calls and {IDLE_S:g}s idle"
    )
    never: Call = _never
    yield [Target("lifecycle", never, {"about": about, "workers": WORKERS}, measure, figures)]


async def _never() -> Any:
    raise AssertionError("the lifecycle target is measured by its own `measure`")
