"""The server's per-connection decisions (connections.py) and the grpclib seam's bounds:
pure, no sockets. The e2e tests (test_connections.py) drive the same limits over HTTP/2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import snakebridge_server
from snakebridge_server.connections import (
    PING_MIN_INTERVAL,
    PING_STRIKES,
    RESET_LIMIT,
    RESET_WINDOW,
    ConnectionGuard,
    ConnectionLimits,
    PingStrikes,
    ResetWindow,
)
from snakebridge_server.metrics import Metrics
from snakebridge_server.snapshot import BridgeSnapshot, PoolSnapshot

LIMITS = ConnectionLimits(max_connections=2, max_streams=5, idle_timeout=1.0, handshake_timeout=1.0)


def test_connection_guard_admits_up_to_the_cap_and_frees_a_place_on_release() -> None:
    guard = ConnectionGuard(LIMITS)
    assert [guard.admit(), guard.admit(), guard.admit()] == [True, True, False]
    assert (guard.open, guard.refused) == (2, 1)
    guard.release()
    assert guard.admit() is True
    assert repr(guard) == "<ConnectionGuard open=2 refused=1>"


def test_pings_closer_than_the_interval_are_strikes_until_the_limit() -> None:
    pings = PingStrikes()
    close = PING_MIN_INTERVAL / 10
    verdicts = [pings.allow(i * close) for i in range(PING_STRIKES + 2)]
    # The first ping is no strike; then PING_STRIKES are tolerated; the next one is not.
    assert verdicts == [True] * (PING_STRIKES + 1) + [False]


def test_server_output_and_spaced_pings_clear_the_strikes() -> None:
    pings = PingStrikes()
    now = 0.0
    for _ in range(10 * PING_STRIKES):
        assert pings.allow(now)
        pings.sent_something()  # headers or data sent between two pings
        now += 0.001
    spaced = PingStrikes()
    assert all(spaced.allow(i * PING_MIN_INTERVAL) for i in range(10 * PING_STRIKES))


def test_resets_beyond_the_limit_within_the_window_are_exceeded() -> None:
    resets = ResetWindow()
    assert not any(resets.exceeded(0.0) for _ in range(RESET_LIMIT))
    assert resets.exceeded(0.0)


def test_resets_older_than_the_window_are_forgotten() -> None:
    resets = ResetWindow()
    step = 2 * RESET_WINDOW / RESET_LIMIT  # half the limit per window, for a long time
    assert not any(resets.exceeded(i * step) for i in range(5 * RESET_LIMIT))


def test_metrics_render_a_gauges_snapshot_without_a_bridge() -> None:
    gauges = BridgeSnapshot(
        pools=[PoolSnapshot("default", 3, 1, 2, 2, {"crashed": 4})], sessions=5, refs=7
    )
    text = Metrics().render(gauges)
    for line in (
        'snakebridge_in_flight{pool="default"} 3',
        'snakebridge_queue_depth{pool="default"} 1',
        'snakebridge_workers_live{pool="default"} 2',
        'snakebridge_workers_size{pool="default"} 2',
        'snakebridge_worker_restarts_total{pool="default",reason="crashed"} 4',
        "snakebridge_sessions_live 5",
        "snakebridge_refs_live 7",
    ):
        assert line in text.splitlines()


_GRPCLIB_PRIVATES = re.compile(
    r"_protocol_factory|\bstream\._(stream|codec|dispatch|recv_type|messages_received)\b|"
    r"\.processors\[|\bconnection\._connection\b|_set_nodelay|\bserver\._server\b|"
    r"\b(protocol|processor|connection)\.\w+ = "
)


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in Path(snakebridge_server.__file__).parent.glob("*.py")
        if p.name != "grpc_server.py"
    ),
    ids=lambda p: p.name,
)
def test_only_the_grpc_seam_touches_grpclib_internals(path: Path) -> None:
    hits = [
        line.strip()
        for line in path.read_text().splitlines()
        if _GRPCLIB_PRIVATES.search(line) and not line.lstrip().startswith("#")
    ]
    assert hits == [], f"{path.name} reaches into grpclib; go through grpc_server"
