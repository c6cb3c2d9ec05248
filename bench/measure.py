"""Timing primitives: sequential round-trip latency and throughput at N calls in flight, and
named figures (a wall time, a speedup, MB/s, RSS) for targets that are not latency rows."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Call = Callable[[], Awaitable[object]]


class Unavailable(Exception):
    """A section cannot run here (server missing, failed to start, ...); the message says why."""


@dataclass
class Result:
    """One benchmarked thing. Latencies in microseconds; any figure may be absent."""

    name: str
    p50_us: float | None = None
    p99_us: float | None = None
    calls_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    # 5, not 3: on 2 cores, sequential p50 is bimodal (~450 us when client and server run on
    # different cores, ~600 us when the scheduler puts them on the same one), and a rep tends
    # to stay in one mode; the median of 5 interleaved reps is far less a matter of luck.
    reps: int = 5
    warmup: int = 300
    calls: int = 2000
    concurrency: int = 64
    tput_warmup_s: float = 0.3
    tput_seconds: float = 2.0
    # A rep normally takes a few seconds; past this the server is taken to be hung.
    rep_timeout_s: float = 60.0
    # A smoke run (--quick): sections with their own `measure` take fewer samples per rep.
    smoke: bool = False

    @classmethod
    def quick(cls) -> Settings:
        return cls(reps=1, warmup=50, calls=300, tput_warmup_s=0.1, tput_seconds=0.5, smoke=True)


@dataclass(frozen=True)
class Figure:
    """A named number that a target's own `measure` reports in `Rep.figures[key]`.

    The result holds the median over reps. `goal` and `target` state the issue's target
    for it (`"<="`: at most `target`; `">="`: at least), which the report checks.
    """

    key: str
    label: str
    unit: str
    fmt: str = ".1f"
    goal: Literal["<=", ">="] | None = None
    target: float | None = None
    note: str = ""

    def meets(self, value: float) -> bool | None:
        if self.goal is None or self.target is None:
            return None
        return value <= self.target if self.goal == "<=" else value >= self.target


@dataclass
class Target:
    """Something to measure, ready to call: set up (server running) by a section.

    `extra` is copied into the Result; a section may still add to it while shutting down
    (e.g. the server's exit code), since results are built after every section has closed.
    A target with `figures` reports those (its `measure` fills `Rep.figures`) instead of
    latency and calls/s, and is listed apart from the latency table.
    """

    name: str
    call: Call
    extra: dict[str, Any] = field(default_factory=dict)
    measure: Callable[[Call, Settings], Awaitable[Rep]] | None = None
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Rep:
    p50_us: float | None = None
    p99_us: float | None = None
    calls_per_s: float | None = None
    figures: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the progress output."""
        if self.figures:
            return ", ".join(f"{key} {value:.4g}" for key, value in self.figures.items())
        return (
            f"p50 {_fmt(self.p50_us, '.0f')} us, p99 {_fmt(self.p99_us, '.0f')} us, "
            f"{_fmt(self.calls_per_s, ',.0f')} calls/s"
        )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def percentiles_us(samples_ns: list[int]) -> tuple[float, float]:
    """(p50, p99) in microseconds."""
    cuts = statistics.quantiles(samples_ns, n=100, method="inclusive")
    return cuts[49] / 1000, cuts[98] / 1000


async def sequential_latency(call: Call, warmup: int, calls: int) -> list[int]:
    """Round-trip times in ns of `calls` calls made one after another."""
    for _ in range(warmup):
        await call()
    samples = [0] * calls
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        await call()
        samples[i] = clock() - start
    return samples


async def _sleep_unless_failed(tasks: list[asyncio.Task[None]], seconds: float) -> None:
    """Sleep, but re-raise at once if a worker dies (workers only end when told to)."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        task.result()
    if done:
        raise RuntimeError("a throughput worker stopped early")


async def throughput(call: Call, concurrency: int, warmup_s: float, seconds: float) -> float:
    """Completed calls per second with `concurrency` calls kept in flight."""
    completed = 0
    stop = False

    async def worker() -> None:
        nonlocal completed
        while not stop:
            await call()
            completed += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await _sleep_unless_failed(tasks, warmup_s)
        first, start = completed, time.perf_counter_ns()
        await _sleep_unless_failed(tasks, seconds)
        last, end = completed, time.perf_counter_ns()
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    stop = True
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
    return (last - first) * 1e9 / (end - start)


async def measure_rep(call: Call, settings: Settings) -> Rep:
    """One repetition: sequential latency, then throughput with calls in flight."""
    samples = await sequential_latency(call, settings.warmup, settings.calls)
    p50, p99 = percentiles_us(samples)
    rate = await throughput(
        call, settings.concurrency, settings.tput_warmup_s, settings.tput_seconds
    )
    return Rep(p50, p99, rate)


def aggregate(target: Target, reps: list[Rep], settings: Settings) -> Result:
    """Each figure is the median over the repetitions (the machine is noisy)."""
    if target.figures:
        return _aggregate_figures(target, reps)
    return Result(
        name=target.name,
        p50_us=_median([r.p50_us for r in reps]),
        p99_us=_median([r.p99_us for r in reps]),
        calls_per_s=_median([r.calls_per_s for r in reps]),
        extra={
            **target.extra,
            "concurrency": settings.concurrency,
            "reps": [{k: v for k, v in asdict(r).items() if k != "figures" or v} for r in reps],
        },
    )


def _aggregate_figures(target: Target, reps: list[Rep]) -> Result:
    """`extra["figures"]`: per figure its median over reps, each rep's value, and the
    target and whether the median meets it (JSON-ready)."""
    figures: dict[str, dict[str, Any]] = {}
    for fig in target.figures:
        values = [r.figures[fig.key] for r in reps if fig.key in r.figures]
        median = statistics.median(values) if values else None
        figures[fig.key] = {
            "label": fig.label,
            "unit": fig.unit,
            "fmt": fig.fmt,
            "median": median,
            "reps": values,
            "goal": fig.goal,
            "target": fig.target,
            "meets": None if median is None else fig.meets(median),
            "note": fig.note,
        }
    return Result(name=target.name, extra={**target.extra, "figures": figures})
