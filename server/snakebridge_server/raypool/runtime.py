"""Joining Ray, and what a Ray pool asks Ray for.

Runs in the server process. ``actor_options`` is pure (a pool's settings as Ray actor
options); ``connect`` joins or starts the Ray runtime once per server process (``ray`` is
an optional dependency, imported here only); ``actor_class`` is ``WorkerActor`` made a
Ray actor class.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any, Final

from ..config import PoolConfig

#: The object store of a ``local`` runtime: frames are small and never stored there
#: for long (Ray's floor is 75 MiB).
LOCAL_OBJECT_STORE: Final = 128 * 1024 * 1024

_lock: asyncio.Lock | None = None
_started_here = False


class RayUnavailable(Exception):
    """``ray`` is not installed, or the Ray runtime could not be started or joined. Raised
    at pool start; the operator installs ``snakebridge[ray]`` or fixes ``ray_address``."""


def actor_options(pc: PoolConfig) -> dict[str, Any]:
    """The Ray actor options of ``pc``'s workers. Ray never restarts one: the pool
    replaces a dead worker with a new incarnation, as for a process."""
    options: dict[str, Any] = {
        "num_cpus": pc.num_cpus,
        "num_gpus": pc.num_gpus,
        "max_restarts": 0,
        "max_task_retries": 0,
        # send, recv and interrupt of one worker run concurrently (an async actor).
        "max_concurrency": 8,
    }
    if pc.resources:
        options["resources"] = {name: float(amount) for name, amount in pc.resources}
    if pc.runtime_env:
        options["runtime_env"] = json.loads(pc.runtime_env)
    return options


def local_cpus(pools: Sequence[PoolConfig]) -> int:
    """The CPUs of a ``local`` runtime: what the Ray pools' actors reserve, at least 1."""
    need = sum(p.workers * p.num_cpus for p in pools if p.backend == "ray")
    return max(1, math.ceil(need))


def init_kwargs(address: str, cpus: int) -> dict[str, Any]:
    """``ray.init`` arguments for ``ray_address``: ``local`` starts a small runtime here."""
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "configure_logging": False,
        "log_to_driver": False,
        "ignore_reinit_error": True,
    }
    if address == "local":
        kwargs.update(address="local", num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE)
    else:
        kwargs["address"] = address
    return kwargs


async def connect(address: str, cpus: int) -> None:
    """Join (or start, for ``local``) the Ray runtime, once per server process."""
    global _lock, _started_here
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        try:
            import ray  # optional dependency: only for Ray pools
        except ImportError as exc:
            raise RayUnavailable(
                f"a Ray pool needs ray: pip install 'snakebridge[ray]' ({exc})"
            ) from None
        if ray.is_initialized():
            return
        try:
            # ray.init blocks for seconds (it starts or dials the runtime).
            await asyncio.to_thread(ray.init, **init_kwargs(address, cpus))
        except Exception as exc:
            raise RayUnavailable(f"cannot join Ray at {address!r}: {exc}") from exc
        _started_here = True


async def disconnect() -> None:
    """Leave Ray (and stop a ``local`` runtime) if this server joined it."""
    global _started_here
    if not _started_here:
        return
    _started_here = False
    import ray

    await asyncio.to_thread(ray.shutdown)


_actor_class: Any = None


def actor_class() -> Any:
    """``WorkerActor`` as a Ray actor class (made once)."""
    global _actor_class
    if _actor_class is None:
        import ray

        from .actor import WorkerActor

        _actor_class = ray.remote(WorkerActor)
    return _actor_class
