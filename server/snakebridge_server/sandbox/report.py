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
    @property
    def runs_as_root(self) -> bool: ...


def sandbox_report(workers: Iterable[_Reporting | None]) -> tuple[str, list[str]]:
    """The weakest level the pool's live workers reached, and that worker's layers."""
    live = [w for w in workers if w is not None and w.alive]
    if not live:
        return "unknown", ["no live worker"]
    weakest = min(live, key=lambda w: LEVELS.index(w.sandbox_level))
    return weakest.sandbox_level, weakest.sandbox_layers


def root_reason(layers: list[str]) -> str:
    """Why a sandboxed worker of a root server runs as root, and what gives it a uid."""
    why = next((line for line in layers if line.startswith("uid: not switched")), "")
    why = why.removeprefix("uid: not switched, ") or "--sandbox-uid 0 keeps root"
    return (
        f"{why}; give workers a uid of their own by making the interpreter, its standard "
        "library and the worker runtime readable by others (e.g. --python "
        "/usr/bin/python3.11 with a readable venv), or start the server as a non-root user"
    )


def root_warning(workers: Iterable[_Reporting | None]) -> str | None:
    """The warning for a pool whose sandboxed workers run as root, or None. Such a pool
    does not meet ``--min-sandbox standard`` (docs/sandbox.md)."""
    root = [w for w in workers if w is not None and w.alive and w.runs_as_root]
    if not root:
        return None
    return (
        f"{len(root)} sandboxed worker(s) run as root (uid 0), without a uid of their "
        f"own: {root_reason(root[0].sandbox_layers)}"
    )
