"""Isolation decisions, pure: tenants from tokens and certificates, sessions owned by
their tenant, worker placement and spares, fault accounting (issue #12)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from snakebridge.errors import BadRequest, LimitExceeded
from snakebridge_server.auth import Identities, cert_tenant, parse_tokens
from snakebridge_server.config import ConfigError
from snakebridge_server.faults import FaultLedger
from snakebridge_server.isolation import owner_key, place, spares_to_start
from snakebridge_server.refids import WorkerKey
from snakebridge_server.sessions import SessionTable

# -- tenants ----------------------------------------------------------------------------


def test_a_single_token_file_is_the_one_tenant_default() -> None:
    assert parse_tokens(b"  s3cret\n") == {b"s3cret": "default"}


def test_named_tokens_name_their_tenants_and_skip_comments() -> None:
    text = b"# tenants\n\nalice tok-a\nbob   tok-b\n"
    assert parse_tokens(text) == {b"tok-a": "alice", b"tok-b": "bob"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"alice tok-a\nalice tok-b\n", "named twice"),
        (b"alice tok\nbob tok\n", "same token"),
        (b"alice tok-a extra\nbob tok-b\n", "not 'NAME TOKEN'"),
        (b"al/ice tok-a\nbob tok-b\n", "must match"),
        (b"   \n", "empty"),
    ],
)
def test_malformed_token_files_are_refused_naming_the_problem(text: bytes, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_tokens(text)


def test_the_token_presented_names_the_tenant_and_an_unknown_one_none() -> None:
    ids = Identities(tokens={b"tok-a": "alice", b"tok-b": "bob"})
    assert ids.tenant_of("Bearer tok-b", None) == "bob"
    assert ids.tenant_of("Bearer tok-c", None) is None
    assert ids.tenant_of(None, None) is None
    assert ids.authenticated


def test_without_authentication_everyone_is_one_tenant_and_unauthenticated() -> None:
    ids = Identities()
    assert ids.tenant_of("Bearer anything", None) == ids.tenant_of(None, None) == ""
    assert not ids.authenticated


def test_a_client_certificate_names_the_tenant_by_cn_else_san() -> None:
    cn = {"subject": ((("organizationName", "X"),), (("commonName", "billing"),))}
    san = {"subject": ((("organizationName", "X"),),), "subjectAltName": (("DNS", "etl.x"),)}
    assert cert_tenant(cn) == "billing"
    assert cert_tenant(san) == "etl.x"
    assert cert_tenant(None) is None
    assert Identities(certificates=True).tenant_of(None, cn) == "billing"


# -- sessions belong to their tenant ---------------------------------------------------


def _table() -> SessionTable:
    return SessionTable(max_sessions=10, max_refs_per_session=10, max_refs_total=100, ttl=60)


def test_another_tenant_cannot_use_or_see_a_session() -> None:
    table = _table()
    table.begin_call("s1", 0.0, "alice")
    with pytest.raises(BadRequest, match="another client"):
        table.begin_call("s1", 1.0, "mallory")
    assert table.owned("s1", "mallory") is None
    assert table.owned("s1", "alice") is not None
    assert table.has_tenant("alice") and not table.has_tenant("mallory")


# -- placement --------------------------------------------------------------------------


@dataclass
class W:
    key: WorkerKey
    alive: bool = True
    state: str = "ready"
    in_flight: int = 0


def _w(slot: int, **kw: object) -> W:
    return W(WorkerKey("p", slot, 1), **kw)  # type: ignore[arg-type]


def test_an_owner_gets_its_own_worker_else_a_spare_assigned_to_it() -> None:
    a, b = _w(0), _w(1)
    assigned = {a.key: "s:alice\0x"}
    assert place([a, b], assigned, "s:alice\0x", []).worker is a
    spare = place([a, b], assigned, "s:bob\0y", [])
    assert (spare.action, spare.worker, spare.assign) == ("use", b, True)


def test_no_spare_starts_a_free_slot_or_waits_for_one_starting() -> None:
    a = _w(0)
    assigned = {a.key: "t:alice"}
    assert place([a, None], assigned, "t:bob", [1]).action == "start"
    starting = place([a, _w(1, alive=False, state="starting")], assigned, "t:bob", [])
    assert (starting.action, starting.full) == ("wait", False)
    assert place([a, None], assigned, "t:bob", [], pending=1).full is False


def test_every_worker_dedicated_means_a_full_wait() -> None:
    a, b = _w(0), _w(1)
    assigned = {a.key: "t:alice", b.key: "t:carol"}
    decision = place([a, b], assigned, "t:bob", [])
    assert (decision.action, decision.full) == ("wait", True)


def test_spares_are_topped_up_within_the_free_slots() -> None:
    a = _w(0)
    assert spares_to_start([a, None, None], {a.key: "t:x"}, 2, [1, 2]) == [1, 2]
    assert spares_to_start([a, None, None], {}, 2, [1, 2]) == [1]
    assert spares_to_start([a, None], {a.key: "t:x"}, 3, [1]) == [1]


def test_owner_keys_never_collide_across_levels_and_tenants() -> None:
    assert owner_key("shared", "a", "s") is None
    assert owner_key("tenant", "a", "s") == owner_key("tenant", "a", "t")
    assert owner_key("session", "a", "s") != owner_key("session", "b", "s")


# -- fault accounting -------------------------------------------------------------------


def test_a_session_over_its_crash_limit_is_refused_and_others_are_not() -> None:
    ledger = FaultLedger(session_limit=2, tenant_limit=0, window=60)
    for t in (0.0, 1.0):
        ledger.record(t, "mallory", "storm")
    with pytest.raises(LimitExceeded, match="session_crash_limit=2"):
        ledger.check(2.0, "mallory", "storm")
    ledger.check(2.0, "mallory", "other")
    ledger.check(2.0, "alice", "storm")
    ledger.check(61.5, "mallory", "storm")  # the oldest crash aged out


def test_a_named_tenant_over_its_limit_is_refused_but_the_anonymous_one_never() -> None:
    ledger = FaultLedger(session_limit=0, tenant_limit=2, window=60)
    for i in range(2):
        ledger.record(0.0, "mallory", f"s{i}")
        ledger.record(0.0, "", f"s{i}")
    with pytest.raises(LimitExceeded, match="tenant_crash_limit=2"):
        ledger.check(1.0, "mallory", "fresh")
    ledger.check(1.0, "", "fresh")


def test_the_breaker_counts_each_source_once_per_window() -> None:
    ledger = FaultLedger(session_limit=3, tenant_limit=0, window=60)
    assert ledger.breaker_counts(0.0, "a")
    assert not ledger.breaker_counts(1.0, "a")
    assert ledger.breaker_counts(1.0, "b")
    assert ledger.breaker_counts(61.5, "a")
