"""One ref counter: the server's ``SessionTable`` counts refs per session and per worker,
and a worker handle reads its count from there (it never goes negative); the pool makes
its handles through an injectable factory."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from snakebridge_server.refids import WorkerKey
from snakebridge_server.sessions import SessionTable
from snakebridge_server.supervisor.handle import WorkerHandle, WorkerState
from snakebridge_server.supervisor.pool import Pool, PoolState
from snakebridge_server.supervisor.spawn import WorkerSpec

W0, W1 = WorkerKey("default", 0, 1), WorkerKey("default", 1, 1)
SPEC = WorkerSpec(
    python=sys.executable,
    boot="b00t",
    max_refs=100,
    max_frame=1 << 20,
    max_result=1 << 20,
    start_timeout=5.0,
    cancel_grace=1.0,
)


def _table() -> SessionTable:
    return SessionTable(max_sessions=10, max_refs_per_session=100, max_refs_total=1000, ttl=60)


def test_refs_are_counted_per_worker_across_sessions() -> None:
    table = _table()
    a, b = table.begin_call("a", 0.0), table.begin_call("b", 0.0)
    table.end_call(a, W0, 3, 0.0)
    table.end_call(b, W0, 2, 0.0)
    table.refs_created(b, W1, 4)
    assert (table.refs_on(W0), table.refs_on(W1), table.total_refs) == (5, 4, 9)
    table.refs_released("a", W0, 1)
    assert table.refs_on(W0) == 4
    removed = table.remove("b")
    assert removed is not None and set(removed.refs_by_worker) == {W0, W1}  # to release there
    assert (table.refs_on(W0), table.refs_on(W1), table.total_refs) == (2, 0, 2)
    table.worker_gone(W0)
    assert table.refs_on(W0) == 0 and table.total_refs == 0


def test_a_worker_count_never_goes_negative() -> None:
    # The handle's own counter went negative when the worker reported frees the session
    # table had already forgotten (an expired or removed session, a release counted twice).
    table = _table()
    a = table.begin_call("a", 0.0)
    table.end_call(a, W0, 1, 0.0)
    table.refs_released("a", W0, 5)  # more than it holds
    table.refs_released("gone", W0, 5)  # a session that does not exist
    table.remove("a")
    table.refs_released("a", W0, 1)
    assert table.refs_on(W0) == 0 and table.total_refs == 0
    handle = WorkerHandle(W0, SPEC, lambda h: None, table.refs_on)
    assert handle.refs_held == 0


def test_the_handle_reads_its_refs_from_the_session_table() -> None:
    table = _table()
    handle = WorkerHandle(W0, SPEC, lambda h: None, table.refs_on)
    table.end_call(table.begin_call("a", 0.0), W0, 7, 0.0)
    assert handle.refs_held == 7
    table.worker_gone(W0)
    assert handle.refs_held == 0


class _FakeHandle(WorkerHandle):
    """Starts without a process."""

    async def start(self) -> None:
        self.state = WorkerState.READY


def test_the_pool_makes_workers_with_its_factory() -> None:
    table = _table()
    made: list[WorkerKey] = []

    def factory(
        key: WorkerKey,
        spec: WorkerSpec,
        on_exit: Callable[[WorkerHandle], None],
        refs_of: Callable[[WorkerKey], int],
    ) -> WorkerHandle:
        made.append(key)
        return _FakeHandle(key, spec, on_exit, refs_of)

    async def scenario() -> Pool:
        pool = Pool(
            "default",
            2,
            SPEC,
            max_queued=10,
            on_worker_lost=table.worker_gone,
            refs_of=table.refs_on,
            worker_factory=factory,
        )
        await asyncio.gather(pool._start_slot(0), pool._start_slot(1))
        return pool

    pool = asyncio.run(scenario())
    assert made == [W0, W1] and pool.live == 2 and pool.state == PoolState.SERVING
    table.end_call(table.begin_call("a", 0.0), W1, 2, 0.0)
    assert [w.refs_held for w in pool.workers if w is not None] == [0, 2]
