"""Scoped call defaults (``client.defaults()``) and the idempotent-retry schedule
(``snakebridge._defaults``), issue #16 E. No server: requests are built and inspected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from snakebridge import Client
from snakebridge._client import Invocation
from snakebridge._defaults import RETRY_BACKOFF, CallDefaults, retry_delay
from snakebridge.errors import BadRequest, CallTimeout, ConnectionFailed, WorkerCrashed
from snakebridge.wire.constants import KIND_FUNCTION

pytestmark = pytest.mark.anyio


def _request(client: Client, **fields: Any) -> Any:
    return client._request(
        Invocation(kind=KIND_FUNCTION, module="m", name="f", session_id=client._session_id(None),
                   args=[], kwargs=None, **fields)
    )  # fmt: skip


def test_defaults_apply_inside_the_block_and_nest() -> None:
    client = Client("127.0.0.1:1", timeout=9.0)
    outside = _request(client)
    assert (outside.timeout, outside.pool, outside.affinity) == (9.0, "", "")
    with client.defaults(timeout=2.0, pool="gpu", session="job-1", affinity="hint"):
        inside = _request(client)
        assert (inside.timeout, inside.pool, inside.affinity) == (2.0, "gpu", "hint")
        assert inside.session_id == "job-1"
        with client.defaults(pool="cpu"):
            nested = _request(client)
            assert (nested.timeout, nested.pool, nested.affinity) == (2.0, "cpu", "hint")
        # An argument of the call wins over any block.
        explicit = _request(client, timeout=5.0, pool="io", affinity="strict")
        assert (explicit.timeout, explicit.pool, explicit.affinity) == (5.0, "io", "strict")
    after = _request(client)
    assert (after.timeout, after.pool, after.session_id) == (9.0, "", client.current_session())
    with pytest.raises(ValueError, match="affinity"), client.defaults(affinity="sticky"):
        pass


async def test_defaults_are_per_task() -> None:
    client = Client("127.0.0.1:1")
    seen: dict[str, str] = {}

    async def one(pool: str) -> None:
        with client.defaults(pool=pool):
            await asyncio.sleep(0)
            seen[pool] = _request(client).pool

    await asyncio.gather(one("a"), one("b"))
    assert seen == {"a": "a", "b": "b"}
    assert _request(client).pool == ""


def test_defaults_fill_only_what_is_unset() -> None:
    outer = CallDefaults(timeout=1.0, pool="p")
    assert CallDefaults(pool="q").over(outer) == CallDefaults(timeout=1.0, pool="q")
    assert CallDefaults().over(None) == CallDefaults()


def test_the_retry_schedule_is_bounded_and_jittered() -> None:
    crash = WorkerCrashed("x")
    assert [retry_delay(n, crash, lambda: 0.0) for n in (1, 2, 3)] == list(RETRY_BACKOFF)
    assert retry_delay(1, crash, lambda: 1.0) == RETRY_BACKOFF[0] * 0.5
    assert retry_delay(len(RETRY_BACKOFF) + 1, crash) is None
    assert retry_delay(1, ConnectionFailed("x"), lambda: 0.0) == RETRY_BACKOFF[0]
    assert retry_delay(1, CallTimeout("x")) is None  # the deadline passed: never again
    assert retry_delay(1, BadRequest("x")) is None
