"""Machine description, the results table, named figures, the targets summary, ratios
against the floor, and the JSON record."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.loop import loop_name
from bench.measure import Result, Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUSY_WARNING = 0.15


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies over all CPUs, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    return values[3] + values[4], sum(values)


def cpu_busy(seconds: float = 0.5) -> float | None:
    """Fraction of all CPUs busy over `seconds` (other load makes the figures unreliable)."""
    before = _cpu_times()
    time.sleep(seconds)
    after = _cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return 1 - (after[0] - before[0]) / (after[1] - before[1])


def machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "nproc": usable or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_busy_before": cpu_busy(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "event_loop": loop_name(),
        "grpclib": _version("grpclib"),
        "uvloop": _version("uvloop"),
    }


def print_machine(info: dict[str, Any], settings: Settings) -> None:
    load = info["loadavg"]
    busy = info["cpu_busy_before"]
    print(
        f"machine: nproc={info['nproc']} cpu={info['cpu_model']} "
        f"python={info['implementation']} {info['python']} loop={info['event_loop']} "
        f"grpclib={info['grpclib']}"
        + (f" load1={load[0]:.2f}" if load else "")
        + (f" cpu_busy={busy:.0%}" if busy is not None else "")
    )
    if busy is not None and busy > BUSY_WARNING:
        print(f"WARNING: CPUs already {busy:.0%} busy before starting; figures will be skewed")
    print(
        f"settings: reps={settings.reps} (interleaved) latency={settings.warmup} warmup + "
        f"{settings.calls} sequential calls; throughput {settings.concurrency} in flight "
        f"for {settings.tput_seconds:g}s (figures: median over reps)"
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _is_row(r: Result) -> bool:
    """A latency-table row (not a rate, not a target reporting named figures)."""
    return "unit" not in r.extra and "figures" not in r.extra


def ratios(results: list[Result], floor: Result | None) -> dict[str, dict[str, float | None]]:
    """Each result's p50 and throughput as a multiple of the floor's."""
    if floor is None:
        return {}
    return {
        r.name: {
            "p50_vs_floor": _ratio(r.p50_us, floor.p50_us),
            "calls_per_s_vs_floor": _ratio(r.calls_per_s, floor.calls_per_s),
        }
        for r in results
        if r is not floor and _is_row(r)
    }


def print_table(
    results: list[Result], rel: dict[str, dict[str, float | None]], concurrency: int
) -> None:
    """The latency table, then rates (streams), then targets that report named figures."""
    rows = [r for r in results if _is_row(r)]
    rates = [r for r in results if "unit" in r.extra]
    figured = [r for r in results if "figures" in r.extra]
    if rows:
        _print_rows(rows, rel, concurrency)
    if rates:
        if rows:
            print()
        _print_rates(rates)
    if figured:
        if rows or rates:
            print()
        _print_figures(figured)


def _print_rows(
    results: list[Result], rel: dict[str, dict[str, float | None]], concurrency: int
) -> None:
    headers = ["benchmark", "p50 us", "p99 us", f"calls/s @{concurrency}", "p50 x", "calls/s x"]
    rows = [
        [
            r.name,
            _fmt(r.p50_us, ".1f"),
            _fmt(r.p99_us, ".1f"),
            _fmt(r.calls_per_s, ",.0f"),
            _fmt(rel.get(r.name, {}).get("p50_vs_floor"), ".2f"),
            _fmt(rel.get(r.name, {}).get("calls_per_s_vs_floor"), ".2f"),
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for n, row in enumerate([headers, *rows]):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print("(x columns: multiple of the bare grpclib floor; p50 lower is better, calls/s higher)")


def _print_rates(rates: list[Result]) -> None:
    width = max(len(r.name) for r in rates)
    for r in rates:
        unit = r.extra["unit"]
        line = f"{r.name.ljust(width)}  {_fmt(r.calls_per_s, ',.0f'):>12} {unit}"
        line += f"  (one stream: {_fmt(r.p50_us and r.p50_us / 1000, ',.1f')} ms)"
        target = r.extra.get("target")
        if target is not None and r.calls_per_s is not None:
            verdict = "meets" if r.calls_per_s >= target else "BELOW"
            line += f"  target >= {target:,} {unit}: {verdict}"
        if "note" in r.extra:
            line += f"  [{r.extra['note']}]"
        print(line)


def _target_text(goal: str, target: float, unit: str) -> str:
    number = f"{target:,.0f}" if target >= 1000 and target == int(target) else f"{target:g}"
    return f"target {goal} {number}{_unit(unit)}"


def _unit(unit: str) -> str:
    return unit if unit == "x" else f" {unit}"


def _print_figures(results: list[Result]) -> None:
    """Each target's figures (medians over reps), one per line, with its target if any."""
    width = max((len(f["label"]) for r in results for f in r.extra["figures"].values()), default=0)
    for r in results:
        print(f"{r.name}" + (f"  [{r.extra['about']}]" if r.extra.get("about") else ""))
        figures: dict[str, dict[str, Any]] = r.extra["figures"]
        for fig in figures.values():
            line = f"  {fig['label'].ljust(width)}  {_fmt(fig['median'], fig['fmt']):>10}"
            line += _unit(fig["unit"])
            if fig["goal"] is not None and fig["target"] is not None:
                line += f"  ({_target_text(fig['goal'], fig['target'], fig['unit'])})"
            if fig["note"]:
                line += f"  [{fig['note']}]"
            print(line)


