"""The client's release of refs it garbage-collects (``snakebridge._gc_release``), with a
fake release function: the finalizer only queues, the drainer batches per session, one
handle per ref id, a re-decoded id is not released, ``flush`` and ``close``."""

from __future__ import annotations

import asyncio
import gc

import pytest

from snakebridge import Ref
from snakebridge._gc_release import GcReleaser
from snakebridge.wire.codec import RefPayload

pytestmark = pytest.mark.anyio


def _ref(ref_id: str, session: str = "s") -> Ref:
    return Ref(RefPayload(False, ref_id, session, "default", "T"))


class _Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, list[str]]] = []
        self.sent = asyncio.Event()

    async def release(self, session_id: str, ids: list[str]) -> int:
        self.requests.append((session_id, sorted(ids)))
        self.sent.set()
        return len(ids)


async def test_collected_refs_are_released_together_per_session() -> None:
    server = _Server()
    releaser = GcReleaser(server.release)
    refs = [releaser.adopt(_ref(f"r{i}", "a" if i < 3 else "b")) for i in range(5)]
    kept = releaser.adopt(_ref("k"))
    del refs
    gc.collect()
    assert server.requests == []  # the finalizers did no I/O
    await asyncio.wait_for(server.sent.wait(), 5)
    await asyncio.sleep(0)
    assert sorted(server.requests) == [("a", ["r0", "r1", "r2"]), ("b", ["r3", "r4"])]
    assert releaser.released == 5 and kept.id == "k"
    await releaser.close()


async def test_one_handle_per_id_and_a_released_ref_is_not_released_again() -> None:
    server = _Server()
    releaser = GcReleaser(server.release)
    first = releaser.adopt(_ref("x"))
    assert releaser.adopt(_ref("x")) is first
    first._mark_released()  # released explicitly: the finalizer is detached
    del first
    gc.collect()
    assert not await releaser.flush() and server.requests == []
    await releaser.close()


async def test_an_id_decoded_again_before_its_release_is_kept() -> None:
    server = _Server()
    releaser = GcReleaser(server.release)
    releaser.adopt(_ref("y"))  # dropped at once
    gc.collect()
    again = releaser.adopt(_ref("y"))  # the server handed the same object out again
    assert not await releaser.flush()
    assert server.requests == [] and again.id == "y"
    await releaser.close()


async def test_flush_releases_at_once() -> None:
    server = _Server()
    releaser = GcReleaser(server.release)
    releaser.adopt(_ref("z"))
    gc.collect()
    assert await releaser.flush()
    assert server.requests == [("s", ["z"])]
    await releaser.close()


def test_outside_an_event_loop_refs_are_not_tracked() -> None:
    releaser = GcReleaser(_Server().release)
    ref = _ref("w")
    assert releaser.adopt(ref) is ref and ref._finalizer is None
