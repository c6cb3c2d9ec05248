"""A ref reaches its object only from the session that owns it (issue #10, finding 4).

The attacker is a second client of the same server, on the same (single) worker as its
victim. It forges refs two ways: by counting down from an id it was given itself, and by
using the victim's exact id (as if it had leaked). Every use answers ``RefNotFound``,
word for word what an id that never existed answers, and the victim's objects are intact.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

import snakebridge
from snakebridge import Ref, RefNotFound, StreamRef
from snakebridge.wire.codec import RefPayload

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def _counted_down(ref_id: str, steps: int) -> Iterator[str]:
    """Ids built from ``ref_id`` by counting its last part down: decimal for a sequential
    counter, 32 hex digits for a random token (the attack only gets harder there)."""
    prefix, _, last = ref_id.rpartition(".")
    if len(last) < 32:
        n = int(last)
        yield from (f"{prefix}.{n - k}" for k in range(1, min(steps, n - 1) + 1))
    else:
        n = int(last, 16)
        yield from (f"{prefix}.{n - k:0{len(last)}x}" for k in range(1, steps + 1))


def _forge(ref_id: str, client: snakebridge.Client, *, stream: bool = False) -> Ref:
    """A Ref for ``ref_id`` that ``client`` sends in its own session."""
    payload = RefPayload(stream, ref_id, client.current_session(), "default", "Thing")
    return (StreamRef if stream else Ref)(payload, client)


async def _drain(stream: Any) -> list[Any]:
    return [item async for item in stream]


async def _every_use_is_ref_not_found(
    mallory: snakebridge.Client, ref_id: str, own: Ref, *, stream: bool = False
) -> list[str]:
    """Try every use of ``ref_id`` as mallory; returns the RefNotFound texts (with the id
    cut out). Fails the test if any use succeeds or fails otherwise."""
    texts: list[str] = []
    session = mallory.current_session()
    attempts: list[Any] = [
        lambda r: mallory.get_attr(r, "name", session=session),
        lambda r: mallory.set_attr(r, "name", "pwned"),
        lambda r: mallory.call_method(r, "rename", ["pwned"]),
        lambda r: mallory.call("remote_helpers", "echo", [r]),
        lambda r: mallory.call("remote_helpers", "type_names", [], {"value": [r]}),
        lambda r: mallory.set_attr(own, "child", r),  # the ref as a SetAttr value
        lambda r: _drain(mallory.stream(r)),
        lambda r: _drain(mallory.stream(r, "rename", ["pwned"])),
    ]
    if stream:
        attempts.append(lambda r: mallory.stream_next(r))
    for attempt in attempts:
        with pytest.raises(RefNotFound) as info:
            await attempt(_forge(ref_id, mallory, stream=stream))
        texts.append(str(info.value).replace(ref_id, "<id>"))
    # Release answers a count, not an error: nothing of someone else's is freed.
    assert await mallory.release_ref(_forge(ref_id, mallory, stream=stream)) == 0
    return texts


async def test_ids_counted_down_from_ones_own_reach_no_other_sessions_object(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1")
    async with (
        snakebridge.Client(srv.address) as alice,
        snakebridge.Client(srv.address) as mallory,
    ):
        secret = await alice.call_class("remote_helpers", "Thing", ["alice's"])
        own = await mallory.call_class("remote_helpers", "Thing", ["mallory's"])
        guesses = list(_counted_down(own.id, 8))
        assert guesses
        for guess in guesses:
            await _every_use_is_ref_not_found(mallory, guess, own)
        assert await alice.get_attr(secret, "name") == "alice's"
        assert await alice.get_attr(secret, "child.label") == "child"


async def test_a_leaked_ref_id_is_useless_to_another_session(make_server: Any) -> None:
    srv = make_server("--workers", "1")
    async with (
        snakebridge.Client(srv.address) as alice,
        snakebridge.Client(srv.address) as mallory,
    ):
        thing = await alice.call_class("remote_helpers", "Thing", ["alice's"])
        bag = await alice.call_class("remote_helpers", "Bag", [])
        counter = await alice.call("remote_helpers", "counter")
        assert isinstance(counter, StreamRef)
        own = await mallory.call_class("remote_helpers", "Thing", ["mallory's"])
        prefix = own.id.rpartition(".")[0]
        assert thing.id.startswith(prefix + ".")  # the same worker

        texts = set(await _every_use_is_ref_not_found(mallory, thing.id, own))
        texts |= set(await _every_use_is_ref_not_found(mallory, bag.id, own))
        texts |= set(await _every_use_is_ref_not_found(mallory, counter.id, own, stream=True))
        # Word for word what an id that never existed answers: no oracle for live ids.
        never = f"{prefix}.{secrets.token_hex(16)}"
        expected = set(await _every_use_is_ref_not_found(mallory, never, own, stream=True))
        assert texts == expected and len(expected) == 1

        assert await alice.get_attr(thing, "name") == "alice's"
        assert await alice.get_attr(thing, "child.label") == "child"
        assert await _drain(alice.stream(bag, "items")) == [1, 2, 3]
        assert await alice.stream_next(counter) == 0  # not advanced, not released
        assert await alice.release_ref(thing, bag, counter) == 3


async def test_calls_on_a_ref_run_in_the_refs_own_session(server: Any) -> None:
    async with snakebridge.Client(server.address) as client:
        async with client.session() as session:
            thing = await session.call_class("remote_helpers", "Thing", ["t"])
            numbers = await session.call("remote_helpers", "counter")
            # The client's own methods (auto session) reach the session's refs.
            assert await client.call_method(thing, "rename", ["u"]) == "u"
            await client.set_attr(thing, "name", "v")
            assert await client.get_attr(thing, "name") == "v"
            assert await client.stream_next(numbers) == 0
            assert [n async for n in numbers] == [1, 2]
            # ... but naming another session explicitly is refused.
            with pytest.raises(RefNotFound):
                await client.get_attr(thing, "name", session=client.current_session())
            other = await client.call_class("remote_helpers", "Thing", ["o"])
            assert await client.release_ref(thing, other) == 2
