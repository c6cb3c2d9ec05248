"""Ref ids and worker identities. Pure.

A ref id is ``<boot>.<pool>.<slot>.<incarnation>.<token>``:

- ``boot``: random per server start, so ids from a previous server are never reused;
- ``pool``/``slot``: which worker position minted it;
- ``incarnation``: which process in that position (bumped on every replacement), so a ref
  from a restarted worker is recognised as lost instead of being looked up in a fresh table;
- ``token``: 32 hex characters (128 bits) from ``secrets``, drawn per ref. A ref id is a
  capability: nobody can reach another session's object by guessing or counting ids, and
  the worker also checks every use against the session that owns the ref.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Final

from snakebridge.errors import BadRequest, SessionLost

POOL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REF_TOKEN_BYTES: Final = 16  # 128 bits of randomness per ref


def new_ref_token() -> str:
    """The random last part of a fresh ref id."""
    return secrets.token_hex(REF_TOKEN_BYTES)


# ASCII digits without leading zeros only: str.isdigit() accepts "²" (which int() then
# rejects: an escaped ValueError), and int() accepts Arabic-Indic digits, " 7" and "07",
# so one ref could be spelled several ways, and a malformed one passed for a ref of a
# dead worker. The token is exactly the lowercase hex new_ref_token() makes.
_NUMBER: Final = r"(?:0|[1-9][0-9]{0,18})"
_REF_ID_RE: Final = re.compile(
    rf"([0-9A-Za-z]{{1,32}})\.([A-Za-z0-9_-]{{1,64}})\.({_NUMBER})\.({_NUMBER})"
    rf"\.[0-9a-f]{{{2 * REF_TOKEN_BYTES}}}",
    re.ASCII,
)


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


def check_ref_id(ref_id: str) -> re.Match[str]:
    """The parts of ``ref_id``; ``BadRequest`` if it is not a ref id at all. The one syntax
    check: the server applies it to ``target_ref`` and ``arg_refs``, the worker to the refs
    it finds inside ``args`` (which the server never decodes), before either asks whose
    ref it is."""
    match = _REF_ID_RE.fullmatch(ref_id)
    if match is None:
        raise BadRequest(f"malformed ref id {ref_id[:300]!r}")
    return match


def parse_ref_id(ref_id: str, boot: str) -> WorkerKey:
    """The worker that owns ``ref_id``. ``SessionLost`` if it was minted by another server
    start; ``BadRequest`` if it is not a ref id at all."""
    ref_boot, pool, slot, incarnation = check_ref_id(ref_id).groups()
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
