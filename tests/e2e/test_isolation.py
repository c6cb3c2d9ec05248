"""Isolation between clients (issue #12): hostile code at sandbox level ``standard``
against another client of the same pool, under each isolation level.

Each attack is shown to work under ``shared`` (one worker everyone shares, with the
defences between calls off: today's behaviour) and to fail under ``tenant`` and
``session``. The attacker (tenant ``mallory``) and the victim (tenant ``alice``) hold
different tokens of one token file. The hostile code is in ``isolation_helpers.py``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakebridge
from snakebridge import errors
from snakebridge.wire.codec import RefPayload

from .conftest import ServerProcess, run_bridge_server
from .test_tls import Pki

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

LEVELS = ["shared", "tenant", "session"]
ALICE = "alice-0123456789abcdef"
MALLORY = "mallory-0123456789abcdef"
H = "isolation_helpers"


def _tokens(tmp_path: Path) -> str:
    path = tmp_path / "tokens"
    path.write_text(f"# tenants\nalice {ALICE}\nmallory {MALLORY}\n")
    os.chmod(path, 0o600)
    return str(path)


def _server(make_server: Any, tmp_path: Path, level: str, *extra: str) -> ServerProcess:
    args = ["--token-file", _tokens(tmp_path), "--helpers", f"remote_helpers,{H}"]
    args += ["--isolation", level]
    if level == "shared":
        # Today's behaviour: one worker everyone shares, no checks between calls.
        args += ["--workers", "1", "--leftovers", "keep", "--heartbeat-timeout", "0"]
    else:
        args += ["--workers", "3", "--spare-workers", "1"]
    server: ServerProcess = make_server(*args, *extra)
    return server


@asynccontextmanager
async def _pair(srv: ServerProcess) -> AsyncIterator[tuple[snakebridge.Client, snakebridge.Client]]:
    async with (
        snakebridge.Client(srv.address, token=ALICE) as victim,
        snakebridge.Client(srv.address, token=MALLORY) as attacker,
    ):
        yield victim, attacker


@pytest.mark.parametrize("level", LEVELS)
async def test_spying_on_another_clients_arguments(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    srv = _server(make_server, tmp_path, level)
    async with _pair(srv) as (victim, attacker):
        await attacker.call(H, "install_spy")
        await victim.call("json", "dumps", [{"card": "4111-1111"}])
        seen = await attacker.call(H, "seen")
    assert any("4111-1111" in s for s in seen) == (level == "shared"), seen


@pytest.mark.parametrize("level", LEVELS)
async def test_rewriting_math_sqrt_for_another_client(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    srv = _server(make_server, tmp_path, level)
    async with _pair(srv) as (victim, attacker):
        await attacker.call(H, "rewrite_sqrt")
        assert await victim.call("math", "sqrt", [16]) == (42.0 if level == "shared" else 4.0)


@pytest.mark.parametrize("level", LEVELS)
async def test_dumping_the_objects_of_other_sessions(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    srv = _server(make_server, tmp_path, level)
    async with _pair(srv) as (victim, attacker):
        thing = await victim.call("remote_helpers", "Thing", ["victim-secret"])
        assert isinstance(thing, snakebridge.Ref)
        dumped = await attacker.call(H, "dump_objects")
    assert any("victim-secret" in d for d in dumped) == (level == "shared"), dumped


@pytest.mark.parametrize("level", LEVELS)
async def test_module_poisoning_surviving_the_attackers_disconnect(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    srv = _server(make_server, tmp_path, level)
    async with snakebridge.Client(srv.address, token=MALLORY) as attacker:
        await attacker.call(H, "poison_capwords")
    async with snakebridge.Client(srv.address, token=ALICE) as victim:
        got = await victim.call("string", "capwords", ["a b"])
    assert got == ("poisoned" if level == "shared" else "A B")
    # The attacker's own next connection: its poisoned worker was discarded with its
    # (tenant's last) session.
    async with snakebridge.Client(srv.address, token=MALLORY) as attacker:
        again = await attacker.call("string", "capwords", ["a b"])
    assert again == ("poisoned" if level == "shared" else "A B")


@pytest.mark.parametrize("level", LEVELS)
async def test_reading_another_sessions_ref_by_its_id(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    srv = _server(make_server, tmp_path, level)
    async with _pair(srv) as (victim, attacker):
        thing = await victim.call("remote_helpers", "Thing", ["victim-secret"])
        stolen = await attacker.call(H, "read_ref", [thing.id])
        assert (stolen is not None and "victim-secret" in stolen) == (level == "shared")
        # Through the API, a forged ref fails at every level: in the attacker's own
        # session (not its ref), and in the victim's session (not its session).
        own = snakebridge.Ref(RefPayload(False, thing.id, attacker.current_session(), "", "Thing"))
        with pytest.raises(errors.RefNotFound):
            await attacker.get_attr(own, "name")
        theirs = snakebridge.Ref(RefPayload(False, thing.id, thing.session_id, "", "Thing"))
        with pytest.raises(errors.BadRequest, match="another client"):
            await attacker.get_attr(theirs, "name")
        # Nor can it release the victim's session.
        assert await attacker.release_session(thing.session_id) == 0
        assert await victim.get_attr(thing, "name") == "victim-secret"


@pytest.mark.parametrize("level", LEVELS)
async def test_a_crash_armed_by_one_client_kills_another_clients_call(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    srv = _server(make_server, tmp_path, level)
    async with _pair(srv) as (victim, attacker):
        await attacker.call(H, "crash_later", [0.5])
        with anyio.fail_after(20):
            if level == "shared":
                with pytest.raises(errors.WorkerCrashed):
                    await victim.call("remote_helpers", "sleep", [2.0])
            else:
                assert await victim.call("remote_helpers", "sleep", [2.0]) == 2.0


@pytest.mark.parametrize("level", LEVELS)
async def test_a_thread_left_holding_the_gil_wedges_the_next_client(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    srv = _server(make_server, tmp_path, level)
    async with _pair(srv) as (victim, attacker):
        await attacker.call(H, "wedge")
        await anyio.sleep(0.5)  # the thread holds the GIL now
        with anyio.fail_after(30):
            if level == "shared":
                with pytest.raises(errors.CallTimeout):
                    await victim.call("math", "sqrt", [4], timeout=3)
            else:
                assert await victim.call("math", "sqrt", [4], timeout=3) == 2.0


@pytest.mark.parametrize("level", LEVELS)
async def test_file_descriptors_held_by_one_client_starve_the_next(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    srv = _server(make_server, tmp_path, level, "--max-open-files", "64")
    async with _pair(srv) as (victim, attacker):
        assert await attacker.call(H, "hog_fds", [2]) > 20
        if level == "shared":
            with pytest.raises(errors.RemoteError, match="Too many open files"):
                await victim.call(H, "open_files", [10])
        else:
            assert await victim.call(H, "open_files", [10]) == 10


# -- the defences that hold under shared too --------------------------------------------


async def test_shared_recycles_a_worker_a_call_left_a_thread_or_fds_in(
    make_server: Any, tmp_path: Path
) -> None:
    srv = make_server(
        "--token-file", _tokens(tmp_path), "--helpers", f"remote_helpers,{H}",
        "--workers", "1", "--max-open-files", "64",
    )  # fmt: skip
    async with _pair(srv) as (victim, attacker):
        await attacker.call(H, "wedge")
        await anyio.sleep(0.5)
        with anyio.fail_after(30):
            assert await victim.call("math", "sqrt", [4], timeout=10) == 2.0
        await attacker.call(H, "hog_fds", [2])
        assert await victim.call(H, "open_files", [10]) == 10
        restarts = (await victim.describe()).pools[0].restarts
    assert restarts.get("recycle_leftovers") == 2, restarts
    srv.wait_for_log("thread\\(s\\) left running")
    srv.wait_for_log("file descriptor\\(s\\) left open")


async def test_a_wedged_idle_worker_is_pinged_and_replaced_not_waited_on(
    make_server: Any, tmp_path: Path
) -> None:
    srv = make_server(
        "--token-file", _tokens(tmp_path), "--helpers", f"remote_helpers,{H}",
        "--workers", "1", "--leftovers", "keep", "--heartbeat-timeout", "0.5",
    )  # fmt: skip
    async with _pair(srv) as (victim, attacker):
        await attacker.call(H, "wedge")
        await anyio.sleep(1.5)  # idle for longer than a second: the next call pings first
        with anyio.fail_after(30):
            assert await victim.call("math", "sqrt", [4], timeout=10) == 2.0
        restarts = (await victim.describe()).pools[0].restarts
    assert restarts.get("killed") == 1, restarts
    srv.wait_for_log("did not answer a ping")


@pytest.mark.parametrize("level", LEVELS)
async def test_a_session_that_keeps_crashing_is_refused_while_others_are_served(
    make_server: Any, tmp_path: Path, level: str
) -> None:
    # Three crashes from one session, with a crash-loop limit of two: the pool counts the
    # session once and keeps serving; the session is refused after its third.
    srv = _server(
        make_server, tmp_path, level, "--crash-loop-max", "2", "--session-crash-limit", "3"
    )
    async with _pair(srv) as (victim, attacker):
        async with attacker.session() as storm:
            for _ in range(3):
                with anyio.fail_after(20), pytest.raises(errors.WorkerCrashed):
                    await storm.call("remote_helpers", "die")
            with pytest.raises(errors.LimitExceeded, match="session_crash_limit=3"):
                await storm.call("math", "sqrt", [4])
        with anyio.fail_after(20):
            assert await victim.call("math", "sqrt", [9]) == 3.0
            assert await attacker.call("math", "sqrt", [9]) == 3.0  # its other sessions too
        pool = (await victim.describe()).pools[0]
    assert pool.state == "serving"
    assert pool.restarts.get("crash") == 3, pool.restarts


# -- warm spares, the pool maximum, Describe -------------------------------------------


async def test_session_workers_come_from_spares_up_to_the_maximum(
    make_server: Any, tmp_path: Path
) -> None:
    srv = make_server(
        "--token-file", _tokens(tmp_path), "--helpers", "remote_helpers",
        "--isolation", "session", "--workers", "2", "--spare-workers", "1",
        "--max-waiting", "0",
    )  # fmt: skip
    async with snakebridge.Client(srv.address, token=ALICE) as client:
        pool = (await client.describe()).pools[0]
        assert (pool.isolation, pool.spare_workers) == ("session", 1)
        a, b, c = client.session(), client.session(), client.session()
        pid_a = await a.call("remote_helpers", "pid")
        pid_b = await b.call("remote_helpers", "pid")
        assert pid_a != pid_b
        assert await a.call("remote_helpers", "pid") == pid_a  # its own, every call
        with pytest.raises(errors.PoolSaturated, match="max_waiting"):
            await c.call("remote_helpers", "pid")
        await a.release()  # its worker is discarded; the slot frees up
        with anyio.fail_after(30):
            pid_c = await c.call("remote_helpers", "pid")
        assert pid_c not in (pid_a, pid_b)
        pool = (await client.describe()).pools[0]
    assert pool.restarts.get("session_released") == 1, pool.restarts


async def test_describe_shows_pids_only_to_authenticated_callers(
    make_server: Any, tmp_path: Path
) -> None:
    anonymous = make_server("--workers", "1", env={"SNAKEBRIDGE_DESCRIBE_PIDS": "0"})
    shown = make_server("--workers", "1", "--describe-pids", env={"SNAKEBRIDGE_DESCRIBE_PIDS": "0"})
    authenticated = make_server("--workers", "1", "--token-file", _tokens(tmp_path))
    for srv, token, visible in (
        (anonymous, None, False),
        (shown, None, True),
        (authenticated, ALICE, True),
    ):
        async with snakebridge.Client(srv.address, token=token) as client:
            workers = (await client.describe()).pools[0].workers
        assert all((w.pid != 0) == visible for w in workers), (srv.args, workers)


async def test_mtls_client_certificates_are_tenants_by_common_name(
    make_server: Any, tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    ca = pki.ca
    contexts = {}
    for name in ("billing", "analytics"):
        ctx = pki.client_context()
        ca.issue_cert(f"{name}@example.test", common_name=name).configure_cert(ctx)
        contexts[name] = ctx
    srv = make_server(
        *pki.server_args(mtls=True), "--isolation", "tenant", "--workers", "3",
        "--helpers", "remote_helpers",
    )  # fmt: skip
    async with (
        snakebridge.Client(srv.address, ssl=contexts["billing"]) as billing,
        snakebridge.Client(srv.address, ssl=contexts["analytics"]) as analytics,
    ):
        pid_b = await billing.call("remote_helpers", "pid")
        pid_a = await analytics.call("remote_helpers", "pid")
        assert pid_a != pid_b
        assert await billing.call("remote_helpers", "pid", session="other") == pid_b
        with pytest.raises(errors.BadRequest, match="another client"):
            await analytics.call("math", "sqrt", [4], session=billing.current_session())
        workers = (await billing.describe()).pools[0].workers
    assert all(w.pid for w in workers)  # mTLS callers are authenticated: pids shown


def test_check_reports_each_pools_isolation() -> None:
    done = run_bridge_server(
        "check", "--workers", "2", "--isolation", "session", "--spare-workers", "1"
    )
    assert done.returncode == 0, done.stderr
    assert "isolation session (a worker serves one session; 1 spare(s) kept started, " in (
        done.stdout + done.stderr
    )
