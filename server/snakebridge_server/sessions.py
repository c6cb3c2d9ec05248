"""Session bookkeeping. Pure and synchronous: the service asks it what to do and then
does the I/O itself (httpcore's pool style).

A session is a lifetime scope for refs, not a worker pin: it remembers which workers
hold its refs (so a release reaches all of them), how many refs it holds (for the caps),
its previous worker (for ``affinity="strict"``) and when it was last used (for the TTL).

Runs in the server process. The table is the server's one ref counter: per session and
worker for the caps, and per worker (``refs_on``) for ``Describe``. The worker child holds
the objects themselves (``worker.refs``) and reports what it makes and frees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from snakebridge.errors import LimitExceeded

from .refids import WorkerKey

log = logging.getLogger("snakebridge.sessions")

#: A session past this fraction of ``max_refs_per_session`` is logged (once, until it
#: falls below ``NEAR_CAP_RESET``): the client is leaking refs, and its calls will soon
#: fail with ``LimitExceeded``.
NEAR_CAP: float = 0.8
NEAR_CAP_RESET: float = 0.5


@dataclass(slots=True)
class Session:
    id: str
    last_used: float
    refs_by_worker: dict[WorkerKey, int] = field(default_factory=dict)
    last_worker: WorkerKey | None = None
    in_flight: int = 0
    near_cap: bool = False  # warned about its ref count (``NEAR_CAP``)

    @property
    def refs(self) -> int:
        return sum(self.refs_by_worker.values())


class SessionTable:
    def __init__(
        self, *, max_sessions: int, max_refs_per_session: int, max_refs_total: int, ttl: float
    ) -> None:
        self.max_sessions = max_sessions
        self.max_refs_per_session = max_refs_per_session
        self.max_refs_total = max_refs_total
        self.ttl = ttl
        self._sessions: dict[str, Session] = {}
        self.total_refs = 0
        self._by_worker: dict[WorkerKey, int] = {}  # refs of live sessions on each worker

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def refs_on(self, worker: WorkerKey) -> int:
        """Refs of live sessions that ``worker`` holds (0 once it is gone)."""
        return self._by_worker.get(worker, 0)

    def _count(self, session: Session, worker: WorkerKey, delta: int) -> None:
        """Every change of a ref count goes through here, so the per-session, per-worker
        and total counts agree. ``delta`` never takes a count below 0 (callers clamp)."""
        held = session.refs_by_worker.get(worker, 0) + delta
        if held:
            session.refs_by_worker[worker] = held
        else:
            session.refs_by_worker.pop(worker, None)
        on_worker = self._by_worker.get(worker, 0) + delta
        if on_worker:
            self._by_worker[worker] = on_worker
        else:
            self._by_worker.pop(worker, None)
        self.total_refs += delta
        if delta > 0 and not session.near_cap:
            refs = session.refs
            if refs >= NEAR_CAP * self.max_refs_per_session:
                session.near_cap = True
                log.warning(
                    "session %s holds %d refs, over %d%% of its cap of %d: release refs "
                    "it no longer needs (client.release_ref, a Session block, or let the "
                    "SDK release refs it garbage-collects), or calls will fail with "
                    "LimitExceeded",
                    session.id,
                    refs,
                    round(NEAR_CAP * 100),
                    self.max_refs_per_session,
                    extra={"session": session.id},
                )
        elif delta < 0 and session.near_cap:
            if session.refs < NEAR_CAP_RESET * self.max_refs_per_session:
                session.near_cap = False

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def begin_call(self, session_id: str, now: float) -> Session:
        """The session for a call that is starting, created on first use."""
        session = self._sessions.get(session_id)
        if session is None:
            if len(self._sessions) >= self.max_sessions:
                raise LimitExceeded(
                    f"the server holds {self.max_sessions} sessions, its maximum; "
                    "release sessions you no longer use"
                )
            session = self._sessions[session_id] = Session(session_id, now)
        session.in_flight += 1
        session.last_used = now
        return session

    def ref_budget(self, session: Session) -> int:
        """How many new refs the next call of ``session`` may create."""
        return max(
            0,
            min(
                self.max_refs_per_session - session.refs,
                self.max_refs_total - self.total_refs,
            ),
        )

    def end_call(
        self, session: Session, worker: WorkerKey | None, new_refs: int, now: float
    ) -> None:
        session.in_flight -= 1
        session.last_used = now
        if worker is None:
            return
        session.last_worker = worker
        if new_refs:
            self._count(session, worker, new_refs)

    def refs_created(self, session: Session, worker: WorkerKey, count: int) -> None:
        """Refs made mid-request (stream batches) count at once, not when it ends."""
        if count:
            self._count(session, worker, count)

    def refs_released(self, session_id: str, worker: WorkerKey, count: int) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        count = min(count, session.refs_by_worker.get(worker, 0))
        if count > 0:
            self._count(session, worker, -count)

    def remove(self, session_id: str) -> Session | None:
        """Forget the session; the caller releases its refs on ``refs_by_worker``'s keys."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            held = dict(session.refs_by_worker)
            for worker, count in held.items():
                self._count(session, worker, -count)
            session.refs_by_worker = held  # as it was: the caller releases them there
        return session

    def expired(self, now: float) -> list[Session]:
        """Remove and return sessions idle for longer than the TTL (none with calls running)."""
        cutoff = now - self.ttl
        dead = [s for s in self._sessions.values() if s.in_flight == 0 and s.last_used < cutoff]
        for session in dead:
            self.remove(session.id)
        return dead

    def next_expiry(self) -> float | None:
        idle = [s.last_used for s in self._sessions.values() if s.in_flight == 0]
        return min(idle) + self.ttl if idle else None

    def worker_gone(self, worker: WorkerKey) -> None:
        """A worker died: the refs it held no longer count against anyone's caps.
        ``last_worker`` is kept, so a strict-affinity call can report the loss."""
        for session in self._sessions.values():
            lost = session.refs_by_worker.get(worker, 0)
            if lost:
                self._count(session, worker, -lost)
        self._by_worker.pop(worker, None)
