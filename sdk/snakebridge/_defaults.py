"""Scoped call defaults (``Client.defaults``) and the idempotent-retry schedule. Pure:
no I/O. Runs in the client process.

``CallDefaults`` is what a ``with client.defaults(...)`` block sets for the calls made in
it (a context variable, so each asyncio task and thread sees its own); a field left None
falls through to the enclosing block, then to the ``Client``'s own settings. An argument
given to the call itself always wins.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from .errors import BridgeError, ConnectionFailed, PoolSaturated, PoolUnavailable, WorkerCrashed
from .wire.constants import AFFINITIES

#: Seconds before each retry of an ``idempotent=True`` call (three retries at most); each
#: delay is shortened by a random fraction of up to ``RETRY_JITTER`` so that clients that
#: failed together do not retry together. A retry that could not start before the
#: call's timeout is not made: the last error is raised.
RETRY_BACKOFF: Final = (0.1, 0.2, 0.4)
RETRY_JITTER: Final = 0.5
#: The errors an idempotent call is retried after: the call may not have run (the pool
#: was full or down, the connection dropped) or ran on a worker that died.
RETRYABLE: Final = (WorkerCrashed, PoolSaturated, PoolUnavailable, ConnectionFailed)


@dataclass(frozen=True, slots=True)
class CallDefaults:
    """Defaults for the calls of a ``with client.defaults(...)`` block (None: unset)."""

    timeout: float | None = None
    pool: str | None = None
    session: str | None = None
    affinity: str | None = None

    def over(self, outer: CallDefaults | None) -> CallDefaults:
        """These defaults, with what they leave unset taken from ``outer``."""
        if outer is None:
            return self
        return replace(
            outer,
            **{k: v for k in _FIELDS if (v := getattr(self, k)) is not None},
        )


_FIELDS: Final = ("timeout", "pool", "session", "affinity")


def check_affinity(affinity: str | None) -> str | None:
    if affinity is not None and affinity not in AFFINITIES:
        allowed = ", ".join(repr(a) for a in AFFINITIES[1:])
        raise ValueError(f"affinity must be None, {allowed}; not {affinity!r}")
    return affinity


def retry_delay(
    attempt: int, error: BridgeError, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds to wait before retry ``attempt`` (1, 2, ...) of an idempotent call that
    failed with ``error``; None when it is not to be retried."""
    if not isinstance(error, RETRYABLE) or attempt > len(RETRY_BACKOFF):
        return None
    return RETRY_BACKOFF[attempt - 1] * (1.0 - RETRY_JITTER * rand())
