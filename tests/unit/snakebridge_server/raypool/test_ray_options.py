"""What a Ray pool asks Ray for (actor options, the local runtime's size, ``ray.init``
arguments) and how its actor starts the worker runtime (argv): pure, no Ray needed."""

from __future__ import annotations

import math

import pytest

from snakebridge_server.config import ConfigError, PoolConfig, ServerConfig
from snakebridge_server.raypool.actor import UID_NOTE, child_argv
from snakebridge_server.raypool.handle import worker_tail
from snakebridge_server.raypool.runtime import (
    LOCAL_OBJECT_STORE,
    actor_options,
    init_kwargs,
    local_cpus,
)
from snakebridge_server.refids import WorkerKey
from snakebridge_server.sandbox import SandboxSpec
from snakebridge_server.supervisor.spawn import WorkerSpec


def ray_pool(**kw: object) -> PoolConfig:
    return PoolConfig(backend="ray", workers=2, **kw)  # type: ignore[arg-type]


def test_actor_options_carry_the_pool_settings_and_never_let_ray_restart_an_actor() -> None:
    pc = ray_pool(
        num_cpus=0.5,
        num_gpus=1.0,
        resources=(("model-node", "2"),),
        runtime_env='{"pip": ["numpy"]}',
    )
    options = actor_options(pc)
    assert options["num_cpus"] == 0.5 and options["num_gpus"] == 1.0
    assert options["resources"] == {"model-node": 2.0}
    assert options["runtime_env"] == {"pip": ["numpy"]}
    # The pool replaces a dead worker (new incarnation, SessionLost for its refs); a
    # restarted actor would come back as the same worker with its refs gone.
    assert options["max_restarts"] == 0 and options["max_task_retries"] == 0


def test_actor_options_leave_out_what_the_pool_does_not_set() -> None:
    options = actor_options(ray_pool())
    assert "resources" not in options and "runtime_env" not in options


def test_a_local_runtime_is_sized_for_the_ray_pools_only() -> None:
    pools = [
        ray_pool(),  # 2 x 1
        PoolConfig(name="gpu", backend="ray", workers=3, num_cpus=0.5),  # 1.5
        PoolConfig(name="local", workers=8),  # a process pool: not Ray's
    ]
    assert local_cpus(pools) == math.ceil(2 + 1.5)
    assert local_cpus([PoolConfig(workers=4)]) == 1
    assert local_cpus([ray_pool(num_cpus=0.0)]) == 1


def test_init_kwargs_start_a_small_runtime_for_local_and_join_otherwise() -> None:
    local = init_kwargs("local", 3)
    assert local["address"] == "local" and local["num_cpus"] == 3
    assert local["object_store_memory"] == LOCAL_OBJECT_STORE
    assert local["include_dashboard"] is False
    joined = init_kwargs("ray://head:10001", 3)
    assert joined["address"] == "ray://head:10001" and "num_cpus" not in joined


def test_the_actor_starts_the_worker_runtime_with_the_servers_arguments() -> None:
    spec = WorkerSpec(
        python="/server/python",
        boot="b00t",
        max_refs=10,
        max_frame=1 << 20,
        max_result=1 << 19,
        start_timeout=5.0,
        cancel_grace=1.0,
        sandbox=SandboxSpec(level="standard"),
    )
    tail = worker_tail(spec, WorkerKey("gpu", 1, 3))
    assert "--pool=gpu" in tail and "--max-refs=10" in tail
    assert any(a.startswith("--ref-prefix=b00t.gpu.1.3") for a in tail)
    # The actor adds its own fds, interpreter and sandbox spec (its node's scratch dir).
    assert not any(a.startswith(("--fd=", "--ctrl-fd=", "--sandbox=")) for a in tail)
    assert "/server/python" not in tail
    argv = child_argv("/node/python", 4242, 7, 8, tail)
    assert argv[0] == "/node/python" and argv[1] == "-c" and argv[3] == "4242"
    assert argv[4:6] == ["--fd=7", "--ctrl-fd=8"] and argv[6:] == tail
    assert "prctl(1, signal.SIGKILL)" in argv[2]  # the worker dies with its actor
    assert UID_NOTE.startswith("uid: ")  # reported as a sandbox layer


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"backend": "k8s"}, "backend"),
        ({"num_cpus": -1.0}, "num_cpus"),
        ({"num_gpus": float("nan")}, "num_gpus"),
        ({"resources": (("x", "lots"),)}, "resources"),
        ({"runtime_env": "[1]"}, "runtime_env"),
        ({"runtime_env": "{"}, "runtime_env"),
    ],
)
def test_bad_ray_pool_settings_are_refused_naming_the_key(
    fields: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=f"invalid config {key}"):
        PoolConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["local", "auto", "ray://head-svc:10001"])
def test_ray_address_takes_local_auto_or_a_ray_client_url(address: str) -> None:
    assert ServerConfig(ray_address=address).ray_address == address


@pytest.mark.parametrize("address", ["", "head:10001", "ray://head", "http://head:10001"])
def test_other_ray_addresses_are_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="invalid config ray_address"):
        ServerConfig(ray_address=address)
