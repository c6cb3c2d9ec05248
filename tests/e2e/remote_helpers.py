"""Functions the e2e tests run inside workers (the server gets this dir on PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

__all__ = ["add", "greet"]  # the helpers this module registers with --helpers


def _mark(path: str, text: str) -> None:
    """Write ``path`` atomically, so a test polling for it never reads it half-written."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def add(a: int, b: int) -> int:
    """Add two numbers (a registered helper)."""
    return a + b


def greet(name: str, *, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


def echo(value: Any) -> Any:
    return value


def type_names(value: Any) -> Any:
    """Describe the structure of what arrived: refs must arrive as the real objects."""
    if isinstance(value, list):
        return [type_names(v) for v in value]
    if isinstance(value, dict):
        return {k: type_names(v) for k, v in value.items()}
    return type(value).__name__


class Thing:
    def __init__(self, name: str = "thing") -> None:
        self.name = name
        self.child = Child()

    def rename(self, name: str) -> str:
        self.name = name
        return self.name


class Child:
    label = "child"


def mixed() -> Any:
    """Containers keep their shape; unencodable leaves become refs; one object, one ref."""
    obj = Thing("shared")
    return [1, obj, {"again": obj, "lock": Thing("other")}, (2, 3)]


def cyclic() -> Any:
    a: list[Any] = [1]
    a.append(a)
    return a


def counter() -> Any:
    return (i for i in range(3))


def pid() -> int:
    return os.getpid()


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def stubborn_sleep(seconds: float) -> str:
    """Swallows the interruption, so the server must kill the worker."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except BaseException:
            pass
    return "finished"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_once(marker: str) -> str:
    """Dies the first time (leaving ``marker``), succeeds afterwards."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("crashed")
        os._exit(3)
    return "ok"


def exit_call() -> None:
    raise SystemExit(4)


async def async_add(a: int, b: int) -> int:
    import asyncio

    await asyncio.sleep(0.01)
    return a + b


class CustomError(Exception):
    pass


def raise_custom() -> None:
    raise CustomError("custom failure")


def make_many(n: int) -> list[Thing]:
    return [Thing(str(i)) for i in range(n)]


def env(name: str) -> str | None:
    return os.environ.get(name)


def raise_base(kind: str) -> None:
    """Raise a BaseException that is not an Exception, as misbehaving code may."""
    import asyncio

    raise {"cancelled": asyncio.CancelledError, "generator_exit": GeneratorExit}[kind]()


def big_bytes(n: int) -> bytes:
    return b"x" * n


# -- generators for the streaming tests -------------------------------------------------


def numbers(n: int) -> Any:
    yield from range(n)


def forever(marker: str = "", chunk: int = 0) -> Any:
    """Infinite; writes ``marker`` from its finally block when closed."""
    i = 0
    try:
        while True:
            yield (b"x" * chunk) if chunk else i
            i += 1
    finally:
        if marker:
            _mark(marker, f"closed after {i}")


def slow(marker: str, delay: float) -> Any:
    """First item at once, then one item per ``delay`` seconds."""
    i = 0
    try:
        while True:
            yield i
            i += 1
            time.sleep(delay)
    finally:
        _mark(marker, "closed")


async def async_numbers(n: int, delay: float = 0.0) -> Any:
    import asyncio

    for i in range(n):
        if delay:
            await asyncio.sleep(delay)
        yield i


async def async_forever(marker: str) -> Any:
    import asyncio

    i = 0
    try:
        while True:
            yield i
            i += 1
            await asyncio.sleep(0)
    finally:
        _mark(marker, "closed")


def fails_after(n: int) -> Any:
    yield from range(n)
    raise ValueError(f"boom after {n}")


def things(n: int) -> Any:
    for i in range(n):
        yield Thing(str(i))


def gen_in_container() -> Any:
    return {"gen": (i * i for i in range(4)), "n": 1}


class Bag:
    def __init__(self) -> None:
        self.data = [3, 1, 2]

    def items(self) -> Any:
        return iter(sorted(self.data))

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Any:
        return iter(self.data)


def raise_long(n: int) -> None:
    raise ValueError("x" * n)


class SlowProperty:
    @property
    def value(self) -> int:
        time.sleep(30)
        return 1


def with_cyclic_item() -> Any:
    cyc: list[Any] = [1]
    cyc.append(cyc)
    yield 0
    yield cyc
    yield 2


def huge_items(size: int) -> Any:
    yield b"x" * 10
    yield b"x" * size


# -- supervision (recycling) --------------------------------------------------------------

_HELD: list[bytes] = []


def hold_memory(nbytes: int) -> int:
    """Allocate ``nbytes`` and keep them (written, so resident); returns the worker's pid."""
    _HELD.append(b"\x01" * nbytes)
    return os.getpid()


def ticks(delay: float) -> Any:
    """Endless: (pid, i) now, then one item per ``delay`` seconds."""
    i = 0
    while True:
        yield (os.getpid(), i)
        i += 1
        time.sleep(delay)


# -- pools (test_pools.py) ----------------------------------------------------------------


def interpreter() -> list[str]:
    """The worker's interpreter: its prefix (the venv) and executable."""
    import sys

    return [sys.prefix, sys.executable]


def env_value(name: str) -> str | None:
    return os.environ.get(name)


def imported(name: str) -> bool:
    import sys

    return name in sys.modules


class PrefixProbe:
    def prefix(self) -> str:
        import sys

        return sys.prefix


def raise_timeout(message: str) -> None:
    """User code whose own TimeoutError must reach the caller as that, not a deadline."""
    raise TimeoutError(message)


def timeout_after(count: int) -> Any:
    """A generator that yields ``count`` items, then raises its own TimeoutError."""
    yield from range(count)
    raise TimeoutError("upstream timed out")
