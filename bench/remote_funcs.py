"""Functions that the benchmark servers' workers import and call.

The bench starts its servers with the repo root on PYTHONPATH, so workers (sandboxed at the
default level `standard`, which allows importing modules on their path) can import this
module as `bench.remote_funcs`. Standard library only; no I/O.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def spin(n: int) -> int:
    """Pure-Python CPU work: `n` loop iterations (holds the GIL throughout)."""
    total = 0
    for i in range(n):
        total += i ^ (i >> 3)
    return total


def echo(value: T) -> T:
    """Return the argument unchanged (payload round trips)."""
    return value
