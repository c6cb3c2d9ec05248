"""The pool's pure choices (supervisor, server process): which worker a call goes to, and
how long a crashed slot waits before its restart."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from snakebridge.errors import SessionLost
from snakebridge_server.refids import WorkerKey
from snakebridge_server.supervisor.pool import choose_worker, restart_delay

W0 = WorkerKey("default", 0, 1)
W1 = WorkerKey("default", 1, 1)


@dataclass
class FakeWorker:
    key: WorkerKey
    alive: bool = True
    in_flight: int = 0


def test_least_loaded_live_worker_is_chosen() -> None:
    a, b = FakeWorker(W0, in_flight=3), FakeWorker(W1, in_flight=1)
    assert choose_worker([a, b], previous=None, strict=False) is b
    b.alive = False
    assert choose_worker([a, b], previous=None, strict=False) is a
    assert choose_worker([None, FakeWorker(W1, alive=False)], previous=None, strict=False) is None


def test_strict_affinity_returns_the_previous_worker_even_when_busier() -> None:
    a, b = FakeWorker(W0, in_flight=9), FakeWorker(W1)
    assert choose_worker([a, b], previous=W0, strict=True) is a
    assert choose_worker([a, b], previous=W0, strict=False) is b


def test_strict_affinity_to_a_dead_worker_is_session_lost() -> None:
    a = FakeWorker(WorkerKey("default", 0, 2))  # slot 0 was replaced
    with pytest.raises(SessionLost):
        choose_worker([a], previous=W0, strict=True)


def test_restart_backoff_grows_with_recent_crashes_and_is_capped() -> None:
    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0
    assert delays == sorted(delays) and delays[-1] == 5.0
