"""Peers making snakebridge's trivial call, `math.sqrt(16)`, in the same run: RPyC 6 classic,
Pyro5, and `ProcessPoolExecutor(max_workers=2)` (the no-sidecar alternative); and the peers'
item-by-item iteration of a remote generator, next to our stream figures.

RPyC and Pyro5 clients block, so they are measured in threads: sequential latency in one
thread, and calls/s with `settings.concurrency` (64) client threads, each with its own
connection. Their servers are processes of their own (bench/peer_servers.py) on 127.0.0.1;
the pool's two workers are this process's children. Everything is stopped on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import metadata
from types import ModuleType
from typing import Any, Protocol, TypeVar

from bench.compare import POOL, print_comparison, pyro5_name, recording, rpyc_name
from bench.measure import Call, Rep, Settings, Target, Unavailable, percentiles_us
from bench.peer_servers import HOST, PYRO5_OBJECT_ID, READY, die_with_parent
from bench.procs import ServerFailed, ServerProcess

INSTALL_HINT = "pip install -e .[bench]"
POOL_WORKERS = 2
# Items per remote-generator iteration: as many as the streams section's stream_dynamic.
ITEMS = 10**4
# A blocking call gives up after this long, so a hung peer cannot hold a client thread for
# good (a rep itself times out after settings.rep_timeout_s).
CALL_TIMEOUT_S = 30.0

T = TypeVar("T")
Measure = Callable[[Call, Settings], Awaitable[Rep]]


class Blocking(Protocol):
    """A blocking peer client with its own connection, used by one thread at a time."""

    def adopt(self) -> None:
        """Make the calling thread this client's user (Pyro5 proxies have an owner thread)."""

    def call(self) -> object: ...

    def iterate(self, items: int) -> int:
        """Iterate a remote generator of `items` items, one at a time; return the count."""

    def close(self) -> None: ...


class RpycClient:
    def __init__(self, rpyc: ModuleType, port: int) -> None:
        self.conn = rpyc.classic.connect(HOST, port)
        self.conn._config["sync_request_timeout"] = CALL_TIMEOUT_S
        # Looked up once: `conn.modules.math.sqrt(16)` each time would add a getattr round
        # trip. This is RPyC at its best, one round trip per call.
        self._sqrt = self.conn.modules.math.sqrt
        self._range = self.conn.modules.builtins.range

    def adopt(self) -> None:
        pass

    def call(self) -> object:
        return self._sqrt(16)

    def iterate(self, items: int) -> int:
        count = 0
        for _ in self._range(items):  # a remote range: each next() is a round trip
            count += 1
        return count

    def close(self) -> None:
        self.conn.close()


class Pyro5Client:
    def __init__(self, api: ModuleType, port: int) -> None:
        self.proxy = api.Proxy(f"PYRO:{PYRO5_OBJECT_ID}@{HOST}:{port}")
        self.proxy._pyroTimeout = CALL_TIMEOUT_S
        self.proxy._pyroBind()

    def adopt(self) -> None:
        self.proxy._pyroClaimOwnership()

    def call(self) -> object:
        return self.proxy.sqrt(16)

    def iterate(self, items: int) -> int:
        count = 0
        for _ in self.proxy.count(items):  # Pyro5 streams a generator one item per call
            count += 1
        return count

    def close(self) -> None:
        self.adopt()
        self.proxy._pyroRelease()


