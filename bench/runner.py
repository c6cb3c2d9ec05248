"""Set up the selected sections, measure their targets in interleaved reps, tear down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType

from bench.measure import Rep, Result, Settings, Target, Unavailable, aggregate, measure_rep
from bench.sections import SECTIONS


@dataclass
class Outcome:
    results: dict[str, list[Result]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    teardown_errors: dict[str, str] = field(default_factory=dict)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, Unavailable):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


ExitCallback = Callable[
    [type[BaseException] | None, BaseException | None, TracebackType | None], Awaitable[bool]
]


def _closer(
    name: str, section: AbstractAsyncContextManager[list[Target]], out: Outcome
) -> ExitCallback:
    """An exit callback that records a section's tear-down error instead of raising it, so
    one section failing to close loses neither the other sections nor the results."""

    async def close(
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            await section.__aexit__(exc_type, exc, tb)
        except Exception as error:
            out.teardown_errors[name] = _reason(error)
            print(f"[{name}] error while shutting down: {out.teardown_errors[name]}", flush=True)
        return False

    return close


async def _open(
    stack: contextlib.AsyncExitStack, names: list[str], settings: Settings, out: Outcome
) -> dict[str, list[Target]]:
    opened: dict[str, list[Target]] = {}
    for name in names:
        print(f"[{name}] starting ...", flush=True)
        section = SECTIONS[name](settings)
        try:
            opened[name] = await section.__aenter__()
            stack.push_async_exit(_closer(name, section, out))
        except Exception as exc:
            out.unavailable[name] = _reason(exc)
            print(f"[{name}] skipped: {out.unavailable[name]}", flush=True)
    return opened


def _order(opened: dict[str, list[Target]], rep: int) -> list[tuple[str, Target]]:
    """All targets, in reverse order on odd reps, so no target always runs first."""
    flat = [(name, t) for name, ts in opened.items() for t in ts]
    return flat if rep % 2 == 0 else flat[::-1]


def _show(rep_no: int, total: int, target: Target, rep: Rep) -> None:
    print(f"  rep {rep_no}/{total} {target.name}: {rep.summary()}", flush=True)


async def _measure(
    opened: dict[str, list[Target]], settings: Settings, out: Outcome
) -> dict[str, list[Rep]]:
    reps: dict[str, list[Rep]] = {t.name: [] for ts in opened.values() for t in ts}
    for rep in range(settings.reps):
        for section, target in _order(opened, rep):
            if section in out.unavailable:
                continue
            measure = target.measure or measure_rep
            try:
                result = await asyncio.wait_for(
                    measure(target.call, settings), settings.rep_timeout_s
                )
            except TimeoutError:
                out.unavailable[section] = (
                    f"{target.name}: a rep took over {settings.rep_timeout_s:g}s (hung?)"
                )
                print(f"[{section}] failed: {out.unavailable[section]}", flush=True)
                continue
            except Exception as exc:
                out.unavailable[section] = f"{target.name} failed: {_reason(exc)}"
                print(f"[{section}] failed: {out.unavailable[section]}", flush=True)
                continue
            reps[target.name].append(result)
            _show(rep + 1, settings.reps, target, result)
    return reps


async def run_sections(names: list[str], settings: Settings) -> Outcome:
    out = Outcome()
    async with contextlib.AsyncExitStack() as stack:
        opened = await _open(stack, names, settings, out)
        reps = await _measure(opened, settings, out)
    # Built after tear-down, so sections' shutdown notes (exit codes) are in `extra`.
    for name, targets in opened.items():
        if name not in out.unavailable:
            out.results[name] = [aggregate(t, reps[t.name], settings) for t in targets]
    return out
