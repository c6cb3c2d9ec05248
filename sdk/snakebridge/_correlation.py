"""Correlation ids: a caller-chosen label that travels with each RPC (gRPC metadata
``snakebridge-correlation-id``) into the server's and the worker's log lines and back in
every error (``BridgeError.correlation_id``)."""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

#: Longest correlation id, in characters.
MAX_CORRELATION_ID: Final = 128
_VALID: Final = re.compile(f"[\\x21-\\x7e]{{1,{MAX_CORRELATION_ID}}}")

_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "snakebridge_correlation_id", default=None
)


def check_correlation_id(value: str | None) -> str | None:
    """``value`` if it is None or 1-128 printable ASCII characters without spaces."""
    if value is not None and not (isinstance(value, str) and _VALID.fullmatch(value)):
        raise ValueError(
            f"a correlation id is 1 to {MAX_CORRELATION_ID} printable ASCII characters "
            f"without spaces, not {value!r}"
        )
    return value


@contextmanager
def correlation_id(value: str) -> Iterator[str]:
    """Send ``value`` as the correlation id of every RPC made inside the block, by any
    ``Client``, in this task (and the tasks it starts). It wins over
    ``Client(correlation_id=...)``; blocks nest. Raises ``ValueError`` for an id that is
    not 1-128 printable ASCII characters (no spaces)::

        with snakebridge.correlation_id("req-42"):
            await client.call("mymod", "handle", [payload])
    """
    check_correlation_id(value)
    token = _CURRENT.set(value)
    try:
        yield value
    finally:
        _CURRENT.reset(token)


def current() -> str | None:
    """The id set by the innermost ``correlation_id`` block, or None."""
    return _CURRENT.get()
