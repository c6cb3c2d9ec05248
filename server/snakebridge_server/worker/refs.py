"""Refs in the worker child: the objects it hands out by id, each owned by a session.

Runs in the worker child process. The ``RefTable`` maps the random token of a ref id to
the object and the session that owns it; every use of a ref is checked against the calling
session. Ref ids are ``<boot>.<pool>.<slot>.<incarnation>.<token>``; the prefix is this
worker's identity, so a ref minted by an earlier incarnation is recognised as lost. The
server's ``SessionTable`` counts the same refs per session and worker for its caps: the
worker reports every ref it makes (``new_refs``) or frees itself (``released``).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from snakebridge.errors import BridgeError, LimitExceeded, RefNotFound, SessionLost
from snakebridge.wire import codec
from snakebridge.wire.codec import RefPayload

from ..refids import new_ref_token


class OverBudget(Exception):
    """A request made more refs than its budget (``RefMinter``); the worker answers
    ``LimitExceeded`` and rolls them back."""


class RefMinter:
    """Turns unencodable values of one request into refs of its session, within the
    request's ref budget, remembering what it made so a failure can roll it back.

    Every object passes ``vet`` (the sandbox policy) before it becomes a ref, wherever it
    sits: a result, a value nested in one, a stream item or one nested in an item."""

    __slots__ = ("budget", "created", "session_id", "table", "vet")

    def __init__(
        self, table: RefTable, session_id: str, budget: int, vet: Callable[[Any], Any]
    ) -> None:
        self.table = table
        self.session_id = session_id
        self.budget = budget
        self.vet = vet
        self.created: list[RefPayload] = []

    def __call__(self, obj: Any, *, stream: bool | None = None) -> msgpack.ExtType:
        obj = self.vet(obj)
        if stream is None:
            stream = isinstance(obj, Iterator) or inspect.isasyncgen(obj)
        payload, is_new = self.table.add(obj, self.session_id, stream=stream)
        if is_new:
            self.created.append(payload)
            if len(self.created) > self.budget:
                raise OverBudget
        return codec.ref_ext(payload)

    def rollback(self, since: int = 0) -> None:
        """Drop the refs made since ``created[since]`` (all by default)."""
        self.table.discard(self.created[since:])
        del self.created[since:]

    def over_budget(self) -> LimitExceeded:
        self.rollback()
        return LimitExceeded(
            f"the call would create more refs than its session may hold ({self.budget} left)"
        )


class RefTable:
    """Objects handed out as refs, by the random token of their id, each owned by the
    session it was made for.

    Every lookup names the session asking: a ref of another session answers exactly as
    one that never existed (``RefNotFound``, same text), so nothing tells a client whether
    an id it got hold of is live elsewhere.
    """

    def __init__(self, prefix: str, pool: str, max_refs: int) -> None:
        self.prefix = prefix  # "<boot>.<pool>.<slot>.<incarnation>."
        self.pool = pool
        self.max_refs = max_refs
        self._objects: dict[str, tuple[Any, str]] = {}  # token -> (object, owning session)
        # session -> id(obj) -> token: the same object in one session keeps one ref.
        self._by_session: dict[str, dict[int, str]] = {}
        # A worker of concurrency > 1 runs stream requests on a thread of their own while
        # its event loop serves calls: changes to the table are made under this lock.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._objects)

    def add(self, obj: Any, session_id: str, *, stream: bool) -> tuple[RefPayload, bool]:
        """The ref for ``obj`` in ``session_id``; the flag says whether it is new."""
        with self._lock:
            seen = self._by_session.setdefault(session_id, {})
            token = seen.get(id(obj))
            is_new = token is None
            if token is None:
                if len(self._objects) >= self.max_refs:
                    raise LimitExceeded(f"worker holds {self.max_refs} refs, its maximum")
                token = new_ref_token()
                while token in self._objects:  # 2**-128 per pair: never, but stay correct
                    token = new_ref_token()
                self._objects[token] = (obj, session_id)
                seen[id(obj)] = token
        payload = RefPayload(stream, f"{self.prefix}{token}", session_id, self.pool, type_name(obj))
        return payload, is_new

    def get(self, ref_id: str, session_id: str) -> Any:
        """The object ``ref_id`` names, if ``session_id`` owns it; else ``RefNotFound``."""
        return self._objects[self._token(ref_id, session_id)][0]

    def discard(self, refs: list[RefPayload]) -> None:
        """Undo ``add`` for refs a failed call created (nobody has seen their ids)."""
        for ref in refs:
            self.release([ref.id], ref.session_id)

    def _token(self, ref_id: str, session_id: str) -> str:
        if not ref_id.startswith(self.prefix):
            # Same pool and slot but another incarnation: the object died with it.
            raise SessionLost(f"ref {ref_id} belongs to a worker that no longer exists")
        token = ref_id[len(self.prefix) :]
        entry = self._objects.get(token)
        if entry is None or entry[1] != session_id:
            # One answer for "never existed", "released" and "another session's".
            raise RefNotFound(f"ref {ref_id} was released or never existed")
        return token

    def release(self, ref_ids: list[str], session_id: str) -> dict[str, int]:
        """Drop the refs of ``ids`` that ``session_id`` owns; returns released counts per
        session (only ever ``session_id``). Unknown ids and other sessions' are skipped."""
        count = 0
        with self._lock:
            for ref_id in ref_ids:
                try:
                    token = self._token(ref_id, session_id)
                except BridgeError:
                    continue
                obj, _ = self._objects.pop(token)
                self._by_session.get(session_id, {}).pop(id(obj), None)
                count += 1
        return {session_id: count} if count else {}

    def release_session(self, session_id: str) -> int:
        with self._lock:
            seen = self._by_session.pop(session_id, {})
            for token in seen.values():
                self._objects.pop(token, None)
        return len(seen)


def type_name(obj: Any) -> str:
    """The qualified name of ``obj``'s type, bare for builtins."""
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
