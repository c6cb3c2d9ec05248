"""The owner of an object's background tasks: one anyio task group on a task of its own.

Runs in the server process.

A pool's supervisor, its replacements and retirements, a worker handle's output pump and
reaper, the bridge's session sweeper: each object that runs tasks in the background owns a
``Background``, and ``aclose`` cancels them all and waits for each one to finish.

The task group lives in a dedicated host task, not in the task that calls ``start``: a
task group's cancel scope covers the task that entered it, so a group entered by
``Pool.start`` would keep its caller (for the server, the whole ``serve``) inside it, and a
failing child would cancel that caller. Here a child that raises is logged (ERROR, with its
name) and its siblings go on, because a supervisor must keep supervising; cancellation
still propagates as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

log = logging.getLogger("snakebridge.background")

_Child = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], str, anyio.CancelScope]


class Background:
    """Background tasks with one owner: ``start_soon`` adds one, ``aclose`` ends them all.

    ``start`` is optional: the first ``start_soon`` creates the host task too (children
    asked for before the group is up start when it is). ``aclose`` is idempotent and safe
    whether or not the group ever started; ``start_soon`` after it raises ``RuntimeError``.
    Do not call ``aclose`` from one of the children: it waits for them all.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._host: asyncio.Task[None] | None = None
        self._group: TaskGroup | None = None
        self._pending: list[_Child] = []  # asked for before the group was up
        self._ready = asyncio.Event()
        self._finished = asyncio.Event()
        self._closed = False
        self._children = 0  # asked for and not finished (pending ones included)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._group else "idle"
        return f"<Background {self.name} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Start the host task and wait until its task group takes children."""
        if self._closed:
            raise RuntimeError(f"background tasks of {self.name} already closed")
        self._ensure_host()
        await self._ready.wait()

    def start_soon(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        name: str,
        scope: anyio.CancelScope | None = None,
    ) -> anyio.CancelScope:
        """Run ``fn(*args)`` in the group. The returned scope (``scope`` if given: made
        by the caller, so the child can be told which is its own) cancels this child alone."""
        if self._closed:
            raise RuntimeError(
                f"background tasks of {self.name} already closed: cannot start {name}"
            )
        if scope is None:
            scope = anyio.CancelScope()
        self._children += 1
        if self._group is None:
            self._ensure_host()
            self._pending.append((fn, args, name, scope))
        else:
            self._group.start_soon(self._run, fn, args, name, scope, name=name)
        return scope

    async def aclose(self) -> None:
        """Cancel every child and wait until each has finished."""
        self._closed = True
        self._children -= len(self._pending)
        self._pending.clear()  # never started: nothing of theirs ran, nothing to undo
        if self._host is None:
            return
        if self._group is not None:
            self._group.cancel_scope.cancel()
        if self._children:
            await self._finished.wait()
        # With no child left, the host ends by itself at its next step and there is
        # nothing to wait for: closing then takes no loop iteration, as cancelling a set
        # of finished tasks did (a worker's close waits on this after its exit).

    def _ensure_host(self) -> None:
        if self._host is None:
            self._host = asyncio.get_running_loop().create_task(
                self._run_group(), name=f"background of {self.name}"
            )

    async def _run_group(self) -> None:
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                if self._closed:
                    group.cancel_scope.cancel()
                pending, self._pending = self._pending, []
                for fn, args, name, scope in pending:
                    group.start_soon(self._run, fn, args, name, scope, name=name)
                self._ready.set()
                await anyio.sleep_forever()
        finally:
            self._group = None
            self._closed = True
            self._ready.set()  # a start() still waiting returns (its owner is closing)
            self._finished.set()

    async def _run(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        name: str,
        scope: anyio.CancelScope,
    ) -> None:
        try:
            with scope:
                await fn(*args)
        except Exception:
            log.exception("%s: background task %s failed", self.name, name)
        finally:
            self._children -= 1
