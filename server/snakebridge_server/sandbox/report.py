"""The sandbox level a pool reached, as logged at start-up and shown by ``Describe``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .policy import LEVELS


class _Reporting(Protocol):
    @property
    def alive(self) -> bool: ...
    @property
    def sandbox_level(self) -> str: ...
    @property
    def sandbox_layers(self) -> list[str]: ...


def sandbox_report(workers: Iterable[_Reporting | None]) -> tuple[str, list[str]]:
    """The weakest level the pool's live workers reached, and that worker's layers."""
    live = [w for w in workers if w is not None and w.alive]
    if not live:
        return "unknown", ["no live worker"]
    weakest = min(live, key=lambda w: LEVELS.index(w.sandbox_level))
    return weakest.sandbox_level, weakest.sandbox_layers
