"""Prometheus metrics: a registry of the per-call counters and the text exposition.
Runs in the server.

Pure: no I/O, no asyncio (``metrics_http`` serves the text). The hot path only touches
dicts: ``observe_call`` is one dict lookup, one bisect and a few increments per RPC;
``stream_batch`` two increments per batch. Gauges (in flight, queue depth, live workers,
sessions, refs) and the restart counters are not kept here at all: ``render`` is given a
``snapshot.BridgeSnapshot`` taken at scrape time (``bridge.Bridge.snapshot``).

Text exposition format 0.0.4:
https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

from .snapshot import BridgeSnapshot

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds of the call latency histogram, seconds (the unary floor is ~0.7 ms).
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


def escape_label(value: str) -> str:
    """A label value as the exposition format wants it: ``\\``, ``"`` and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


class Histogram:
    """Per-bucket counts (not cumulative: ``render`` sums them), sum and count."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, as "le" (less or equal) means.
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for every bound, then +Inf."""
        total = 0
        out = []
        for bound, n in zip([*self.bounds, math.inf], self.buckets, strict=True):
            total += n
            out.append((bound, total))
        return out


class Exposition:
    """Builds the exposition text, one metric family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, names: Sequence[str], values: Sequence[str], value: float) -> None:
        self.lines.append(f"{name}{_labels(names, values)} {format_value(value)}")

    def histogram(
        self, name: str, names: Sequence[str], values: Sequence[str], hist: Histogram
    ) -> None:
        for bound, total in hist.cumulative():
            self.sample(f"{name}_bucket", [*names, "le"], [*values, format_value(bound)], total)
        self.sample(f"{name}_sum", names, values, hist.sum)
        self.sample(f"{name}_count", names, values, hist.count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class Metrics:
    """The counters the server updates as it serves. Label values come from a bounded
    set (pool names of this server, call kinds, error class names), never from clients."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.calls: dict[tuple[str, str, str], int] = {}  # (pool, kind, status)
        self.latency: dict[tuple[str, str], Histogram] = {}  # (pool, kind)
        self.stream_batches: dict[str, int] = {}  # pool
        self.stream_items: dict[str, int] = {}  # pool

    def observe_call(self, pool: str, kind: str, status: str, seconds: float) -> None:
        key = (pool, kind, status)
        calls = self.calls
        calls[key] = calls.get(key, 0) + 1
        hist = self.latency.get((pool, kind))
        if hist is None:
            hist = self.latency[(pool, kind)] = Histogram(self.buckets)
        hist.observe(seconds)

    def stream_batch(self, pool: str, items: int) -> None:
        self.stream_batches[pool] = self.stream_batches.get(pool, 0) + 1
        self.stream_items[pool] = self.stream_items.get(pool, 0) + items

    def render(self, gauges: BridgeSnapshot | None = None) -> str:
        """The exposition text: these counters, and ``gauges``."""
        out = Exposition()
        out.family("snakebridge_calls_total", "counter", "RPCs served, by pool, kind and status")
        for (pool, kind, status), n in sorted(self.calls.items()):
            out.sample(
                "snakebridge_calls_total", ("pool", "kind", "status"), (pool, kind, status), n
            )
        out.family(
            "snakebridge_call_duration_seconds",
            "histogram",
            "RPC latency in the server, from request to reply, by pool and kind",
        )
        for (pool, kind), hist in sorted(self.latency.items()):
            out.histogram("snakebridge_call_duration_seconds", ("pool", "kind"), (pool, kind), hist)
        out.family("snakebridge_stream_batches_total", "counter", "Stream batches sent")
        for pool, n in sorted(self.stream_batches.items()):
            out.sample("snakebridge_stream_batches_total", ("pool",), (pool,), n)
        out.family("snakebridge_stream_items_total", "counter", "Stream items sent")
        for pool, n in sorted(self.stream_items.items()):
            out.sample("snakebridge_stream_items_total", ("pool",), (pool,), n)
        if gauges is not None:
            _render_gauges(out, gauges)
        return out.text()


def _render_gauges(out: Exposition, gauges: BridgeSnapshot) -> None:
    pools = gauges.pools

    def per_pool(name: str, kind: str, help_text: str, values: Iterable[tuple[str, float]]) -> None:
        out.family(name, kind, help_text)
        for pool, value in values:
            out.sample(name, ("pool",), (pool,), value)

    per_pool(
        "snakebridge_in_flight",
        "gauge",
        "Requests on the pool's workers, running or queued (open streams count)",
        ((p.name, p.in_flight) for p in pools),
    )
    per_pool(
        "snakebridge_queue_depth",
        "gauge",
        "Requests waiting behind the ones each worker is running",
        ((p.name, p.queue_depth) for p in pools),
    )
    per_pool(
        "snakebridge_workers_live",
        "gauge",
        "Workers running and taking calls",
        ((p.name, p.live) for p in pools),
    )
    per_pool(
        "snakebridge_workers_size",
        "gauge",
        "Workers the pool is configured to run",
        ((p.name, p.size) for p in pools),
    )
    out.family(
        "snakebridge_worker_in_flight",
        "gauge",
        "Requests on one worker, running or queued (up to the pool's concurrency run at once)",
    )
    for p in pools:
        for w in p.workers:
            if w.state != "retiring":  # its slot's new worker is the one reported
                labels = (p.name, str(w.slot))
                out.sample("snakebridge_worker_in_flight", ("pool", "slot"), labels, w.in_flight)
    out.family(
        "snakebridge_worker_restarts_total",
        "counter",
        "Workers lost or recycled, by pool and reason",
    )
    for p in pools:
        for reason, n in sorted(p.restarts.items()):
            out.sample("snakebridge_worker_restarts_total", ("pool", "reason"), (p.name, reason), n)
    out.family("snakebridge_sessions_live", "gauge", "Sessions the server tracks")
    out.sample("snakebridge_sessions_live", (), (), gauges.sessions)
    out.family("snakebridge_refs_live", "gauge", "Refs held in workers, all sessions")
    out.sample("snakebridge_refs_live", (), (), gauges.refs)


class _Loaded(Protocol):
    """What ``queue_depth`` reads of a worker."""

    @property
    def in_flight(self) -> int: ...


def queue_depth(
    workers: Iterable[_Loaded | None], retiring: Iterable[_Loaded] = (), concurrency: int = 1
) -> int:
    """Requests queued behind the ones running: a worker runs ``concurrency`` requests
    at a time (the pool's setting)."""
    depth = 0
    for w in (*workers, *retiring):
        if w is not None and w.in_flight > concurrency:
            depth += w.in_flight - concurrency
    return depth


def batch_items(body: bytes) -> int:
    """Items in a stream batch: the length of its msgpack array header (the codec
    encodes a batch as one array); 0 for anything else."""
    if not body:
        return 0
    first = body[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(body) >= 3:
        return int.from_bytes(body[1:3], "big")
    if first == 0xDD and len(body) >= 5:
        return int.from_bytes(body[1:5], "big")
    return 0
