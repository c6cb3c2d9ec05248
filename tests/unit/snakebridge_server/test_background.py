"""``Background``: the owner of an object's background tasks (no processes, no sockets)."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest

from snakebridge_server.background import Background

pytestmark = pytest.mark.anyio


async def test_children_run_and_aclose_cancels_and_waits_for_each() -> None:
    bg = Background("t")
    await bg.start()
    started: list[int] = []
    finished: list[int] = []

    async def forever(n: int) -> None:
        started.append(n)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # cleanup that takes a while: aclose waits for it
            finished.append(n)

    for n in range(3):
        bg.start_soon(forever, n, name=f"forever-{n}")
    await anyio.wait_all_tasks_blocked()
    assert sorted(started) == [0, 1, 2]
    await bg.aclose()
    assert sorted(finished) == [0, 1, 2]
    assert bg.closed


async def test_a_failing_child_is_logged_and_its_siblings_live(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bg = Background("pool p")
    await bg.start()
    sibling_done = asyncio.Event()
    go_on = asyncio.Event()

    async def fail() -> None:
        raise ValueError("boom")

    async def sibling() -> None:
        await go_on.wait()
        sibling_done.set()

    with caplog.at_level(logging.ERROR, logger="snakebridge.background"):
        bg.start_soon(sibling, name="sibling")
        bg.start_soon(fail, name="failing child")
        await anyio.wait_all_tasks_blocked()
        go_on.set()
        await sibling_done.wait()  # not cancelled by its sibling's failure
    [record] = [r for r in caplog.records if r.name == "snakebridge.background"]
    assert record.levelno == logging.ERROR
    assert "failing child" in record.getMessage() and "pool p" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    bg.start_soon(sibling, name="after the failure")  # the group still takes children
    await bg.aclose()


async def test_the_caller_of_start_is_never_cancelled_by_a_failing_child() -> None:
    bg = Background("t")
    await bg.start()

    async def fail() -> None:
        raise RuntimeError("boom")

    bg.start_soon(fail, name="failing")
    await anyio.wait_all_tasks_blocked()
    await asyncio.sleep(0)  # a cancellation aimed at this task would land here
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await bg.aclose()


async def test_a_child_can_be_cancelled_alone_through_its_scope() -> None:
    bg = Background("t")
    await bg.start()
    ended: list[str] = []

    async def wait_then_note(name: str) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            ended.append(name)

    scope = bg.start_soon(wait_then_note, "a", name="a")
    bg.start_soon(wait_then_note, "b", name="b")
    await anyio.wait_all_tasks_blocked()
    scope.cancel()
    await anyio.wait_all_tasks_blocked()
    assert ended == ["a"]
    await bg.aclose()
    assert ended == ["a", "b"]


async def test_start_soon_before_start_runs_once_the_group_is_up() -> None:
    bg = Background("t")
    ran = asyncio.Event()

    async def child() -> None:
        ran.set()

    bg.start_soon(child, name="early")
    await ran.wait()
    await bg.aclose()


async def test_aclose_before_start_and_twice_is_safe() -> None:
    bg = Background("t")
    await bg.aclose()
    await bg.aclose()
    with pytest.raises(RuntimeError, match="already closed"):
        await bg.start()
    started = Background("t2")
    await started.start()
    await asyncio.gather(started.aclose(), started.aclose())


async def test_start_soon_after_close_raises() -> None:
    bg = Background("t")
    await bg.start()
    await bg.aclose()

    async def child() -> None:
        pass

    with pytest.raises(RuntimeError, match="already closed: cannot start late"):
        bg.start_soon(child, name="late")


async def test_cancellation_of_a_child_is_not_logged_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bg = Background("t")
    await bg.start()
    bg.start_soon(anyio.sleep_forever, name="sleeper")
    await anyio.wait_all_tasks_blocked()
    with caplog.at_level(logging.ERROR, logger="snakebridge.background"):
        await bg.aclose()
    assert not [r for r in caplog.records if r.name == "snakebridge.background"]
