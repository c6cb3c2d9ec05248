"""A user library for the codegen tests: annotated functions, a class and generators.

Workers import it from the e2e directory (on the test server's PYTHONPATH).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Optional

__version__ = "1.2.3"

shell = os.system  # the call policy denies it: introspection must leave it out
_MISSING = object()  # a default the wire cannot carry: only an omitted argument keeps it


def scale(values: list[float], factor: float = 2.0, *, offset: float = 0.0) -> list[float]:
    """Each value times ``factor``, plus ``offset``."""
    return [v * factor + offset for v in values]


def greet(
    name: str, /, greeting: str = "hello", *extra: str, loud: bool = False, **tags: int
) -> str:
    """A greeting that shows how every argument arrived."""
    text = f"{greeting} {name}" + "".join(f" {e}" for e in extra)
    if tags:
        text += " " + json.dumps(tags, sort_keys=True)
    return text.upper() if loud else text


def omitted(x: int, marker: object = _MISSING) -> str:
    """Says whether ``marker`` was left out (its default cannot cross the wire)."""
    return "omitted" if marker is _MISSING else f"sent {marker!r}"


def maybe(x: Optional[int] = None) -> Optional[str]:  # noqa: UP045 (the old spelling on purpose)
    return None if x is None else str(x)


class Point:
    """A point in the plane."""

    def __init__(self, x: float, y: float = 0.0) -> None:
        self.x = x
        self._y = y

    @property
    def y(self) -> float:
        """The second coordinate."""
        return self._y

    def norm(self) -> float:
        """Distance from the origin."""
        return float((self.x**2 + self._y**2) ** 0.5)

    def moved(self, dx: float = 0.0, dy: float = 0.0) -> Point:
        """A new point, moved."""
        return Point(self.x + dx, self._y + dy)

    def steps(self, n: int) -> Iterator[float]:
        """``n`` x coordinates walking away from this point."""
        for i in range(n):
            yield self.x + i

    @classmethod
    def origin(cls) -> Point:
        """The point (0, 0)."""
        return cls(0.0, 0.0)


def make_point(x: float, y: float = 0.0) -> Point:
    """A ``Point``, made by a function."""
    return Point(x, y)


def countdown(n: int) -> Iterator[int]:
    """n, n-1, ... 1."""
    while n > 0:
        yield n
        n -= 1


async def ticks(n: int) -> AsyncIterator[str]:
    """An async generator: "tick 0", "tick 1", ..."""
    for i in range(n):
        yield f"tick {i}"


async def doubled(x: int) -> int:
    """A coroutine function: awaited in the worker."""
    return 2 * x
