"""Releasing the refs a client garbage-collects (``Client(release_on_gc=True)``, the
default). Runs in the client process.

Each ``Ref`` the client makes gets a ``weakref.finalize``. When Python collects the ref,
the finalizer only appends ``(session_id, ref_id)`` to a bounded queue and wakes the
drainer: no I/O, no awaiting, nothing that could block or fail inside the garbage
collector, in whatever thread it runs. The drainer, a background task the ``Client``
owns (started with its first ref, cancelled and awaited by ``close``), waits ``LINGER``
seconds so that refs dropped together go out together, then sends one ``ReleaseRef`` per
session for up to ``BATCH`` ids. A ref collected is thus released within about a second,
off the hot path.

A call that fails with ``LimitExceeded`` while collected refs are still queued has them
released at once and is sent again, once (``flush``): a loop that drops each handle it
gets never runs into the session's cap however fast it goes.

A ref id the client decodes again while its release is still queued (the worker hands out
one id per object and session) is taken off the queue: the new ``Ref`` keeps the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from ._refs import Ref

log = logging.getLogger("snakebridge.refs")

LINGER: Final = 0.2  # seconds the drainer waits for more refs to release together
BATCH: Final = 1000  # ref ids in one ReleaseRef request
MAX_QUEUED: Final = 100_000  # collected refs waiting; past it they are left to the session


class GcReleaser:
    """The queue of collected refs and the task that releases them remotely."""

    def __init__(self, release: Callable[[str, list[str]], Awaitable[object]]) -> None:
        """``release(session_id, ref_ids)`` sends one ``ReleaseRef``."""
        self._release = release
        self._queue: deque[tuple[str, str]] = deque()
        self._queued: set[str] = set()  # the ref ids in ``_queue``
        self._lock = threading.Lock()  # finalizers run in whatever thread collects
        self._live: weakref.WeakValueDictionary[str, Ref] = weakref.WeakValueDictionary()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # collected refs not queued (the queue was full)
        self.released = 0  # refs the server confirmed released

    def adopt(self, ref: Ref) -> Ref:
        """``ref``, or the live ``Ref`` of the same id already made (one object per id,
        so a release cannot free what another handle still uses). Called on the loop."""
        known = self._live.get(ref.id)
        if known is not None and not known.released:
            return known
        if self._task is None:
            try:
                self._start()
            except RuntimeError:  # decoded outside any event loop: nothing to drain on
                return ref
        self._live[ref.id] = ref
        self._forget_queued(ref.id)
        finalizer = weakref.finalize(ref, self._collected, ref.session_id, ref.id)
        finalizer.atexit = False  # at exit there is no loop to release through
        ref._finalizer = finalizer
        return ref

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._drain(), name="snakebridge-gc-release")

    def _collected(self, session_id: str, ref_id: str) -> None:
        """The finalizer: queue and wake, nothing else."""
        with self._lock:
            if len(self._queue) >= MAX_QUEUED:
                self.dropped += 1
                return
            self._queue.append((session_id, ref_id))
            self._queued.add(ref_id)
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to do
            loop.call_soon_threadsafe(wake.set)

    def _forget_queued(self, ref_id: str) -> None:
        if ref_id not in self._queued:  # the common case, without the lock
            return
        with self._lock:
            if ref_id in self._queued:
                self._queued.discard(ref_id)
                self._queue = deque(item for item in self._queue if item[1] != ref_id)

    def _take(self) -> dict[str, list[str]]:
        with self._lock:
            taken, self._queue = self._queue, deque()
            self._queued = set()
        by_session: dict[str, list[str]] = {}
        for session_id, ref_id in taken:
            if ref_id not in self._live:  # not decoded again since
                by_session.setdefault(session_id, []).append(ref_id)
        return by_session

    async def _drain(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(LINGER)
            self._wake.clear()
            for session_id, ids in self._take().items():
                for start in range(0, len(ids), BATCH):
                    await self._send(session_id, ids[start : start + BATCH])

    async def _send(self, session_id: str, ids: list[str]) -> None:
        try:
            released = await self._release(session_id, ids)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server is gone or refused: the session ends them
            log.debug("releasing %d collected refs failed: %r", len(ids), exc)
            return
        if isinstance(released, int):
            self.released += released

    async def flush(self) -> bool:
        """Release every queued ref now; whether the server freed any."""
        before = self.released
        for session_id, ids in self._take().items():
            for start in range(0, len(ids), BATCH):
                await self._send(session_id, ids[start : start + BATCH])
        return self.released > before

    async def close(self) -> None:
        """Stop the drainer (the refs still queued are left to their sessions)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
