"""Bounds on sizes and refs, and regressions found in review: each test names the failure
it guards against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import errors

from .conftest import ServerProcess, run_bridge_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_oversized_arguments_are_refused_before_reaching_a_worker(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--max-message-size", "10000")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call("remote_helpers", "pid")
        with pytest.raises(errors.LimitExceeded, match="arguments are"):
            await client.call("remote_helpers", "echo", [b"x" * 20000])
        assert await client.call("remote_helpers", "pid") == pid  # the worker was never involved


async def test_oversized_result_is_an_error_and_the_worker_survives(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-message-size", "10000")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call("remote_helpers", "pid")
        thing = await client.call_class("remote_helpers", "Thing", [])
        with pytest.raises(errors.LimitExceeded, match="result is"):
            await client.call("remote_helpers", "big_bytes", [20000])
        assert await client.call("remote_helpers", "pid") == pid
        assert await client.get_attr(thing, "name") == "thing"  # its refs were kept


async def test_a_call_over_its_ref_budget_leaves_no_refs_behind(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-refs", "5")
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(errors.LimitExceeded):
            await client.call("remote_helpers", "make_many", [10])
        # Had the failed call leaked its refs, the worker would be full now.
        async with client.session() as s:
            things = await s.call("remote_helpers", "make_many", [5])
        assert len(things) == 5 and all(isinstance(t, snakebridge.Ref) for t in things)


async def test_strict_affinity_reports_a_lost_worker_once(make_server: Any) -> None:
    srv = make_server("--workers", "2")
    async with snakebridge.Client(srv.address) as client:
        first = await client.call("remote_helpers", "pid", affinity="strict")
        with pytest.raises(errors.WorkerCrashed):
            await client.call("remote_helpers", "die", affinity="strict")
        with pytest.raises(errors.SessionLost):
            await client.call("remote_helpers", "pid", affinity="strict")
        again = await client.call("remote_helpers", "pid", affinity="strict")
        assert again != first
        assert await client.call("remote_helpers", "pid", affinity="strict") == again


@pytest.mark.parametrize("kind", ["cancelled", "generator_exit"])
async def test_base_exceptions_from_user_code_do_not_kill_the_worker(
    server: ServerProcess, kind: str
) -> None:
    async with snakebridge.Client(server.address) as client:
        pids = {w.pid for w in (await client.describe()).pools[0].workers}
        with pytest.raises(errors.RemoteError) as info:
            await client.call("remote_helpers", "raise_base", [kind])
        assert info.value.type_name.endswith(("CancelledError", "GeneratorExit"))
        assert {w.pid for w in (await client.describe()).pools[0].workers} == pids


async def test_non_positive_timeout_is_rejected_in_the_sdk(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(ValueError, match="timeout"):
            await client.call("math", "sqrt", [4], timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        snakebridge.Client(server.address, timeout=-1)


def test_uds_path_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "important.txt"
    victim.write_text("keep me")
    done = run_bridge_server("--workers", "1", "--uds", str(victim))
    assert done.returncode == 1
    assert "not a socket" in done.stderr
    assert victim.read_text() == "keep me"


def test_worker_that_cannot_start_fails_the_server_with_one_clear_line() -> None:
    done = run_bridge_server("--workers", "1", "--helpers", "no_such_helpers_module")
    assert done.returncode == 1
    assert "failed to start" in done.stderr
    tail = done.stderr.split("failed to start", 1)[1]
    assert "Traceback" not in tail
    assert "No module named 'no_such_helpers_module'" in tail  # the cause, in the same line


async def test_huge_exception_message_is_clipped_and_the_server_stays_responsive(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        with anyio.fail_after(10):
            with pytest.raises(errors.RemoteError) as info:
                await client.call("remote_helpers", "raise_long", [2_000_000])
        assert isinstance(info.value, ValueError)
        assert 8 * 1024 <= len(info.value.message) < 9 * 1024
        assert "characters cut" in info.value.message
        with anyio.fail_after(5):
            assert await client.call("math", "sqrt", [4]) == 2.0


async def test_oversized_names_are_bad_requests_not_worker_crashes(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        pids = {w.pid for w in (await client.describe()).pools[0].workers}
        with pytest.raises(errors.BadRequest, match="1024 characters"):
            await client.call("m" * 2_000_000, "f")
        with pytest.raises(errors.BadRequest, match="ids are limited"):
            await client.call("math", "sqrt", [1], session="s" * 1000)
        assert {w.pid for w in (await client.describe()).pools[0].workers} == pids


async def test_get_attr_honours_the_clients_default_timeout(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address, timeout=0.3) as client:
        slow = await client.call_class("remote_helpers", "SlowProperty", [])
        with anyio.fail_after(5), pytest.raises(errors.CallTimeout):
            await client.get_attr(slow, "value")
        with pytest.raises(ValueError, match="timeout"):
            await client.get_attr(slow, "value", timeout=0)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_oversized_request_is_refused_from_its_length_prefix_without_buffering(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--max-message-size", "1000000")
    async with snakebridge.Client(srv.address) as client:
        await client.call("math", "sqrt", [4])  # warm: connection and handler paths
        before = _rss_mib(srv.pid)
        with anyio.fail_after(20), pytest.raises(errors.LimitExceeded, match="request message"):
            await client.call("builtins", "len", [b"x" * (128 * 2**20)])
        grown = _rss_mib(srv.pid) - before
        print(f"server RSS grew {grown:.1f} MiB while refusing a 128 MiB request")
        assert grown < 32, grown  # buffering it would have cost 128+ MiB
        assert await client.call("math", "sqrt", [9]) == 3.0  # the connection still works


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


async def test_arguments_that_would_decode_64_times_their_size_are_refused_in_the_worker(
    make_server: Any,
) -> None:
    """4 MiB of empty lists decoded into ~270 MiB in the worker (15 MiB into 1.1 GiB)."""
    srv = make_server("--workers", "1", "--helpers", "remote_helpers")
    async with snakebridge.Client(srv.address) as client:
        pid = await client.call("remote_helpers", "pid")
        before = _peak_rss_kib(pid)
        with pytest.raises(errors.SerializationError, match="decode limit"):
            await client.call("remote_helpers", "echo", [[[]] * (4 * 1024 * 1024)])
        # Refused at the budget (32 MiB + 16 bytes per encoded byte = 96 MiB counted).
        assert (_peak_rss_kib(pid) - before) // 1024 < 150
        assert await client.call("remote_helpers", "pid") == pid


async def test_colliding_map_keys_in_arguments_are_refused_in_the_worker(
    server: ServerProcess,
) -> None:
    """20,000 big-int keys equal modulo 2**61-1: 1.2 s of quadratic inserts per call."""
    keys = [2**64 + 12345 + i * (2**61 - 1) for i in range(20_000)]
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.SerializationError, match="share one hash"):
            await client.call("remote_helpers", "echo", [dict.fromkeys(keys)])
        assert await client.call("remote_helpers", "add", [1, 2]) == 3


async def test_client_bounds_the_memory_a_result_decodes_into(server: ServerProcess) -> None:
    value: list[list[int]] = [[] for _ in range(100_000)]  # ~100 KB on the wire, ~6.4 MB decoded
    async with snakebridge.Client(server.address, max_decoded_size=1024 * 1024) as client:
        with pytest.raises(errors.SerializationError, match="max_decoded_size 1048576"):
            await client.call("remote_helpers", "echo", [value])
        assert await client.call("remote_helpers", "echo", [[1, 2]]) == [1, 2]
    async with snakebridge.Client(server.address) as client:
        assert await client.call("remote_helpers", "echo", [value]) == value
    with pytest.raises(ValueError, match="max_decoded_size"):
        snakebridge.Client(server.address, max_decoded_size=0)
