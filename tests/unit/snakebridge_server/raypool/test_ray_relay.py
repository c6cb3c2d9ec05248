"""``RayWorkerHandle`` and ``WorkerActor`` without Ray: the handle's relay talks to a
stand-in for the Ray actor handle that runs the real ``WorkerActor`` in this loop (each
``method.remote(...)`` is a task), and the actor starts the real worker runtime as its
child. So the relay, interruption, actor death and the session's refs are tested where
``ray`` is not installed, served in memory to a real ``Client``. The same paths through
real Ray actors: tests/e2e/test_ray_pools.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from grpclib.testing import ChannelFor

from snakebridge import Client
from snakebridge.errors import CallTimeout, SessionLost, WorkerCrashed
from snakebridge_server.bridge import Bridge
from snakebridge_server.config import PoolConfig, ServerConfig
from snakebridge_server.raypool import handle as handle_module
from snakebridge_server.raypool import runtime as runtime_module
from snakebridge_server.raypool.actor import WorkerActor
from snakebridge_server.raypool.handle import RayWorkerHandle
from snakebridge_server.sandbox import SandboxSpec
from snakebridge_server.service import BridgeService
from snakebridge_server.supervisor.spawn import WorkerStartError

pytestmark = pytest.mark.anyio


class ActorDied(Exception):
    """What awaiting a call on a dead actor raises (Ray's RayActorError, here)."""


class _Method:
    def __init__(self, actor: FakeActor, name: str) -> None:
        self.actor, self.name = actor, name

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        return self.actor.submit(getattr(self.actor.impl, self.name), *args)


class FakeActor:
    """A Ray actor handle whose actor is a ``WorkerActor`` in this loop."""

    def __init__(self) -> None:
        self.impl = WorkerActor()
        self.dead = False
        self.pending: set[asyncio.Future[Any]] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        for name in ("start", "send", "recv", "interrupt", "close"):
            setattr(self, name, _Method(self, name))

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        if self.dead:
            answer.set_exception(ActorDied("the actor died"))
            return answer
        task = loop.create_task(fn(*args))
        self.tasks.add(task)
        self.pending.add(answer)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            self.pending.discard(answer)
            if answer.done():
                return
            if t.cancelled() or self.dead:
                answer.set_exception(ActorDied("the actor died"))
            elif t.exception() is not None:
                answer.set_exception(t.exception())  # type: ignore[arg-type]
            else:
                answer.set_result(t.result())

        task.add_done_callback(done)
        return answer

    def die(self) -> None:
        """The actor process is killed: its calls fail, its worker child dies with it."""
        self.dead = True
        for fut in list(self.pending):
            if not fut.done():
                fut.set_exception(ActorDied("the actor died"))
        for task in list(self.tasks):
            task.cancel()
        proc = self.impl._proc
        if proc is not None and proc.returncode is None:
            proc.kill()  # as PR_SET_PDEATHSIG would

    async def reaped(self) -> None:
        proc = self.impl._proc
        if proc is not None:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


class FakeActorClass:
    def __init__(self) -> None:
        self.made: list[FakeActor] = []
        self.options_seen: list[dict[str, Any]] = []

    def options(self, **options: Any) -> FakeActorClass:
        self.options_seen.append(options)
        return self

    def remote(self) -> FakeActor:
        actor = FakeActor()
        self.made.append(actor)
        return actor


def patch_ray(monkeypatch: pytest.MonkeyPatch, actors: FakeActorClass) -> None:
    async def no_ray(address: str, cpus: int) -> None:
        return None

    async def no_disconnect() -> None:
        return None

    monkeypatch.setattr(handle_module, "connect", no_ray)
    monkeypatch.setattr(handle_module, "actor_class", lambda: actors)
    monkeypatch.setattr(runtime_module, "disconnect", no_disconnect)
    monkeypatch.setattr(RayWorkerHandle, "_kill_actor", lambda self: self._actor.die())


@asynccontextmanager
async def ray_pool_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Client, Bridge, FakeActorClass]]:
    actors = FakeActorClass()
    patch_ray(monkeypatch, actors)
    config = ServerConfig(
        pools=(PoolConfig(workers=1, backend="ray", sandbox="none", num_cpus=0.5),),
        cancel_grace=0.5,
    )
    bridge = Bridge(config)
    await bridge.start()
    try:
        async with ChannelFor([BridgeService(bridge)]) as channel:
            client = Client.over_channel(channel, timeout=30)
            try:
                await client.connect()
                yield client, bridge, actors
            finally:
                await client.close()
    finally:
        await bridge.close()
        for actor in actors.made:
            await actor.reaped()


