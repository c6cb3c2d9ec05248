"""Isolation between clients: which workers a call may run on. Pure and synchronous.

Runs in the server process.

A pool's ``isolation`` setting says who may share a worker:

- ``shared``: every client (today's behaviour; for one trusted application);
- ``tenant``: a worker serves one tenant (an identity of authentication, see ``auth``)
  for its whole life;
- ``session``: a worker serves one session and is discarded when the session ends.

Under ``tenant`` and ``session`` a worker is *dedicated*: the pool keeps started,
sandboxed, unassigned workers (spares) and assigns one to an owner on its first call.
``owner_key`` names the owner a call runs for; ``place`` decides, from the pool's slots,
what to do for it (httpcore's style: the decision here, the I/O in ``Pool``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Literal, Protocol, TypeVar

from .refids import WorkerKey

SHARED: Final = "shared"
TENANT: Final = "tenant"
SESSION: Final = "session"
LEVELS: Final = (SHARED, TENANT, SESSION)
STARTING: Final = "starting"  # a WorkerState value


def owner_key(level: str, tenant: str, session: str) -> str | None:
    """Who a call's worker must be dedicated to: None under ``shared``."""
    if level == TENANT:
        return "t:" + tenant
    if level == SESSION:
        # The NUL cannot occur in a tenant name: (tenant, session) pairs never collide.
        return f"s:{tenant}\0{session}"
    return None


class _Slot(Protocol):
    @property
    def key(self) -> WorkerKey: ...
    @property
    def alive(self) -> bool: ...
    @property
    def state(self) -> str: ...
    @property
    def in_flight(self) -> int: ...


S = TypeVar("S", bound=_Slot)


@dataclass(frozen=True, slots=True)
class Placement(Generic[S]):
    """What to do for a call of an owner.

    ``use``: run on ``worker`` (``assign``: it was a spare, now the owner's);
    ``start``: start a worker in the empty ``slot`` for the owner;
    ``wait``: a worker is starting or may free up; wait and decide again (``full``: every
    worker is dedicated, so this waits for another owner to let go of one).
    """

    action: Literal["use", "start", "wait"]
    worker: S | None = None
    slot: int = -1
    assign: bool = False
    full: bool = False


def place(
    slots: Sequence[S | None],
    assigned: Mapping[WorkerKey, str],
    owner: str,
    free: Collection[int],
    pending: int = 0,
) -> Placement[S]:
    """Where a call of ``owner`` runs. ``assigned``: owner of each dedicated worker;
    ``free``: empty slots a worker may be started in (none running or being replaced);
    ``pending``: workers about to be started (each will be a spare).

    The owner's own live worker (least loaded) first; else a spare (a live unassigned
    worker) is assigned; else a starting spare is awaited; else an empty slot is started;
    else wait for a worker to free up."""
    mine = [w for w in slots if w is not None and w.alive and assigned.get(w.key) == owner]
    if mine:
        return Placement("use", min(mine, key=lambda w: w.in_flight))
    spares = [w for w in slots if w is not None and w.alive and w.key not in assigned]
    if spares:
        return Placement("use", spares[0], assign=True)
    if pending or any(
        w is not None and w.state == STARTING and w.key not in assigned for w in slots
    ):
        return Placement("wait")  # a spare is on its way
    if free:
        return Placement("start", slot=min(free))
    return Placement("wait", full=True)


def spares_to_start(
    slots: Sequence[S | None], assigned: Mapping[WorkerKey, str], target: int, free: Collection[int]
) -> list[int]:
    """Empty slots to start spares in so that ``target`` spares (live or starting
    unassigned workers) exist, as far as the pool's maximum allows."""
    spares = sum(
        1
        for w in slots
        if w is not None and (w.alive or w.state == STARTING) and w.key not in assigned
    )
    return sorted(free)[: max(0, target - spares)]
