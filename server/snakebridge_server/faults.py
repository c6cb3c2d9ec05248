"""Fault accounting: who crashed workers, and who is refused for it. Pure, no clock of
its own (every method takes ``now``, monotonic seconds).

Runs in the server process.

A crash (a worker that died while running a call: a segfault, ``os._exit``, a kill for an
ignored cancellation or a blown CPU budget) counts against the session whose call was
running, and against that session's tenant:

- a session with ``session_limit`` crashes within ``window`` seconds is refused
  (``LimitExceeded`` naming ``session_crash_limit``) until the oldest ages out;
- a named tenant with ``tenant_limit`` crashes within the window likewise
  (``tenant_crash_limit``); the anonymous tenant of a server without authentication is
  every client at once, so only its sessions are limited;
- the pool-wide crash-loop breaker counts each *source* (a session, or a failed start) at
  most once per window (``breaker_counts``): it trips on ``crash_loop_max`` crashes from
  different sessions, never on one session crashing over and over.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from snakebridge.errors import LimitExceeded

MAX_TRACKED: Final = 4096  # sessions and tenants remembered at once; the oldest go first


class _Window:
    """Crash times of one source within the window (at most ``limit`` kept)."""

    __slots__ = ("times",)

    def __init__(self, limit: int) -> None:
        self.times: deque[float] = deque(maxlen=max(1, limit))

    def count(self, now: float, window: float) -> int:
        while self.times and now - self.times[0] > window:
            self.times.popleft()
        return len(self.times)


class FaultLedger:
    """Crashes per session and per tenant within a sliding window."""

    def __init__(self, *, session_limit: int, tenant_limit: int, window: float) -> None:
        self.session_limit = session_limit  # 0: no limit
        self.tenant_limit = tenant_limit  # 0: no limit
        self.window = window
        self._sessions: dict[tuple[str, str], _Window] = {}
        self._tenants: dict[str, _Window] = {}
        self._breaker_seen: dict[str, float] = {}  # source -> when it last counted

    def _window(self, table: dict, key: object, limit: int) -> _Window:  # type: ignore[type-arg]
        w = table.get(key)
        if w is None:
            if len(table) >= MAX_TRACKED:
                del table[next(iter(table))]
            w = table[key] = _Window(limit)
        return w

    def record(self, now: float, tenant: str, session: str) -> None:
        """One crash caused by a call of ``session`` (of ``tenant``)."""
        self._window(self._sessions, (tenant, session), self.session_limit).times.append(now)
        if tenant:
            self._window(self._tenants, tenant, self.tenant_limit).times.append(now)

    def check(self, now: float, tenant: str, session: str) -> None:
        """``LimitExceeded`` if ``session`` or ``tenant`` is over its crash limit."""
        if self.session_limit:
            w = self._sessions.get((tenant, session))
            if w is not None and w.count(now, self.window) >= self.session_limit:
                raise LimitExceeded(
                    f"this session crashed its worker {self.session_limit} times within "
                    f"{self.window:g}s (session_crash_limit={self.session_limit}); it is "
                    "refused until the oldest crash is that old; other sessions are served"
                )
        if self.tenant_limit and tenant:
            w = self._tenants.get(tenant)
            if w is not None and w.count(now, self.window) >= self.tenant_limit:
                raise LimitExceeded(
                    f"tenant {tenant!r} crashed workers {self.tenant_limit} times within "
                    f"{self.window:g}s (tenant_crash_limit={self.tenant_limit}); it is "
                    "refused until the oldest crash is that old; other tenants are served"
                )

    def breaker_counts(self, now: float, source: str) -> bool:
        """Whether a death from ``source`` counts toward the pool's crash-loop breaker:
        the first from that source within the window does, later ones do not."""
        last = self._breaker_seen.get(source)
        if last is not None and now - last <= self.window:
            return False
        if len(self._breaker_seen) >= MAX_TRACKED:
            del self._breaker_seen[next(iter(self._breaker_seen))]
        self._breaker_seen.pop(source, None)
        self._breaker_seen[source] = now
        return True

    def forget_session(self, tenant: str, session: str) -> None:
        """The session ended: its own count goes (its tenant's stays)."""
        self._sessions.pop((tenant, session), None)
