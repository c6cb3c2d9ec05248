"""Pure observability pieces: the metrics registry and its exposition text, log
formatting, bounded worker output, correlation ids on both sides, their settings."""

from __future__ import annotations

import io
import json
import logging
import math

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

import snakebridge
from snakebridge import _correlation
from snakebridge._client import Client
from snakebridge._transport import _error_from_trailers
from snakebridge.errors import LimitExceeded, remote_error
from snakebridge.wire.constants import CORRELATION_METADATA, ERROR_TRAILER
from snakebridge_server.cli import build_config
from snakebridge_server.config import ConfigError, ServerConfig
from snakebridge_server.logs import (
    CALL,
    CallInfo,
    ConsoleFormatter,
    JsonFormatter,
    LineLimiter,
    LineSplitter,
    parse_output_line,
    valid_correlation_id,
)
from snakebridge_server.metrics import (
    Histogram,
    Metrics,
    batch_items,
    escape_label,
    format_value,
    queue_depth,
)
from snakebridge_server.metrics_http import answer
from snakebridge_server.service import error_trailer
from snakebridge_server.worker import output as worker_logging


def _families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {
        f.name: [(s.name, dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


# -- metrics ------------------------------------------------------------------------------


def test_label_values_are_escaped_so_the_parser_reads_them_back() -> None:
    nasty = 'a"b\\c\nd'
    assert escape_label(nasty) == 'a\\"b\\\\c\\nd'
    metrics = Metrics()
    metrics.observe_call(nasty, "function", "ok", 0.001)
    samples = _families(metrics.render())["snakebridge_calls"]
    assert samples == [
        ("snakebridge_calls_total", {"pool": nasty, "kind": "function", "status": "ok"}, 1.0)
    ]


def test_calls_are_counted_by_pool_kind_and_status() -> None:
    metrics = Metrics()
    for status in ("ok", "ok", "RemoteError"):
        metrics.observe_call("default", "function", status, 0.002)
    metrics.observe_call("default", "stream", "ok", 0.1)
    calls = {
        (s[1]["kind"], s[1]["status"]): s[2]
        for s in _families(metrics.render())["snakebridge_calls"]
    }
    assert calls == {("function", "ok"): 2, ("function", "RemoteError"): 1, ("stream", "ok"): 1}


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    metrics = Metrics(buckets=(0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.005, 0.05, 5.0):  # 0.001 lands in le="0.001"
        metrics.observe_call("p", "function", "ok", seconds)
    samples = _families(metrics.render())["snakebridge_call_duration_seconds"]
    buckets = {s[1]["le"]: s[2] for s in samples if s[0].endswith("_bucket")}
    assert buckets == {"0.001": 2, "0.01": 3, "0.1": 4, "+Inf": 5}
    (count,) = [s[2] for s in samples if s[0].endswith("_count")]
    (total,) = [s[2] for s in samples if s[0].endswith("_sum")]
    assert count == 5 and total == pytest.approx(5.0565)


def test_histogram_cumulative_counts_every_observation_once() -> None:
    hist = Histogram((1.0, 2.0))
    for v in (0.5, 1.5, 1.5, 3.0):
        hist.observe(v)
    assert hist.cumulative() == [(1.0, 1), (2.0, 3), (math.inf, 4)]


def test_stream_batches_count_items_from_the_array_header() -> None:
    metrics = Metrics()
    metrics.stream_batch("default", batch_items(msgpack.packb([1])))
    metrics.stream_batch("default", batch_items(msgpack.packb(list(range(20)))))
    metrics.stream_batch("default", batch_items(msgpack.packb(list(range(70_000)))))
    fams = _families(metrics.render())
    assert fams["snakebridge_stream_batches"][0][2] == 3
    assert fams["snakebridge_stream_items"][0][2] == 1 + 20 + 70_000
    assert batch_items(b"") == 0 and batch_items(b"\xc0") == 0


def test_queue_depth_counts_requests_behind_the_running_one() -> None:
    class W:
        def __init__(self, n: int) -> None:
            self.in_flight = n

    assert queue_depth([W(0), W(1), W(4), None], [W(2)]) == 3 + 1


def test_values_are_formatted_as_the_text_format_wants() -> None:
    assert [format_value(v) for v in (3, 2.5, math.inf, 1e-4)] == ["3", "2.5", "+Inf", "0.0001"]


def test_metrics_endpoint_answers_get_metrics_only() -> None:
    def render() -> str:
        return "x 1\n"

    ok = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", render)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nx 1\n")
    assert b"text/plain; version=0.0.4" in ok
    assert answer(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", render).startswith(b"HTTP/1.1 200")
    assert answer(b"GET / HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.1 404")
    assert answer(b"GET /metricsx HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.1 404")
    assert answer(b"POST /metrics HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.1 405")
    assert answer(b"garbage\r\n\r\n", render).startswith(b"HTTP/1.1 400")


# -- logs ---------------------------------------------------------------------------------


def _record(msg: str, **extra: str) -> logging.LogRecord:
    record = logging.LogRecord("snakebridge.test", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_are_one_object_with_the_known_fields() -> None:
    token = CALL.set(CallInfo("req-7"))
    try:
        line = JsonFormatter().format(_record("two\nlines", worker="default.0.1", pool="default"))
    finally:
        CALL.reset(token)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "INFO" and obj["logger"] == "snakebridge.test"
    assert obj["message"] == "two\nlines" and obj["ts"].endswith("Z")
    assert obj["worker"] == "default.0.1" and obj["pool"] == "default"
    assert obj["correlation_id"] == "req-7"


def test_an_explicit_correlation_id_wins_over_the_context() -> None:
    token = CALL.set(CallInfo("ctx"))
    try:
        obj = json.loads(JsonFormatter().format(_record("m", correlation_id="worker-said")))
    finally:
        CALL.reset(token)
    assert obj["correlation_id"] == "worker-said"


def test_console_lines_keep_the_old_format_and_append_known_fields() -> None:
    plain = ConsoleFormatter().format(_record("hello"))
    assert plain.endswith(" INFO snakebridge.test: hello")
    tagged = ConsoleFormatter().format(_record("hello", worker="default.0.1", correlation_id="c"))
    assert tagged.endswith("hello [worker=default.0.1 correlation_id=c]")


def test_a_long_line_is_cut_and_the_cut_is_counted() -> None:
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"abc") == []
    assert splitter.feed(b"defghijklmnop") == []
    assert splitter.feed(b"qr\nshort\nrest") == [(b"abcdefghij", 8), (b"short", 0)]
    assert splitter.flush() == [(b"rest", 0)] and splitter.flush() == []


def test_a_flood_without_newlines_holds_at_most_one_line() -> None:
    splitter = LineSplitter(max_line=100)
    for _ in range(1000):
        assert splitter.feed(b"x" * 10_000) == []
    assert len(splitter._buf) == 100
    assert splitter.feed(b"\n") == [(b"x" * 100, 10_000_000 - 100)]


def test_line_limiter_refuses_past_its_rate_and_counts_what_it_refused() -> None:
    limiter = LineLimiter(rate=3, now=0.0)
    assert [limiter.allow(0.0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.take_dropped() == 2 and limiter.take_dropped() == 0
    assert limiter.allow(1.0)  # refilled
    unlimited = LineLimiter(rate=0, now=0.0)
    assert all(unlimited.allow(0.0) for _ in range(10_000))


def test_worker_records_are_parsed_and_anything_else_is_raw_text() -> None:
    rec = parse_output_line(b'\x1e{"m":"hi","s":"log","c":"req-1","l":"WARNING","n":"u"}', 0)
    assert (rec.text, rec.stream, rec.level, rec.logger, rec.correlation_id) == (
        "hi",
        "log",
        logging.WARNING,
        "u",
        "req-1",
    )
    raw = parse_output_line(b"Segmentation fault", 0)
    assert (raw.text, raw.stream, raw.correlation_id) == ("Segmentation fault", "output", "")
    for forged in (b'\x1e{"m": 1}', b'\x1e{"m":"x","c":"has space"}', b"\x1e{not json"):
        assert parse_output_line(forged, 0).stream == "output"
    assert parse_output_line(b"abc", 5).text == "abc ...[5 bytes cut]"


def test_worker_side_writes_records_with_the_running_calls_id() -> None:
    out = io.StringIO()
    stdout = worker_logging._LineWriter("stdout", out)
    worker_logging.set_correlation_id("req-9")
    try:
        print("partial", end="", file=stdout)
        print(" line\nsecond", file=stdout)
        handler = worker_logging._RecordHandler(out)
        handler.emit(logging.LogRecord("user", logging.ERROR, __file__, 1, "x=%d", (3,), None))
    finally:
        worker_logging.current[0] = ""
    records = [parse_output_line(line.encode(), 0) for line in out.getvalue().split("\n")[:-1]]
    assert [(r.stream, r.text, r.correlation_id) for r in records] == [
        ("stdout", "partial line", "req-9"),
        ("stdout", "second", "req-9"),
        ("log", "x=3", "req-9"),
    ]
    assert records[2].level == logging.ERROR and records[2].logger == "user"


def test_worker_side_cuts_long_messages_to_fit_the_servers_line_limit() -> None:
    out = io.StringIO()
    print("y" * 100_000, file=worker_logging._LineWriter("stderr", out))
    lines = out.getvalue().split("\n")[:-1]  # not splitlines(): it splits at \x1e too
    assert all(len(line.encode()) < 16 * 1024 for line in lines)
    assert all(parse_output_line(line.encode(), 0).stream == "stderr" for line in lines)


# -- correlation ids ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "has space", "é", "x" * 129, "tab\t", "nl\n"])
def test_invalid_correlation_ids_are_refused_on_both_sides(bad: str) -> None:
    assert not valid_correlation_id(bad)
    with pytest.raises(ValueError, match="printable ASCII"):
        Client("127.0.0.1:1", correlation_id=bad)
    with pytest.raises(ValueError), snakebridge.correlation_id(bad):
        pass


def test_the_context_block_wins_over_the_client_default_and_nests() -> None:
    client = Client("127.0.0.1:1", correlation_id="default-id", token="t")
    assert client._call_metadata() == (
        {"authorization": "Bearer t", CORRELATION_METADATA: "default-id"},
        "default-id",
    )
    with snakebridge.correlation_id("outer"):
        with snakebridge.correlation_id("inner"):
            assert client._call_metadata()[1] == "inner"
        assert client._call_metadata()[1] == "outer"
    assert _correlation.current() is None
    assert Client("127.0.0.1:1")._call_metadata() == (None, None)  # no cost when unused


def test_every_error_trailer_carries_the_correlation_id() -> None:
    token = CALL.set(CallInfo("req-11"))
    try:
        trailers = [
            error_trailer(LimitExceeded("too many")),
            error_trailer(remote_error("builtins.ValueError", "bad", "tb")),
        ]
    finally:
        CALL.reset(token)
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    errors = [_error_from_trailers(GRPCError(Status.UNKNOWN), t) for t in trailers]
    assert [type(e).__name__ for e in errors] == ["LimitExceeded", "RemoteValueError"]
    assert [e.correlation_id for e in errors] == ["req-11", "req-11"]
    details = msgpack.unpackb(trailers[1][ERROR_TRAILER])
    assert details["code"] == "RemoteError"


# -- settings -----------------------------------------------------------------------------


def test_observability_flags_map_to_config_fields() -> None:
    config = build_config(
        ["--log-format", "json", "--metrics", "127.0.0.1:9464", "--worker-output-rate", "0"],
        environ={},
    )
    assert (config.log_format, config.metrics, config.worker_output_rate) == (
        "json",
        "127.0.0.1:9464",
        0,
    )
    assert build_config([], environ={"SNAKEBRIDGE_LOG_FORMAT": "json"}).log_format == "json"
    assert ServerConfig().metrics == "" and ServerConfig().log_format == "console"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"log_format": "xml"}, "log_format"),
        ({"metrics": "9464"}, "metrics: '9464' is not HOST:PORT"),
        ({"metrics": "127.0.0.1:99999"}, "metrics"),
        ({"metrics": "0.0.0.0:9464"}, "not a loopback address; give --insecure"),
        ({"worker_output_rate": -1}, "worker_output_rate"),
    ],
)
def test_bad_observability_settings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**fields)  # type: ignore[arg-type]


def test_a_non_loopback_metrics_address_needs_insecure() -> None:
    assert ServerConfig(metrics="0.0.0.0:9464", insecure=True).metrics == "0.0.0.0:9464"
    assert ServerConfig(metrics="[::1]:9464").metrics == "[::1]:9464"
    assert ServerConfig(metrics="localhost:9464").metrics == "localhost:9464"
