"""Head to head: snakebridge against the peers (RPyC, Pyro5, a process pool) in one run.

The runner builds `Result`s only after every section has shut down, so a section cannot
see another's results. Instead, the targets compared here record their reps under their
names as they are measured (`recording`), and the `peers` section prints the comparison
when it shuts down: all measuring is over by then, whichever section closes first.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable

from bench.measure import Call, Rep, Settings, measure_rep

Measure = Callable[[Call, Settings], Awaitable[Rep]]

SNAKEBRIDGE = "snakebridge math.sqrt"
# Issue #6: snakebridge's calls/s at 64 in flight must be at least these peers' figures
# with 64 client threads (and at least 0.8x bare grpclib's, which the table's x column shows).
MUST_BEAT = ("RPyC classic", "Pyro5")
CALLS_PER_S_VS_FLOOR_TARGET = 0.8

_REPS: dict[str, list[Rep]] = {}

BATCHED = "snakebridge math.sqrt, batched"
BATCHED_IN_FLIGHT = (1, 8, 64, 200, 1000, 8000)
# Issue #14: batched calls/s at 64 in flight >= 1.5x the better of RPyC threaded and
# ProcessPoolExecutor(2); at 8000 in flight >= 0.9x the figure at 200.
BATCHED_VS_PEER_TARGET = 1.5
MANY_IN_FLIGHT_TARGET = 0.9


def batched_name(in_flight: int) -> str:
    return f"{BATCHED}, {in_flight} in flight"


def rpyc_name(settings: Settings) -> str:
    return f"RPyC classic math.sqrt, {settings.concurrency} threads"


def pyro5_name(settings: Settings) -> str:
    return f"Pyro5 math.sqrt, {settings.concurrency} threads"


POOL = "ProcessPoolExecutor(2) math.sqrt"


def peer_names(settings: Settings) -> dict[str, str]:
    """Short peer name -> its target name."""
    return {
        "RPyC classic": rpyc_name(settings),
        "Pyro5": pyro5_name(settings),
        "ProcessPoolExecutor(2)": POOL,
    }


def recording(name: str, measure: Measure = measure_rep) -> Measure:
    """`measure`, also keeping each rep under `name` for `print_comparison`."""

    async def measure_and_record(call: Call, settings: Settings) -> Rep:
        rep = await measure(call, settings)
        _REPS.setdefault(name, []).append(rep)
        return rep

    return measure_and_record


def median_calls_per_s(name: str) -> float | None:
    rates = [r.calls_per_s for r in _REPS.get(name, []) if r.calls_per_s is not None]
    return statistics.median(rates) if rates else None


def comparison_lines(settings: Settings) -> list[str]:
    ours = median_calls_per_s(SNAKEBRIDGE)
    if ours is None:
        return []
    lines = [
        f"{SNAKEBRIDGE} vs peers, calls/s with {settings.concurrency} in flight "
        f"(medians over this run's reps): {ours:,.0f}"
    ]
    for short, target in peer_names(settings).items():
        theirs = median_calls_per_s(target)
        if theirs is None:
            continue
        line = f"  vs {target}: {theirs:,.0f} -> {ours / theirs:.2f}x"
        if short in MUST_BEAT:
            line += f" (target >= 1: {'meets' if ours >= theirs else 'BELOW'})"
        lines.append(line)
    return (lines if len(lines) > 1 else []) + batched_lines(settings)


def batched_lines(settings: Settings) -> list[str]:
    """Issue #14's ratios: the batched client against the better peer, and 8000 in flight
    against 200."""
    lines: list[str] = []
    ours = median_calls_per_s(batched_name(64))
    peers = [
        median_calls_per_s(peer_names(settings)[p])
        for p in ("RPyC classic", "ProcessPoolExecutor(2)")
    ]
    best = max((p for p in peers if p is not None), default=None)
    if ours is not None and best is not None:
        ratio = ours / best
        verdict = "meets" if ratio >= BATCHED_VS_PEER_TARGET else "BELOW"
        lines.append(
            f"{batched_name(64)}: {ours:,.0f} calls/s / better of RPyC threaded and "
            f"ProcessPoolExecutor(2) {best:,.0f} = {ratio:.2f}x "
            f"(target >= {BATCHED_VS_PEER_TARGET}: {verdict})"
        )
    many, base = median_calls_per_s(batched_name(8000)), median_calls_per_s(batched_name(200))
    if many is not None and base is not None:
        ratio = many / base
        verdict = "meets" if ratio >= MANY_IN_FLIGHT_TARGET else "BELOW"
        lines.append(
            f"{BATCHED}: 8000 in flight {many:,.0f} / 200 in flight {base:,.0f} calls/s = "
            f"{ratio:.2f} (target >= {MANY_IN_FLIGHT_TARGET}: {verdict})"
        )
    unary = median_calls_per_s(SNAKEBRIDGE)
    if ours is not None and unary is not None:
        lines.append(
            f"{BATCHED} / unary Call at {settings.concurrency} in flight: {ours / unary:.2f}x"
        )
    return lines


def print_comparison(settings: Settings) -> None:
    for line in comparison_lines(settings):
        print(line, flush=True)
