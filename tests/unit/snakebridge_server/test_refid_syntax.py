"""The one ref id syntax check (``refids.check_ref_id``), shared by server and worker."""

from __future__ import annotations

import pytest

from snakebridge.errors import BadRequest, SessionLost
from snakebridge.wire.text import clip
from snakebridge_server.refids import WorkerKey, check_ref_id, parse_ref_id

BOOT = "b00t"
TOKEN = "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "bad",
    [
        f"b00t.default.0.\u00b2.{TOKEN}",  # str.isdigit() is true, int() raised ValueError
        f"b00t.default.\u0661.1.{TOKEN}",  # Arabic-Indic one: int() read it as 1
        f"b00t.default.0. 1.{TOKEN}",
        f"b00t.default.0.+1.{TOKEN}",
        f"b00t.default.0.01.{TOKEN}",  # a second spelling of incarnation 1
        f"b00t.default.0.1.{TOKEN}\n",
        f"b00t..0.1.{TOKEN}",
        f"b00t.default.0.1.{TOKEN}.8",
        f"b00t.default.0.1.{TOKEN.upper()}",  # one spelling per token too
        "b00t.default.0.1.7",  # the sequential counter of old
    ],
)
def test_ref_id_with_anything_but_plain_ascii_numbers_is_bad_request(bad: str) -> None:
    with pytest.raises(BadRequest, match="malformed ref id"):
        parse_ref_id(bad, BOOT)
    with pytest.raises(BadRequest, match="malformed ref id"):
        check_ref_id(bad)


def test_well_formed_ref_ids_parse_as_before() -> None:
    assert parse_ref_id(f"b00t.gpu-pool_2.10.3.{TOKEN}", BOOT) == WorkerKey("gpu-pool_2", 10, 3)
    with pytest.raises(SessionLost):
        parse_ref_id(f"1a2b3c4d.default.0.1.{TOKEN}", BOOT)


@pytest.mark.parametrize(
    ("text", "keep_end"),
    [(" padded \n", False), ("x" * 50 + "   ", False), ("   " + "x" * 50, True), ("\t", False)],
)
def test_clipped_text_never_begins_or_ends_with_whitespace(text: str, keep_end: bool) -> None:
    out = clip(text, 20, keep_end=keep_end)
    assert out == out.strip()
    assert len(out) <= 20 + len("...[999 characters cut]...")
