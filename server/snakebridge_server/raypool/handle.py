"""``RayWorkerHandle``: a worker of a Ray pool, seen from the server.

Runs in the server process. The handle is a ``WorkerHandle`` whose far end of the
socketpair is a relay task instead of a child process: request bytes the handle writes are
sent to the actor (``WorkerActor.send``, one batch at a time, in order), reply bytes the
actor's worker writes come back through a long poll (``WorkerActor.recv``) and are written
into the socketpair. So the reply router, frame checks, lie detection, deadlines (the kill
timer), leftover replies and death handling are ``WorkerHandle``'s own code; only start,
interrupt and killing differ. The relay ends when the worker exits or the actor dies
(``RayActorError``): the handle then fails as for a process death (``WorkerCrashed`` for
the running call, ``NeverStarted`` for those queued, ``SessionLost`` for its sessions'
refs) and the pool starts a new actor.

Not available for a Ray worker: the CPU-budget backstop and RSS recycling, which read
``/proc`` of a local pid (the worker still enforces ``max_call_cpu`` itself), and the
worker's output in the server's log (it goes to Ray's log files of the actor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snakebridge.errors import BridgeError

from ..refids import WorkerKey
from ..sandbox.policy import level_at_least
from ..supervisor.handle import WorkerHandle, WorkerState, _Channel
from ..supervisor.spawn import WorkerSpec, WorkerStartError, worker_argv
from .actor import RELAY_CHUNK
from .runtime import actor_class, connect

log = logging.getLogger("snakebridge.worker")


@dataclass(frozen=True, slots=True)
class RaySpec:
    """Where a Ray pool's actors run and what each reserves (``runtime.actor_options``)."""

    address: str = "local"
    local_cpus: int = 1
    options: dict[str, Any] = field(default_factory=dict)


def worker_tail(spec: WorkerSpec, key: WorkerKey) -> list[str]:
    """The worker runtime's arguments after its fds, without ``--sandbox`` (the actor adds
    its own spec: scratch dir and uid are the node's)."""
    argv = worker_argv(spec, key, spec.sandbox, fd=0, ctrl_fd=0)
    assert argv[3:5] == ["--fd=0", "--ctrl-fd=0"], argv
    return [a for a in argv[5:] if not a.startswith("--sandbox=")]


