"""Ref ids are unguessable, and a worker's ref table serves a ref only to its own session."""

from __future__ import annotations

import itertools
import re

import pytest

from snakebridge.errors import BadRequest, RefNotFound, SessionLost
from snakebridge_server.refids import WorkerKey, parse_ref_id
from snakebridge_server.worker.refs import RefTable

BOOT = "b00t"
KEY = WorkerKey("default", 0, 1)
PREFIX = KEY.ref_prefix(BOOT)


def _table(max_refs: int = 20_000) -> RefTable:
    return RefTable(PREFIX, "default", max_refs=max_refs)


def test_ref_ids_carry_128_random_bits_after_the_worker_prefix() -> None:
    t = _table()
    ids = [t.add(object(), "s", stream=False)[0].id for _ in range(10_000)]
    tokens = [ref_id.removeprefix(PREFIX) for ref_id in ids]
    assert all(ref_id.startswith(PREFIX) for ref_id in ids)
    # 32 hex digits = 128 bits; all distinct, and no two consecutive ids are neighbours.
    assert all(re.fullmatch(r"[0-9a-f]{32}", tok) for tok in tokens)
    assert len(set(tokens)) == len(tokens)
    assert all(abs(int(a, 16) - int(b, 16)) > 1 for a, b in itertools.pairwise(tokens))
    # Every hex digit turns up in every position: the bits are not a padded counter.
    for position in range(32):
        assert len({tok[position] for tok in tokens}) == 16
    assert all(parse_ref_id(ref_id, BOOT) == KEY for ref_id in ids[:100])


@pytest.mark.parametrize(
    "last",
    [
        "7",  # the old sequential counter
        "0123456789abcdef0123456789abcde",  # 31 digits
        "0123456789abcdef0123456789abcdef0",  # 33 digits
        "0123456789ABCDEF0123456789ABCDEF",  # upper case is not what the worker mints
        "0123456789abcdef0123456789abcdeg",
        "0123456789abcdef0123456789abcdef\n",
    ],
)
def test_ref_id_whose_token_is_not_32_hex_digits_is_bad_request(last: str) -> None:
    with pytest.raises(BadRequest):
        parse_ref_id(PREFIX + last, BOOT)


def _not_found_text(t: RefTable, ref_id: str, session_id: str) -> str:
    with pytest.raises(RefNotFound) as info:
        t.get(ref_id, session_id)
    return str(info.value).replace(ref_id, "<id>")


def test_another_sessions_ref_answers_exactly_as_a_ref_that_never_existed() -> None:
    t = _table()
    obj = object()
    ref, _ = t.add(obj, "alice", stream=False)
    released, _ = t.add(object(), "alice", stream=False)
    t.release([released.id], "alice")
    never = PREFIX + "f" * 32

    assert t.get(ref.id, "alice") is obj
    texts = {
        _not_found_text(t, ref.id, "mallory"),
        _not_found_text(t, never, "mallory"),
        _not_found_text(t, never, "alice"),
        _not_found_text(t, released.id, "alice"),
        _not_found_text(t, released.id, "mallory"),
    }
    assert len(texts) == 1, texts
    assert t.get(ref.id, "alice") is obj


def test_release_frees_only_the_calling_sessions_refs() -> None:
    t = _table()
    obj = object()
    alice, _ = t.add(obj, "alice", stream=False)
    mine, _ = t.add(object(), "mallory", stream=False)
    assert t.release([alice.id, mine.id], "mallory") == {"mallory": 1}
    assert t.get(alice.id, "alice") is obj
    assert len(t) == 1
    assert t.release([alice.id], "alice") == {"alice": 1}
    assert len(t) == 0


def test_the_same_object_in_two_sessions_gets_two_unrelated_refs() -> None:
    t = _table()
    obj = object()
    a, _ = t.add(obj, "alice", stream=False)
    b, _ = t.add(obj, "bob", stream=False)
    assert a.id != b.id
    t.release([a.id], "alice")
    assert t.get(b.id, "bob") is obj
    with pytest.raises(RefNotFound):
        t.get(b.id, "alice")


def test_a_ref_of_an_earlier_incarnation_is_session_lost_for_every_session() -> None:
    t = RefTable(WorkerKey("default", 0, 2).ref_prefix(BOOT), "default", max_refs=10)
    for session in ("alice", "mallory"):
        with pytest.raises(SessionLost):
            t.get(PREFIX + "a" * 32, session)
