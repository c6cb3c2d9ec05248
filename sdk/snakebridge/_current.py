"""The current client of a task, for generated bindings. Runs in the client process.

``async with Client(...)`` makes the client current for the task that entered it (and the
tasks it starts, which copy its context) until the block ends; ``snakebridge.use(x)``
makes a ``Client`` or a ``Session`` current explicitly. Generated wrappers call through
``current()`` unless they are given ``client=``.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from ._client import Client, Session

_Target = Union["Client", "Session"]
_CURRENT: ContextVar[_Target | None] = ContextVar("snakebridge_current", default=None)


class NoCurrentClient(RuntimeError):
    """A generated wrapper was called with no client to call through: no ``async with
    snakebridge.Client(...)`` block is open in this task, no ``snakebridge.use(...)`` set
    one, and no ``client=`` was passed. Open a client around the call, or pass one."""


class Use:
    """What ``snakebridge.use`` returns: ``with snakebridge.use(session): ...`` restores
    the previous current client on exit; used as a plain call, the setting stays."""

    __slots__ = ("_token",)

    def __init__(self, token: Token[_Target | None]) -> None:
        self._token = token

    def __enter__(self) -> Use:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        leave(self._token)


def use(target: Client | Session | None) -> Use:
    """Make ``target`` (a ``Client`` or a ``Session``) the current client of this task;
    None clears it."""
    from ._client import Client, Session

    if target is not None and not isinstance(target, Client | Session):
        raise TypeError(f"use() takes a Client or a Session, not {type(target).__name__}")
    return Use(_CURRENT.set(target))


def enter(target: Client) -> Token[_Target | None]:
    return _CURRENT.set(target)


def leave(token: Token[_Target | None]) -> None:
    try:
        _CURRENT.reset(token)
    except ValueError:
        pass  # left in another context (another task) than it was entered in: nothing to undo


def current() -> Client | Session:
    """The current client or session; ``NoCurrentClient`` when there is none."""
    target = _CURRENT.get()
    if target is None:
        raise NoCurrentClient(
            "no snakebridge client to call through: call inside 'async with "
            "snakebridge.Client(...)', set one with snakebridge.use(client), or pass client="
        )
    return target
