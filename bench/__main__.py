"""python -m bench [--quick] [--sections grpclib,snakebridge] [--reps N]"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import replace
from pathlib import Path

from bench import report
from bench.loop import run
from bench.measure import Settings
from bench.procs import kill_leftovers
from bench.runner import Outcome, run_sections
from bench.sections import BASELINE, SECTIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--reps", type=int, help="repetitions of each measurement")
    parser.add_argument("--out-dir", type=Path, default=report.RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON record")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings.quick() if args.quick else Settings()
    return settings if args.reps is None else replace(settings, reps=args.reps)


async def run_cancellable_by_sigterm(names: list[str], settings: Settings) -> Outcome:
    """SIGTERM cancels the run like Ctrl-C does, so servers are still stopped on the way out."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_sections(names, settings)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from(args)
    when = report.now()
    info = report.machine()
    report.print_machine(info, settings)
    try:
        outcome = run(run_cancellable_by_sigterm(args.sections, settings))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        kill_leftovers()
    by_section, unavailable = outcome.results, outcome.unavailable
    results = [r for name in args.sections for r in by_section.get(name, [])]
    floor = by_section[BASELINE][0] if by_section.get(BASELINE) else None
    rel = report.ratios(results, floor)
    print()
    if results:
        report.print_table(results, rel, settings.concurrency)
        report.print_targets(results, rel)
        report.print_notes(results)
    for name, reason in unavailable.items():
        print(f"{name}: unavailable ({reason})")
    for name, error in outcome.teardown_errors.items():
        print(f"{name}: error while shutting down ({error})")
    if not args.no_save:
        path = report.save(
            report.record(when, info, settings, results, rel, unavailable, outcome.teardown_errors),
            when,
            args.out_dir,
        )
        print(f"results: {path}")


if __name__ == "__main__":
    main()
