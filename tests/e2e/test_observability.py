"""Metrics, structured logs, correlation ids and worker output, end to end: a real
``bridge-server`` with ``--metrics`` / ``--log-format json``, the SDK over a real socket,
the metrics scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import snakebridge
from snakebridge.errors import RemoteError, WorkerCrashed

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def _metrics_address(srv: Any) -> str:
    line = srv.wait_for_log(r"metrics on http://\S+/metrics")
    match = re.search(r"metrics on http://(\S+)/metrics", line)
    assert match is not None
    return match.group(1)


def _scrape(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_calls_errors_streams_and_restarts(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--metrics", "127.0.0.1:0", "--helpers", "remote_helpers")
    address = _metrics_address(srv)
    async with snakebridge.Client(srv.address) as client:
        for _ in range(3):
            assert await client.call("math", "sqrt", [16]) == 4.0
        with pytest.raises(RemoteError):
            await client.call("math", "sqrt", [-1])
        assert [x async for x in client.stream("builtins", "range", [10])] == list(range(10))
        with pytest.raises(WorkerCrashed):
            await client.call("remote_helpers", "die")
        for _ in range(200):  # the replacement worker comes up
            if (await client.describe()).pools[0].workers[0].state == "ready":
                break
            await asyncio.sleep(0.05)
        ref = await client.call_class("collections", "Counter", ["hello"])
        samples = await asyncio.to_thread(_scrape, address)

    calls = "snakebridge_calls_total"
    assert _get(samples, calls, pool="default", kind="function", status="ok") == 3
    assert _get(samples, calls, pool="default", kind="function", status="RemoteError") == 1
    assert _get(samples, calls, pool="default", kind="function", status="WorkerCrashed") == 1
    assert _get(samples, calls, pool="default", kind="class", status="ok") == 1
    assert _get(samples, calls, pool="default", kind="stream", status="ok") == 1
    hist = "snakebridge_call_duration_seconds"
    assert _get(samples, hist + "_count", pool="default", kind="function") == 5
    assert _get(samples, hist + "_bucket", pool="default", kind="function", le="+Inf") == 5
    assert _get(samples, "snakebridge_stream_items_total", pool="default") == 10
    assert _get(samples, "snakebridge_stream_batches_total", pool="default") == 2  # 1, then 9
    assert _get(samples, "snakebridge_worker_restarts_total", pool="default", reason="crash") == 1
    assert _get(samples, "snakebridge_workers_live", pool="default") == 1
    assert _get(samples, "snakebridge_in_flight", pool="default") == 0
    assert _get(samples, "snakebridge_queue_depth", pool="default") == 0
    assert _get(samples, "snakebridge_sessions_live") == 1  # the client's auto session
    assert _get(samples, "snakebridge_refs_live") == 1 and ref is not None


async def test_metrics_endpoint_serves_only_get_metrics(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--metrics", "127.0.0.1:0")
    host, port = _metrics_address(srv).rsplit(":", 1)

    def request(raw: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(raw)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    assert (await asyncio.to_thread(request, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
    oversized = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
    assert await asyncio.to_thread(request, oversized) == b""  # dropped, no answer
    ok = await asyncio.to_thread(request, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and b"snakebridge_workers_live" in ok
    async with snakebridge.Client(srv.address) as client:  # gRPC unaffected
        assert await client.call("math", "sqrt", [4]) == 2.0
    assert srv.stop() == 0  # the metrics server closes with the drain


def _json_lines(srv: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in list(srv.lines)]


async def test_json_logs_carry_worker_and_correlation_id_of_worker_output(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--log-format", "json", "--log-level", "debug")
    async with snakebridge.Client(srv.address) as client:
        with snakebridge.correlation_id("obs-1"):
            assert await client.call("obs_helpers", "chatter", ["A"]) == "A"
        with pytest.raises(RemoteError) as failed:
            await client.call("obs_helpers", "chatter_then_fail", ["B"])
    server_made = failed.value.correlation_id
    assert server_made.startswith("sb-")  # the client sent none: the server made one
    srv.wait_for_log(r"logging says B")

    records = _json_lines(srv)  # every line of the server's stderr is a JSON object
    for record in records:
        assert {"ts", "level", "logger", "message"} <= record.keys()
    worker_id = f"default.0.{(await _incarnation(srv))}"
    for tag, cid in (("A", "obs-1"), ("B", server_made)):
        for stream, text in (
            ("stdout", f"stdout says {tag}"),
            ("stderr", f"stderr says {tag}"),
            ("log", f"logging says {tag}"),
        ):
            (line,) = [r for r in records if r.get("stream") == stream and text in r["message"]]
            assert line["worker"] == worker_id and line["pool"] == "default", line
            assert line["correlation_id"] == cid, line
        # ...and the server's own line about that call
        (rpc,) = [
            r
            for r in records
            if r["logger"] == "snakebridge.service" and r.get("correlation_id") == cid
        ]
        assert rpc["message"].startswith("rpc function pool=default status=")


async def _incarnation(srv: Any) -> int:
    async with snakebridge.Client(srv.address) as client:
        return (await client.describe()).pools[0].workers[0].incarnation


async def test_console_logs_tag_worker_output_and_errors_carry_the_id(server: Any) -> None:
    async with snakebridge.Client(server.address, correlation_id="obs-console") as client:
        with pytest.raises(RemoteError) as failed:
            await client.call("obs_helpers", "chatter_then_fail", ["C"])
    assert failed.value.correlation_id == "obs-console"
    for text in ("stdout says C", "stderr says C", "logging says C"):
        line = server.wait_for_log(re.escape(text))
        assert re.search(r"\[worker default\.\d+\.\d+ ", line), line
        assert re.search(r"worker=default\.\d+\.\d+ ", line), line
        assert "correlation_id=obs-console]" in line, line


async def test_worker_output_floods_are_cut_and_rate_limited(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--worker-output-rate", "50")
    async with snakebridge.Client(srv.address) as client:
        assert await client.call("obs_helpers", "flood", [2000, 200_000]) == 2000
        assert await client.call("math", "sqrt", [9]) == 3.0  # still serving
    line = srv.wait_for_log(r"output line\(s\) not logged: over 50 lines/s")
    assert "[worker default.0." in line
    logged = [line for line in srv.lines if "flood line" in line]
    assert 0 < len(logged) < 2000
    assert all(len(line) < 20_000 for line in srv.lines)


async def test_an_invalid_correlation_id_from_a_raw_client_is_bad_request(server: Any) -> None:
    client = snakebridge.Client(server.address)
    async with client:
        client._metadata = {"snakebridge-correlation-id": "has space"}  # bypass SDK checks
        with pytest.raises(snakebridge.errors.BadRequest, match="correlation-id"):
            await client.call("math", "sqrt", [4])
        client._metadata = None


async def test_a_client_side_error_keeps_the_id_it_sent() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = snakebridge.Client(f"127.0.0.1:{port}")
    try:
        with snakebridge.correlation_id("lost-1"):
            with pytest.raises(snakebridge.errors.ConnectionFailed) as failed:
                await client.call("math", "sqrt", [4])
    finally:
        await client.close()
    assert failed.value.correlation_id == "lost-1"
