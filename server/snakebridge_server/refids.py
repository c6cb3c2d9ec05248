"""Ref ids and worker identities. Pure.

A ref id is ``<boot>.<pool>.<slot>.<incarnation>.<n>``:

- ``boot``: random per server start, so ids from a previous server are never reused;
- ``pool``/``slot``: which worker position minted it;
- ``incarnation``: which process in that position (bumped on every replacement), so a ref
  from a restarted worker is recognised as lost instead of being looked up in a fresh table;
- ``n``: the worker-local counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from snakebridge.errors import BadRequest, SessionLost

POOL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True, order=True)
class WorkerKey:
    """Identity of one worker process: position in a pool plus incarnation."""

    pool: str
    slot: int
    incarnation: int

    def ref_prefix(self, boot: str) -> str:
        return f"{boot}.{self.pool}.{self.slot}.{self.incarnation}."

    def __str__(self) -> str:
        return f"{self.pool}.{self.slot}.{self.incarnation}"


def parse_ref_id(ref_id: str, boot: str) -> WorkerKey:
    """The worker that owns ``ref_id``. ``SessionLost`` if it was minted by another server
    start; ``BadRequest`` if it is not a ref id at all."""
    parts = ref_id.split(".")
    if len(parts) != 5 or not POOL_NAME_RE.match(parts[1]):
        raise BadRequest(f"malformed ref id {ref_id!r}")
    ref_boot, pool, slot, incarnation, n = parts
    if not (slot.isdigit() and incarnation.isdigit() and n.isdigit()):
        raise BadRequest(f"malformed ref id {ref_id!r}")
    if ref_boot != boot:
        raise SessionLost(f"ref {ref_id} was created before the server restarted")
    return WorkerKey(pool, int(slot), int(incarnation))


def owner_of(ref_ids: list[str], boot: str) -> WorkerKey | None:
    """The single worker owning every ref in ``ref_ids`` (None when there are none).
    Refs owned by two different workers cannot meet in one call: ``BadRequest``."""
    owner: WorkerKey | None = None
    for ref_id in ref_ids:
        key = parse_ref_id(ref_id, boot)
        if owner is None:
            owner = key
        elif key != owner:
            raise BadRequest(
                f"one call cannot use refs held by two workers ({owner} and {key}); "
                "create related objects in one session with affinity='strict'"
            )
    return owner