def _verdict(meets: bool, goal: str) -> str:
    if meets:
        return "meets"
    return "OVER target" if goal == "<=" else "UNDER target"


def target_checks(
    results: list[Result], rel: dict[str, dict[str, float | None]]
) -> list[dict[str, Any]]:
    """Every figure that has a target: its value, the target and whether it is met."""
    checks: list[dict[str, Any]] = []

    def add(
        name: str, figure: str, value: float | None, goal: str, target: float, unit: str, fmt: str
    ) -> None:
        meets = None
        if value is not None:
            meets = value <= target if goal == "<=" else value >= target
        checks.append(
            {
                "benchmark": name,
                "figure": figure,
                "value": value,
                "unit": unit,
                "fmt": fmt,
                "goal": goal,
                "target": target,
                "meets": meets,
            }
        )

    for r in results:
        ratio = rel.get(r.name, {})
        if r.extra.get("p50_ratio_target") is not None:
            add(
                r.name,
                "p50 / grpclib p50",
                ratio.get("p50_vs_floor"),
                "<=",
                r.extra["p50_ratio_target"],
                "x",
                ".3f",
            )
        if r.extra.get("calls_per_s_ratio_target") is not None:
            add(
                r.name,
                "calls/s / grpclib calls/s",
                ratio.get("calls_per_s_vs_floor"),
                ">=",
                r.extra["calls_per_s_ratio_target"],
                "x",
                ".2f",
            )
        if "unit" in r.extra and r.extra.get("target") is not None:
            unit = r.extra["unit"]
            add(r.name, unit, r.calls_per_s, ">=", r.extra["target"], unit, ",.0f")
        for fig in r.extra.get("figures", {}).values():
            if fig["goal"] is not None and fig["target"] is not None:
                add(
                    r.name,
                    fig["label"],
                    fig["median"],
                    fig["goal"],
                    fig["target"],
                    fig["unit"],
                    fig["fmt"],
                )
    return checks


def print_targets(results: list[Result], rel: dict[str, dict[str, float | None]]) -> None:
    """The targets summary: every figure with a target, and whether it is met."""
    checks = target_checks(results, rel)
    if not checks:
        return
    print()
    print("targets (medians over reps):")
    for r in results:
        target = r.extra.get("p50_ratio_target")
        p50_x = rel.get(r.name, {}).get("p50_vs_floor")
        tput_x = rel.get(r.name, {}).get("calls_per_s_vs_floor")
        if target is None or p50_x is None:
            continue
        verdict = "within target" if p50_x <= target else "OVER target"
        print(
            f"{r.name}: p50 / grpclib p50 = {p50_x:.3f} (target <= {target:g}, {verdict}); "
            f"calls/s / grpclib calls/s = {_fmt(tput_x, '.2f')}"
        )
    for check in checks:
        if check["figure"] == "p50 / grpclib p50":
            continue  # the line above
        value = _fmt(check["value"], check["fmt"]) + _unit(check["unit"])
        verdict = "no figure" if check["meets"] is None else _verdict(check["meets"], check["goal"])
        target = _target_text(check["goal"], check["target"], check["unit"])
        print(f"{check['benchmark']}: {check['figure']} = {value} ({target}: {verdict})")


def print_notes(results: list[Result]) -> None:
    for r in results:
        unclean = r.extra.get("server_unclean_exit")
        if unclean:
            print(f"note: {r.name}: its server did not shut down cleanly: {unclean}")


def save(record: dict[str, Any], when: datetime, out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{when.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def record(
    when: datetime,
    info: dict[str, Any],
    settings: Settings,
    results: list[Result],
    rel: dict[str, dict[str, float | None]],
    unavailable: dict[str, str],
    teardown_errors: dict[str, str],
) -> dict[str, Any]:
    return {
        "timestamp": when.isoformat(),
        "machine": info,
        "settings": asdict(settings),
        "results": [asdict(r) for r in results],
        "ratios": rel,
        "targets": target_checks(results, rel),
        "unavailable": unavailable,
        "teardown_errors": teardown_errors,
    }


def now() -> datetime:
    return datetime.now(UTC)
