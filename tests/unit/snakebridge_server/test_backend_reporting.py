"""Describe and /metrics name each pool's backend and where each worker runs."""

from __future__ import annotations

from snakebridge_server.metrics import Metrics
from snakebridge_server.snapshot import BridgeSnapshot, PoolSnapshot, WorkerSnapshot


def _worker(node: str) -> WorkerSnapshot:
    return WorkerSnapshot("gpu.0.1", 0, 1, 0, "ready", 0, 0, 0, node=node)


def test_metrics_label_each_worker_with_its_pools_backend_and_its_node() -> None:
    snapshot = BridgeSnapshot(
        pools=[
            PoolSnapshot(
                "gpu", 0, 0, 1, 1, workers=[_worker("h1 (node ab12, pid 7)")], backend="ray"
            ),
            PoolSnapshot(
                "default",
                0,
                0,
                1,
                1,
                workers=[WorkerSnapshot("default.0.1", 0, 1, 99, "ready", 0, 0, 0)],
            ),
        ],
        sessions=0,
        refs=0,
    )
    text = Metrics().render(snapshot)
    assert (
        'snakebridge_worker_info{pool="gpu",worker="gpu.0.1",backend="ray",'
        'node="h1 (node ab12, pid 7)"} 1'
    ) in text
    assert (
        'snakebridge_worker_info{pool="default",worker="default.0.1",backend="process",node=""} 1'
    ) in text


def test_a_pool_snapshot_defaults_to_the_process_backend() -> None:
    assert PoolSnapshot("p", 0, 0, 0, 0).backend == "process"
