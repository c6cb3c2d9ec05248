"""The worker output pump: every line logged with the worker's id, excess lines counted
and reported, the last lines kept for start-failure reports, ``done`` set at end of file."""

from __future__ import annotations

import asyncio
import logging

import pytest

from snakebridge_server.refids import WorkerKey
from snakebridge_server.supervisor.output import OutputPump

pytestmark = pytest.mark.anyio

KEY = WorkerKey("default", 0, 1)


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_each_line_is_logged_with_the_worker_and_the_last_lines_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pump = OutputPump(KEY, rate=0)
    caplog.set_level(logging.DEBUG, logger="snakebridge.worker")
    await pump.run(_reader(b"one\n\ntwo\nthree\nno newline at the end"))
    assert pump.done.is_set()
    texts = [r.getMessage() for r in caplog.records]
    assert any(t.endswith("] one") for t in texts)
    assert any(t.endswith("] no newline at the end") for t in texts)
    assert all(getattr(r, "worker", None) == str(KEY) for r in caplog.records)
    assert pump.last_lines() == ["two", "three", "no newline at the end"]


async def test_lines_over_the_rate_are_counted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pump = OutputPump(KEY, rate=5)
    caplog.set_level(logging.DEBUG, logger="snakebridge.worker")
    await pump.run(_reader(b"".join(b"line %d\n" % i for i in range(50))))
    logged = [r for r in caplog.records if "] line " in r.getMessage()]
    assert len(logged) == 5
    reports = [r.getMessage() for r in caplog.records if "not logged" in r.getMessage()]
    assert reports == [f"[worker {KEY}] 45 output line(s) not logged: over 5 lines/s"]


async def test_done_is_set_even_when_the_pump_is_cancelled() -> None:
    pump = OutputPump(KEY, rate=0)
    reader = asyncio.StreamReader()  # never fed: the pump waits
    task = asyncio.get_running_loop().create_task(pump.run(reader))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pump.done.is_set()
