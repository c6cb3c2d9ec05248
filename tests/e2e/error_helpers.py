"""Worker-side functions that raise, for tests/e2e/test_remote_errors.py (importable by the
workers through the e2e server's PYTHONPATH)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any


class AppError(Exception):
    """A library's own base class."""


class RecordNotFound(AppError, LookupError):
    """A subclass with a builtin in its hierarchy."""


def decode(text: str) -> Any:
    return json.loads(text)  # the line the remote traceback must name


def not_found(key: str) -> None:
    raise RecordNotFound(key, 42)


def chained() -> None:
    try:
        empty: dict[str, int] = {}
        empty["inner-key"]
    except KeyError as exc:
        raise RuntimeError("outer failure") from exc


def during_handling() -> None:
    try:
        raise ValueError("first")
    except ValueError:
        raise TypeError("second")  # noqa: B904  # the implicit chain is the point


def read_file(path: str) -> str:
    with open(path) as f:
        return f.read()


def write_file(path: str, text: str) -> int:
    with open(path, "w") as f:
        return f.write(text)


def open_socket() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()


def resolve(name: str) -> Any:
    return socket.getaddrinfo(name, 80)


def env(name: str) -> str:
    return os.environ[name]


def allocate(n: int) -> int:
    return len(bytearray(n))


def unencodable_args() -> None:
    raise ValueError(object(), "second")


def long_chain(depth: int) -> None:
    if depth == 0:
        raise ValueError("bottom")
    try:
        long_chain(depth - 1)
    except ValueError as exc:
        raise ValueError(f"level {depth}") from exc


def many_notes(n: int, size: int) -> None:
    exc = ValueError("noted")
    for i in range(n):
        exc.add_note(f"note {i} " + "x" * size)
    raise exc


def deep_hierarchy(n: int) -> None:
    cls: type = Exception
    for i in range(n):
        cls = type(f"Level{i}", (cls,), {})
    raise cls("deep")


def huge_message(n: int) -> None:
    raise ValueError("m" * n)


def fails_in_stream() -> Iterator[int]:
    yield 1
    json.loads("{")


def sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def kill_self(signal_name: str) -> None:
    import signal

    os.kill(os.getpid(), getattr(signal, signal_name))