def _need(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{exc.name or module} is not installed: {INSTALL_HINT}") from exc


async def _in_thread(work: Callable[[threading.Event], T]) -> T:
    """Run `work(stop)` in a thread; `stop` is set when it returns or is cancelled (the rep
    timed out), so the thread's loops end rather than run on behind the benchmark."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(work, stop)
    finally:
        stop.set()


def _sequential(client: Blocking, warmup: int, calls: int, stop: threading.Event) -> list[int]:
    client.adopt()
    for _ in range(warmup):
        client.call()
    samples = [0] * calls
    clock = time.perf_counter_ns
    for i in range(calls):
        if stop.is_set():
            raise RuntimeError("stopped")
        start = clock()
        client.call()
        samples[i] = clock() - start
    return samples


def _throughput(
    clients: list[Blocking], warmup_s: float, seconds: float, stop: threading.Event
) -> float:
    """Calls/s with one thread per client, each calling in a loop."""
    counts = [0] * len(clients)
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        client = clients[i]
        try:
            client.adopt()
            while not stop.is_set():
                client.call()
                counts[i] += 1
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=loop, args=(i,), name=f"bench-peer-{i}", daemon=True)
        for i in range(len(clients))
    ]
    for thread in threads:
        thread.start()
    try:
        if stop.wait(warmup_s):
            raise RuntimeError("stopped during warm-up")
        first, start = sum(counts), time.perf_counter_ns()
        if stop.wait(seconds):
            raise RuntimeError("stopped while measuring")
        last, end = sum(counts), time.perf_counter_ns()
    except RuntimeError:
        if errors:
            raise errors[0] from None
        raise
    finally:
        stop.set()
        for thread in threads:
            thread.join(CALL_TIMEOUT_S)
    if errors:
        raise errors[0]
    return (last - first) * 1e9 / (end - start)


def threaded(clients: list[Blocking]) -> Measure:
    """A `measure` for a blocking peer: sequential latency on the first client, then
    calls/s with one thread per client (as many clients as settings.concurrency)."""

    async def measure(call: Call, settings: Settings) -> Rep:
        warmup, calls = settings.warmup, settings.calls
        samples = await _in_thread(lambda stop: _sequential(clients[0], warmup, calls, stop))
        p50, p99 = percentiles_us(samples)
        in_flight = clients[: settings.concurrency]
        warmup_s, seconds = settings.tput_warmup_s, settings.tput_seconds
        rate = await _in_thread(lambda stop: _throughput(in_flight, warmup_s, seconds, stop))
        return Rep(p50_us=p50, p99_us=p99, calls_per_s=rate)

    return measure


def iteration_rate(client: Blocking, items: int) -> Measure:
    """A `measure` reporting items/s (in calls_per_s) of one iteration of `items` items,
    after a warm-up of a tenth of that; p50 and p99 are its duration."""

    def run(stop: threading.Event) -> Rep:
        client.adopt()
        client.iterate(items // 10)
        start = time.perf_counter()
        count = client.iterate(items)
        elapsed = time.perf_counter() - start
        if count != items:
            raise RuntimeError(f"iterated {count} items, not {items}")
        return Rep(p50_us=elapsed * 1e6, p99_us=elapsed * 1e6, calls_per_s=count / elapsed)

    async def measure(call: Call, settings: Settings) -> Rep:
        return await _in_thread(run)

    return measure


async def _never() -> Any:
    raise AssertionError("peer targets are measured by their own `measure`")


async def _start_server(stack: AsyncExitStack, kind: str, extra: dict[str, Any]) -> int:
    """Start `python -m bench.peer_servers KIND` (stopped when `stack` closes); its port."""
    argv = [sys.executable, "-m", "bench.peer_servers", kind, "--parent", str(os.getpid())]
    server = ServerProcess(f"{kind} server", argv, READY)

    async def stop() -> None:
        await server.stop()
        extra["server_exit_code"] = server.returncode
        if server.killed or server.left_children:
            extra["server_unclean_exit"] = {
                "killed_after_timeout": server.killed,
                "left_children": server.left_children,
            }

    stack.push_async_callback(stop)
    try:
        await server.start()
    except ServerFailed as exc:
        raise Unavailable(str(exc)) from exc
    assert server.ready_line is not None
    return int(server.ready_line.split("port=", 1)[1].split()[0])


async def _open_clients(
    stack: AsyncExitStack, make: Callable[[], Blocking], count: int
) -> list[Blocking]:
    """`count` clients, each with its own connection; all closed when `stack` closes."""
    clients: list[Blocking] = []

    def close_all() -> None:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()

    async def close() -> None:
        await asyncio.to_thread(close_all)

    stack.push_async_callback(close)

    def open_all() -> None:
        while len(clients) < count:  # one by one: those opened are closed if one fails
            clients.append(make())

    await asyncio.to_thread(open_all)
    return clients


async def _start_pool(stack: AsyncExitStack) -> Call:
    pool = ProcessPoolExecutor(
        max_workers=POOL_WORKERS,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,  # even a SIGKILLed benchmark leaves no workers behind
        initargs=(os.getpid(),),
    )

    async def stop() -> None:
        workers = list(pool._processes.values())
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                await asyncio.to_thread(worker.join, 5)

    stack.push_async_callback(stop)
    loop = asyncio.get_running_loop()

    async def call() -> float:
        return await loop.run_in_executor(pool, math.sqrt, 16)

    # Start both workers now rather than during the first rep.
    answers = await asyncio.gather(*(call() for _ in range(4 * POOL_WORKERS)))
    if any(answer != 4.0 for answer in answers):
        raise RuntimeError(f"the pool's math.sqrt(16) returned {answers!r}")
    return call


def _check(client: Blocking, peer: str) -> None:
    client.adopt()
    answer = client.call()
    if answer != 4.0:
        raise RuntimeError(f"{peer} math.sqrt(16) returned {answer!r}, not 4.0")


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    rpyc = _need("rpyc")
    pyro5 = _need("Pyro5.api")
    threads = settings.concurrency
    rpyc_extra: dict[str, Any] = {
        "peer": "rpyc",
        "version": metadata.version("rpyc"),
        "client_threads": threads,
        "note": "conn.modules.math.sqrt looked up once: one round trip per call",
    }
    pyro5_extra: dict[str, Any] = {
        "peer": "Pyro5",
        "version": metadata.version("Pyro5"),
        "client_threads": threads,
        "serializer": "serpent",
    }
    pool_extra: dict[str, Any] = {"peer": "ProcessPoolExecutor", "workers": POOL_WORKERS}
    async with AsyncExitStack() as stack:
        rpyc_port = await _start_server(stack, "rpyc", rpyc_extra)
        pyro5_port = await _start_server(stack, "pyro5", pyro5_extra)
        rpyc_clients = await _open_clients(stack, lambda: RpycClient(rpyc, rpyc_port), threads)
        pyro5_clients = await _open_clients(stack, lambda: Pyro5Client(pyro5, pyro5_port), threads)
        await asyncio.to_thread(_check, rpyc_clients[0], "RPyC")
        await asyncio.to_thread(_check, pyro5_clients[0], "Pyro5")
        pool_call = await _start_pool(stack)
        rate = {"unit": "items/s", "note": "one round trip per item"}
        rpyc_call, pyro5_call = rpyc_name(settings), pyro5_name(settings)
        found = [
            Target(rpyc_call, _never, rpyc_extra, recording(rpyc_call, threaded(rpyc_clients))),
            Target(pyro5_call, _never, pyro5_extra, recording(pyro5_call, threaded(pyro5_clients))),
            Target(POOL, pool_call, pool_extra, recording(POOL)),
            Target(
                f"RPyC iterate remote range({ITEMS:.0e})",
                _never,
                {**rate, "peer": "rpyc"},
                iteration_rate(rpyc_clients[0], ITEMS),
            ),
            Target(
                f"Pyro5 iterate remote generator, {ITEMS:.0e} items",
                _never,
                {**rate, "peer": "Pyro5"},
                iteration_rate(pyro5_clients[0], ITEMS),
            ),
        ]
        try:
            yield found
        finally:
            print_comparison(settings)