async def test_calls_refs_and_streams_cross_the_relay_to_the_actors_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with ray_pool_in_memory(monkeypatch) as (client, bridge, actors):
        assert await client.call("math", "sqrt", [16]) == 4.0
        counter = await client.call_class("collections", "Counter", ["hello"])
        assert await client.call_method(counter, "most_common", [1]) == [("l", 2)]
        total = 0
        async for item in client.stream("builtins", "range", [20_000]):
            total += item
        assert total == sum(range(20_000))
        (worker,) = bridge.pools["default"].workers
        assert isinstance(worker, RayWorkerHandle)
        proc = actors.made[0].impl._proc
        assert proc is not None and worker.pid == 0 and f"pid {proc.pid})" in worker.node
        assert actors.options_seen[0]["num_cpus"] == 0.5
        assert bridge.snapshot().pools[0].backend == "ray"


async def test_a_deadline_interrupts_the_call_through_the_actor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with ray_pool_in_memory(monkeypatch) as (client, _, actors):
        pid = await client.call("os", "getpid")
        with pytest.raises(CallTimeout):
            await client.call("time", "sleep", [30], timeout=0.5)
        assert await client.call("os", "getpid") == pid  # interrupted, not replaced
        assert len(actors.made) == 1


async def test_a_dead_actor_fails_its_call_and_refs_and_a_new_actor_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with ray_pool_in_memory(monkeypatch) as (client, bridge, actors):
        counter = await client.call_class("collections", "Counter", ["abc"])
        pid = await client.call("os", "getpid")
        call = asyncio.ensure_future(client.call("time", "sleep", [30]))
        while True:  # until the sleep runs in the worker
            if bridge.pools["default"].in_flight:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        actors.made[0].die()
        with pytest.raises(WorkerCrashed):
            await call
        with pytest.raises(SessionLost):
            await client.call_method(counter, "most_common", [1])
        new_pid = await client.call("os", "getpid")
        assert new_pid != pid and len(actors.made) == 2
        assert bridge.pools["default"].restarts
        old = actors.made[0].impl._proc
        assert old is not None and old.pid == pid
        await asyncio.wait_for(old.wait(), 10)  # the worker died with its actor


async def test_releasing_a_session_frees_its_refs_in_the_actors_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with ray_pool_in_memory(monkeypatch) as (client, _, _):
        session = client.session()
        await session.call_class("collections", "Counter", ["abc"])
        await session.call_class("collections", "Counter", ["de"])
        assert await client.release_session(session.id) == 2


async def test_min_sandbox_refuses_a_ray_pool_whose_worker_reached_less_on_its_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node where the sandbox cannot apply (here: the actor is made to start its worker
    at level none) fails the pool's start, naming the level reached."""
    actors = FakeActorClass()
    patch_ray(monkeypatch, actors)
    start = WorkerActor.start

    async def start_unsandboxed(
        self: WorkerActor, tail: list[str], sandbox_json: str, env: list[list[str]]
    ) -> dict[str, Any]:
        return await start(self, tail, SandboxSpec().to_json(), env)

    monkeypatch.setattr(WorkerActor, "start", start_unsandboxed)
    pc = PoolConfig(workers=1, backend="ray", sandbox="standard", min_sandbox="standard")
    bridge = Bridge(ServerConfig(pools=(pc,)))
    try:
        with pytest.raises(WorkerStartError, match="reached sandbox level 'none', below"):
            await bridge.start()
    finally:
        await bridge.close()
        for actor in actors.made:
            await actor.reaped()
    assert len(actors.made) == 1 and actors.made[0].dead  # its actor was killed
