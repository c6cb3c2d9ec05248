"""Types and functions for the typed-values tests (issue #16 C), imported by the worker
(on the server's PYTHONPATH) and by the test itself under the same module name, so both
sides know the same classes. ``register()`` is called by ``typed_register`` (a preload)."""

from __future__ import annotations

import collections
import dataclasses
import enum
import pathlib
from typing import Any

import snakebridge


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass
class Box:
    name: str
    size: tuple[int, int]


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    def __hash__(self) -> int:
        return self.cents


def register() -> None:
    snakebridge.register_type(Money, lambda m: m.cents, Money, name="typed.Money")


def home(name: str) -> pathlib.Path:
    return pathlib.Path("/home") / name


def parent(path: pathlib.PurePath) -> Any:
    assert isinstance(path, pathlib.PurePath), type(path)
    return path.parent


def next_color(color: Color) -> Color:
    assert isinstance(color, Color), type(color)
    return Color.GREEN if color is Color.RED else Color.RED


def grow(box: Box) -> Box:
    assert isinstance(box, Box), type(box)
    return Box(box.name + "!", (box.size[0] + 1, box.size[1] + 1))


def swap(point: Point) -> Point:
    assert isinstance(point, Point), type(point)
    return Point(point.y, point.x)


def double(money: Money) -> Money:
    assert isinstance(money, Money), type(money)
    return Money(money.cents * 2)


def box_with_lock() -> Box:
    import threading

    return Box("locked", threading.Lock())  # type: ignore[arg-type]  # unencodable: a ref


def local_only() -> Any:
    import importlib

    return importlib.import_module("typed_worker_only").LocalOnly.A
