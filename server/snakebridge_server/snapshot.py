"""What the bridge looks like at one instant: pools, workers, sessions, refs.

Runs in the server process. Pure data: ``Bridge.snapshot()`` builds it; metrics render it
at scrape time and ``Describe`` answers with it, so neither reads pool or worker
internals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """One worker process (a retiring one finishes its calls and takes no new ones)."""

    worker_id: str
    slot: int
    incarnation: int
    pid: int
    state: str  # a WorkerState value, or "retiring"
    in_flight: int
    calls_done: int
    refs: int


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """One pool: its load, its workers and their restarts."""

    name: str
    in_flight: int  # requests on its workers, running or queued (open streams count)
    queue_depth: int  # requests waiting behind the ones each worker runs (its concurrency)
    live: int  # workers running and taking calls
    size: int  # workers configured
    restarts: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    state: str = ""  # a PoolState value
    max_queued: int = 0
    sandbox_level: str = ""  # the weakest level its live workers reached
    sandbox_layers: Sequence[str] = ()
    workers: Sequence[WorkerSnapshot] = ()


@dataclass(frozen=True, slots=True)
class BridgeSnapshot:
    """Every pool, and the sessions and refs the server tracks."""

    pools: Sequence[PoolSnapshot]
    sessions: int
    refs: int
