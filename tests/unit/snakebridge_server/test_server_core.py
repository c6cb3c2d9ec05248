"""Pure, synchronous server logic: ref ids, sessions, worker channel framing, configuration
(the routing choices are in supervisor/test_pool_choice.py, the worker's tables in
worker/test_worker_tables.py)."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakebridge.errors import BadRequest, LimitExceeded, SessionLost
from snakebridge_server.channel import (
    FrameDecoder,
    FrameTooLarge,
    pack_frame,
    pack_frame_parts,
    unpack_message,
)
from snakebridge_server.cli import build_config
from snakebridge_server.config import ConfigError, ServerConfig
from snakebridge_server.refids import WorkerKey, owner_of, parse_ref_id
from snakebridge_server.sessions import SessionTable

BOOT = "b00t"
W0 = WorkerKey("default", 0, 1)
W1 = WorkerKey("default", 1, 1)
TOKEN = "0123456789abcdef" * 2  # the shape of a ref id's random part


# -- ref ids --------------------------------------------------------------------------


def test_ref_id_names_its_worker_and_incarnation() -> None:
    assert parse_ref_id(f"{W0.ref_prefix(BOOT)}{TOKEN}", BOOT) == W0
    assert W0.ref_prefix(BOOT) == "b00t.default.0.1."


def test_ref_id_from_a_previous_server_start_is_session_lost() -> None:
    with pytest.raises(SessionLost, match="restarted"):
        parse_ref_id(f"0ld0.default.0.1.{TOKEN}", BOOT)


@pytest.mark.parametrize(
    "bad", ["", "x", "b00t.default.0.1", "b00t.def ault.0.1.2", "b00t.d.a.1.2"]
)
def test_malformed_ref_id_is_bad_request(bad: str) -> None:
    with pytest.raises(BadRequest):
        parse_ref_id(bad, BOOT)


def test_owner_of_refs_is_the_single_worker_holding_them() -> None:
    assert owner_of([], BOOT) is None
    ids = [f"{W0.ref_prefix(BOOT)}{t * 32}" for t in "123"]
    assert owner_of(ids, BOOT) == W0


def test_refs_from_two_workers_in_one_call_are_rejected() -> None:
    with pytest.raises(BadRequest, match="two workers"):
        owner_of([f"{W0.ref_prefix(BOOT)}{TOKEN}", f"{W1.ref_prefix(BOOT)}{TOKEN}"], BOOT)


# -- sessions -------------------------------------------------------------------------


def table(**kw: int | float) -> SessionTable:
    args: dict[str, int | float] = dict(
        max_sessions=10, max_refs_per_session=5, max_refs_total=8, ttl=60.0
    )
    args.update(kw)
    return SessionTable(**args)  # type: ignore[arg-type]


def test_session_is_created_on_first_call_and_tracks_its_workers() -> None:
    t = table()
    s = t.begin_call("s", now=0.0)
    assert "s" in t and s.in_flight == 1
    t.end_call(s, W0, new_refs=2, now=1.0)
    s = t.begin_call("s", now=2.0)
    t.end_call(s, W1, new_refs=1, now=3.0)
    assert s.refs_by_worker == {W0: 2, W1: 1}
    assert s.last_worker == W1 and s.refs == 3 and t.total_refs == 3


def test_session_cap_is_limit_exceeded() -> None:
    t = table(max_sessions=1)
    t.begin_call("a", now=0.0)
    with pytest.raises(LimitExceeded):
        t.begin_call("b", now=0.0)
    t.begin_call("a", now=0.0)  # an existing session is still fine


def test_ref_budget_is_the_tighter_of_session_and_global_caps() -> None:
    t = table(max_refs_per_session=5, max_refs_total=8)
    a = t.begin_call("a", 0.0)
    t.end_call(a, W0, 4, 0.0)
    b = t.begin_call("b", 0.0)
    assert t.ref_budget(a) == 1  # session cap: 5 - 4
    assert t.ref_budget(b) == 4  # global cap: 8 - 4
    t.end_call(b, W1, 4, 0.0)
    assert t.ref_budget(b) == 0


def test_released_refs_stop_counting() -> None:
    t = table()
    s = t.begin_call("s", 0.0)
    t.end_call(s, W0, 3, 0.0)
    t.refs_released("s", W0, 2)
    assert s.refs_by_worker == {W0: 1} and t.total_refs == 1
    t.refs_released("s", W0, 5)  # never below zero
    assert s.refs_by_worker == {} and t.total_refs == 0


def test_removed_session_returns_the_workers_to_release_on() -> None:
    t = table()
    s = t.begin_call("s", 0.0)
    t.end_call(s, W0, 1, 0.0)
    s = t.begin_call("s", 0.0)
    t.end_call(s, W1, 2, 0.0)
    removed = t.remove("s")
    assert removed is not None and set(removed.refs_by_worker) == {W0, W1}
    assert "s" not in t and t.total_refs == 0
    assert t.remove("s") is None


def test_idle_sessions_expire_but_busy_ones_do_not() -> None:
    t = table(ttl=10.0)
    idle = t.begin_call("idle", 0.0)
    t.end_call(idle, None, 0, 0.0)
    t.begin_call("busy", 0.0)  # still in flight
    assert t.next_expiry() == 10.0
    assert t.expired(now=5.0) == []
    assert [s.id for s in t.expired(now=11.0)] == ["idle"]
    assert "busy" in t and "idle" not in t


def test_dead_worker_refs_stop_counting_against_caps() -> None:
    t = table()
    s = t.begin_call("s", 0.0)
    t.end_call(s, W0, 3, 0.0)
    t.worker_gone(W0)
    assert s.refs == 0 and t.total_refs == 0
    assert s.last_worker == W0  # kept: a strict-affinity call must learn its worker died


# -- worker channel framing ---------------------------------------------------------------


def test_frames_split_at_any_byte_boundary_reassemble() -> None:
    stream = pack_frame([1, 7, b"x" * 1000]) + pack_frame([0, 7, "done", 0])
    for cut in (1, 3, 4, 5, 500, len(stream) - 1):
        dec = FrameDecoder()
        frames = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert [unpack_message(f) for f in frames] == [[1, 7, b"x" * 1000], [0, 7, "done", 0]]
        assert dec.buffered == 0


_BLOBS = st.sampled_from([b"", b"small", bytes(range(256)) * 1024, b"\x07" * (300 * 1024)])
_FIELDS = st.one_of(st.integers(-5, 2**40), st.text(max_size=20), _BLOBS, st.none())


def _edges(messages: list[list[object]]) -> list[int]:
    """Stream offsets where the decoder changes what it reads: each frame's start, the end
    of its 4-byte length and of its array head, and both ends of every part (a big blob's
    body starts and ends on a part edge), plus the end of the stream."""
    edges, pos = [], 0
    for message in messages:
        edges += [pos, pos + 4, pos + 5]
        for part in pack_frame_parts(message):
            pos += len(part)
            edges.append(pos)
    return edges


# Where the chunks end matters only relative to the frame structure: a cut in the middle of
# a 256 KiB body takes the same path as any other cut there. So cuts are drawn near every
# edge (within 8 bytes), anywhere at random, and as runs of one-byte feeds across chosen
# edges; the old form (cycling step sizes) spent up to 8 s feeding bodies 1-8 bytes at a
# time and reached an edge with a tiny feed only by chance.
@settings(max_examples=40, deadline=None)
@given(
    messages=st.lists(st.lists(_FIELDS, min_size=1, max_size=20), min_size=1, max_size=4),
    data=st.data(),
)
def test_big_blobs_frame_as_parts_and_reassemble_from_any_chunking(
    messages: list[list[object]], data: st.DataObject
) -> None:
    """A large argument or result is written as its own buffer (no msgpack copy) and
    collected into a frame-sized buffer: the bytes are pack_frame's, the messages come
    back whole however the stream is cut."""
    for message in messages:
        assert b"".join(pack_frame_parts(message)) == pack_frame(message)
    stream = b"".join(b"".join(pack_frame_parts(m)) for m in messages)
    edges = _edges(messages)
    near_an_edge = st.sampled_from(edges).flatmap(lambda e: st.integers(e - 8, e + 8))
    anywhere = st.integers(0, len(stream))
    cuts = set(data.draw(st.lists(st.one_of(near_an_edge, anywhere), max_size=60)))
    for edge in data.draw(st.lists(st.sampled_from(edges), max_size=4)):
        cuts.update(range(edge - 8, edge + 9))  # one byte at a time across this edge
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(stream)), len(stream)]
    dec, frames = FrameDecoder(), []
    for start, end in itertools.pairwise(bounds):
        frames += dec.feed(stream[start:end])
    assert [unpack_message(f) for f in frames] == messages
    assert dec.buffered == 0


def test_oversized_frame_is_refused_from_its_header() -> None:
    dec = FrameDecoder(max_frame=100)
    with pytest.raises(FrameTooLarge):
        dec.feed((101).to_bytes(4, "big"))


def test_malformed_channel_message_is_rejected() -> None:
    with pytest.raises(ValueError):
        unpack_message(msgpack.packb({"not": "a list"}))


# -- configuration ----------------------------------------------------------------------


def test_flags_beat_environment_beat_defaults() -> None:
    env = {"SNAKEBRIDGE_WORKERS": "3", "SNAKEBRIDGE_LISTEN": "127.0.0.1:6000"}
    cfg = build_config(["--workers", "5"], env)
    assert (cfg.pool_config("default").workers, cfg.port, cfg.host) == (5, 6000, "127.0.0.1")
    assert build_config([], {}).port == 50051


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--workers", "0"], {}, "workers"),
        ([], {"SNAKEBRIDGE_WORKERS": "many"}, "SNAKEBRIDGE_WORKERS"),
        (["--listen", "10.0.0.1:1"], {}, "loopback"),
        (["--listen", "localhost"], {}, "listen"),
        (["--uds", "relative.sock"], {}, "uds"),
        (["--call-timeout", "10", "--max-call-timeout", "5"], {}, "call_timeout"),
        (["--pool", "bad name"], {}, "pool"),
        (["--log-level", "loud"], {}, "log_level"),
        (["--worker-start-timeout", "nan"], {}, "worker_start_timeout"),
        (["--call-timeout", "inf", "--max-call-timeout", "inf"], {}, "call_timeout"),
        (["--max-message-size", str(65 * 1024 * 1024)], {}, "max_message_size"),
        (["--stream-linger", "nan"], {}, "stream_linger"),
    ],
)
def test_invalid_config_names_the_key(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_config(argv, env)


def test_non_loopback_bind_needs_a_token_or_an_explicit_insecure() -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        build_config(["--listen", "0.0.0.0:50051"], {})
    assert build_config(["--listen", "0.0.0.0:1", "--token-file", "/t"], {}).token_file == "/t"
    assert build_config(["--listen", "0.0.0.0:1", "--insecure"], {}).insecure
    assert build_config(["--listen", "0.0.0.0:1"], {"SNAKEBRIDGE_INSECURE": "1"}).insecure


def test_config_is_frozen() -> None:
    cfg = ServerConfig()
    with pytest.raises(AttributeError):
        cfg.port = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.pools[0].workers = 3  # type: ignore[misc]
