"""A Ray pool end to end: a real ``bridge-server`` whose pool's worker is a Ray actor on a
local Ray runtime the server starts (``--ray-address local``), over a real socket.

One server, hence one Ray runtime, for the module (starting Ray takes seconds); its pool
has one worker, so a test that kills it sees its replacement serve. Skipped, with the
reason, when ray is not installed or cannot start here.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import snakebridge
from snakebridge import Ref, errors

from .conftest import ServerProcess, pid_alive

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
pytest.importorskip("ray", reason="ray is not installed (pip install 'snakebridge[ray]')")


@pytest.fixture(scope="module")
def ray_server() -> Iterator[ServerProcess]:
    srv = ServerProcess(
        "--backend", "ray",
        "--ray-address", "local",
        "--workers", "1",
        "--num-cpus", "1",
        "--helpers", "remote_helpers,ray_probes",
        "--cancel-grace", "0.5",
        "--crash-loop-max", "20",
    )  # fmt: skip
    try:
        srv.start(timeout=120)
    except RuntimeError as exc:
        if "Ray" in str(exc) or "ray" in str(exc):
            pytest.skip(f"a local Ray runtime cannot start here: {str(exc)[-600:]}")
        raise
    yield srv
    tree = descendants(srv.pid)  # Ray's processes, its actors and their workers
    assert tree, "a local Ray runtime runs under the server"
    assert srv.stop(timeout=60) == 0
    survivors = [p for p in tree if pid_alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"processes of the Ray runtime outlived the server: {survivors}"


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(ppid_of(int(entry)), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[1])


async def test_a_ray_pool_serves_calls_and_describe_names_the_backend_and_the_node(
    ray_server: ServerProcess,
) -> None:
    async with snakebridge.Client(ray_server.address) as client:
        assert await client.call("math", "sqrt", [16]) == 4.0
        assert await client.call("remote_helpers", "add", [2, 3]) == 5
        pid = await client.call("remote_helpers", "pid")
        described = await client.describe()
    pool = described.pools[0]
    assert pool.backend == "ray"
    (worker,) = pool.workers
    assert worker.state == "ready" and worker.pid == 0  # not a child of the server
    assert f"pid {pid})" in worker.node and "node " in worker.node
    assert pid not in ray_server.worker_pids and ppid_of(pid) != ray_server.pid
    # What the Ray worker's sandbox actually reached, uid switch included (skipped).
    assert pool.sandbox_level == "standard"
    assert any("uid: not switched" in layer for layer in pool.sandbox_layers)


async def test_ref_methods_and_attributes_run_on_the_actor(ray_server: ServerProcess) -> None:
    async with snakebridge.Client(ray_server.address) as client:
        counter = await client.call_class("collections", "Counter", ["hello"])
        assert isinstance(counter, Ref)
        assert await client.call_method(counter, "most_common", [1]) == [("l", 2)]
        thing = await client.call_class("remote_helpers", "Thing", ["ray"])
        assert await client.get_attr(thing, "name") == "ray"


async def test_a_stream_of_a_hundred_thousand_items_arrives_whole_and_in_order(
    ray_server: ServerProcess,
) -> None:
    async with snakebridge.Client(ray_server.address) as client:
        expected = 0
        async for item in client.stream("builtins", "range", [100_000]):
            assert item == expected
            expected += 1
    assert expected == 100_000


async def test_a_deadline_interrupts_the_call_on_the_actor(ray_server: ServerProcess) -> None:
    async with snakebridge.Client(ray_server.address) as client:
        pid = await client.call("remote_helpers", "pid")
        with pytest.raises(errors.CallTimeout):
            await client.call("remote_helpers", "sleep", [30], timeout=0.5)
        # The same worker serves again: the sleep was interrupted, not waited out.
        with anyio.fail_after(20):  # a hang guard, not a timing assert
            assert await client.call("remote_helpers", "pid") == pid


async def test_an_actor_that_ignores_the_interrupt_is_replaced(ray_server: ServerProcess) -> None:
    async with snakebridge.Client(ray_server.address) as client:
        pid = await client.call("remote_helpers", "pid")
        with pytest.raises(errors.CallTimeout):
            await client.call("remote_helpers", "stubborn_sleep", [60], timeout=0.5)
        with anyio.fail_after(60):
            new_pid = await client.call("remote_helpers", "pid")
    assert new_pid != pid
    assert not pid_alive(pid)
    ray_server.wait_for_log("ignored cancellation")


async def test_an_actor_killed_mid_call_answers_worker_crashed_then_is_replaced(
    ray_server: ServerProcess,
) -> None:
    async with snakebridge.Client(ray_server.address) as client:
        pid = await client.call("remote_helpers", "pid")
        thing = await client.call_class("remote_helpers", "Thing", ["lost"])
        actor = ppid_of(pid)
        assert actor not in (ray_server.pid, 1)

        async def kill_when_running() -> None:
            with anyio.fail_after(30):
                while True:  # until the sleep is running on the actor
                    if (await client.describe()).pools[0].in_flight:
                        break
                    await anyio.sleep(0.05)
            await anyio.sleep(0.2)
            os.kill(actor, signal.SIGKILL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_when_running)
            with pytest.raises(errors.WorkerCrashed):
                await client.call("remote_helpers", "sleep", [30])
        with pytest.raises(errors.SessionLost):
            await client.get_attr(thing, "name")
        with anyio.fail_after(60):
            new_pid = await client.call("remote_helpers", "pid")
        described = await client.describe()
    assert new_pid != pid
    (worker,) = described.pools[0].workers
    assert worker.incarnation > 1 and f"pid {new_pid})" in worker.node
    assert described.pools[0].restarts
    # The worker runtime died with its actor (parent-death signal), mid-sleep.
    with anyio.fail_after(10):
        while True:
            if not pid_alive(pid):
                break
            await anyio.sleep(0.05)


async def test_an_idempotent_call_is_retried_once_after_its_actor_died(
    ray_server: ServerProcess, tmp_path: Path
) -> None:
    marker = str(tmp_path / "crashed-once")
    async with snakebridge.Client(ray_server.address) as client:
        with pytest.raises(errors.WorkerCrashed):
            await client.call("remote_helpers", "crash_once", [marker])
        os.unlink(marker)
        with anyio.fail_after(60):
            result = await client.call("remote_helpers", "crash_once", [marker], idempotent=True)
    assert result == "ok"
    assert os.path.exists(marker)  # the first attempt ran, and crashed, on an actor


async def test_releasing_a_session_frees_its_refs_on_its_actor(ray_server: ServerProcess) -> None:
    async with snakebridge.Client(ray_server.address) as client:
        session = client.session()
        first = await session.call_class("remote_helpers", "Thing", ["one"])
        second = await session.call_class("collections", "Counter", ["abc"])
        assert (await client.describe()).pools[0].workers[0].refs == 2
        # The count is the worker's own answer: it freed both objects.
        assert await client.release_session(session.id) == 2
        assert (await client.describe()).pools[0].workers[0].refs == 0
        for ref in (first, second):
            with pytest.raises(errors.RefNotFound):
                await client.get_attr(Ref(ref.__snakebridge_ref__(), client), "name")


async def test_the_sandboxed_worker_cannot_reach_ray_or_its_actor(
    ray_server: ServerProcess,
) -> None:
    """The Ray cluster is outside the sandbox: the worker reads none of Ray's session
    files, inherits none of its variables, cannot signal its actor nor open a socket
    (here: to the bridge's own listening port)."""
    session = Path("/tmp/ray/session_latest")
    ray_files = sorted(p for p in session.rglob("*") if p.is_file()) if session.exists() else []
    assert ray_files, "the server's local Ray runtime has no session files"
    host, port = ray_server.address.rsplit(":", 1)
    async with snakebridge.Client(ray_server.address) as client:
        for path in ray_files[:3]:
            assert (await client.call_helper("ray_read", [str(path)])).startswith(
                "PermissionError"
            ), path
        names = await client.call_helper("ray_env_names")
        assert not [n for n in names if n.startswith("RAY")], names
        assert (await client.call_helper("ray_signal_parent")).startswith("PermissionError")
        assert (await client.call_helper("ray_connect", [host, int(port)])).startswith(
            "PermissionError"
        )
        # The probes work: the worker reads what it may (its own helper module).
        probes = Path(__file__).with_name("ray_probes.py")
        assert (await client.call_helper("ray_read", [str(probes)])).startswith("read ")