class RayWorkerHandle(WorkerHandle):
    """A worker that is a Ray actor (see the module docstring)."""

    def __init__(
        self,
        key: WorkerKey,
        spec: WorkerSpec,
        on_exit: Callable[[WorkerHandle], None],
        refs_of: Callable[[WorkerKey], int],
        *,
        ray: RaySpec,
    ) -> None:
        super().__init__(key, spec, on_exit, refs_of)
        self.ray = ray
        self.actor_pid = 0  # on the actor's node (not ours): never read from local /proc
        self._actor: Any = None
        self._local: socket.socket | None = None  # the relay's end of the socketpair

    def __repr__(self) -> str:
        return f"<RayWorkerHandle {self.key} node={self.node} {self.state}>"

    async def start(self) -> None:
        try:
            await connect(self.ray.address, self.ray.local_cpus)
            self._actor = actor_class().options(**self.ray.options).remote()
            env = [list(kv) for kv in self.spec.env]
            async with asyncio.timeout(self.spec.start_timeout):
                where = await self._actor.start.remote(
                    worker_tail(self.spec, self.key), self.spec.sandbox.to_json(), env
                )
            self.node = f"{where['host']} (node {where['node_id'][:12]}, pid {where['pid']})"
            self.actor_pid = int(where["actor_pid"])
            await self._open_channel()
            assert self._channel is not None
            async with asyncio.timeout(self.spec.start_timeout):
                ready = await self._channel.ready
            self.sandbox_level, self.sandbox_layers = ready.sandbox_level, ready.sandbox_layers
            self.helper_info = [(str(n), str(sig), str(doc)) for n, sig, doc in ready.helpers]
            if not level_at_least(self.sandbox_level, self.spec.min_sandbox):
                raise WorkerStartError(
                    f"worker {self.key} (Ray actor on {self.node}) reached sandbox level "
                    f"{self.sandbox_level!r}, below min_sandbox {self.spec.min_sandbox!r}: "
                    f"{'; '.join(self.sandbox_layers)}"
                )
        except BaseException as exc:
            await self.kill(f"start failed: {exc!r}")
            if isinstance(exc, WorkerStartError):
                raise
            if isinstance(exc, TimeoutError):
                raise WorkerStartError(
                    f"worker {self.key}: its Ray actor sent no READY within "
                    f"{self.spec.start_timeout}s (is the cluster short of the resources "
                    f"it asks for: {self.ray.options}?)"
                ) from exc
            if isinstance(exc, Exception):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise WorkerStartError(f"worker {self.key}: Ray actor failed: {first}") from exc
            raise
        self.state = WorkerState.READY
        log.debug("worker %s ready: Ray actor on %s", self.key, self.node)

    async def _open_channel(self) -> None:
        loop = asyncio.get_running_loop()
        parent, local = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        local.setblocking(False)
        self._local = local
        self._spare = parent.dup()  # as WorkerHandle.start: leftover replies are read
        _, channel = await loop.create_unix_connection(
            lambda: _Channel(self, self.spec.max_frame), sock=parent
        )
        self._channel = channel
        self._background.start_soon(self._relay, name=f"worker {self.key} Ray relay")

    # -- the relay ----------------------------------------------------------------------

    async def _relay(self) -> None:
        loop = asyncio.get_running_loop()
        up = loop.create_task(self._uplink())
        down = loop.create_task(self._downlink())
        reason = "the Ray actor's worker exited"
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if up.done() and not up.cancelled() and up.exception() is None:
                await asyncio.wait({down})  # closed by us: until the worker exited
            for task in (down, up):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    reason = f"Ray actor lost: {_first_line(task.exception())}"
                    break
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            if self.state != WorkerState.DEAD:
                self._fail(reason)  # reads the replies already relayed first
            if self._local is not None:
                self._local.close()
            self.exited.set()

    async def _uplink(self) -> None:
        """Request bytes from the handle to the actor, one batch in flight (order kept)."""
        loop = asyncio.get_running_loop()
        assert self._local is not None
        while True:
            try:
                data = await loop.sock_recv(self._local, RELAY_CHUNK)
            except OSError:
                data = b""
            if not data:  # the handle closed its end: EOF to the worker
                with contextlib.suppress(Exception):
                    await self._actor.close.remote()
                return
            if not await self._actor.send.remote(data):
                raise ConnectionError("the worker's channel is closed")

    async def _downlink(self) -> None:
        """Reply bytes from the actor into the socketpair, until the worker exited."""
        loop = asyncio.get_running_loop()
        assert self._local is not None
        while data := await self._actor.recv.remote():
            await loop.sock_sendall(self._local, data)

    # -- what differs from a process ----------------------------------------------------

    def cancel(self, call_id: int) -> None:
        # WorkerHandle.cancel, with the actor delivering the CANCEL and SIGUSR1.
        live = self.state == WorkerState.READY and self._actor is not None
        fut = self._router.abandon(call_id, open_=live)
        if fut is None:
            return
        fut.cancel()
        if live:
            self._actor.interrupt.remote(call_id)  # nobody waits: the kill timer backs it
            self._arm_kill_timer(call_id)

    def watch_cpu(self) -> None:
        """No backstop: the worker's pid is on another node (it enforces the budget)."""

    def _fail(
        self,
        reason: str,
        running_error: BridgeError | None = None,
        *,
        blamed: int = 0,
        others: str = "",
    ) -> None:
        was_dead = self.state == WorkerState.DEAD
        super()._fail(reason, running_error, blamed=blamed, others=others)
        if not was_dead and self._actor is not None:
            self._kill_actor()

    def _kill_actor(self) -> None:
        actor, self._actor = self._actor, None
        try:
            import ray

            ray.kill(actor, no_restart=True)
        except Exception as exc:  # gone already, or Ray is shutting down
            log.debug("worker %s: killing its Ray actor: %r", self.key, exc)

    async def _wait_exited(self, timeout: float) -> None:
        if self._channel is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self.exited.wait())
        await self._background.aclose()


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else repr(exc)
