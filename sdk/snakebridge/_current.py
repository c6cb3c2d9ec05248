"""The current client of a task, for generated bindings. Runs in the client process.

Only the variable: ``Client`` (``async with``) sets and resets it here, and
``snakebridge.bindings`` (``use``, ``current``) reads it with its type. This module imports
nothing of the SDK, so ``_client`` can use it without a cycle.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

#: A ``Client`` or a ``Session``, or None: see ``snakebridge.bindings.use``.
CURRENT: ContextVar[Any] = ContextVar("snakebridge_current", default=None)


def enter(target: Any) -> Token[Any]:
    return CURRENT.set(target)


def leave(token: Token[Any]) -> None:
    try:
        CURRENT.reset(token)
    except ValueError:
        pass  # left in another context (another task) than it was entered in: nothing to undo
