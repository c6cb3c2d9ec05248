"""Decoding crafted input is bounded in memory and in work (issue #10, finding 10).

Each test is the attack itself: it must fail fast with ``SerializationError``, before the
memory or the quadratic work it aims at is spent.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from snakebridge.errors import SerializationError
from snakebridge.wire.codec import (
    DECODE_ALLOWANCE,
    EXT_BIGINT,
    EXT_TUPLE,
    MAX_HASH_COLLISIONS,
    Limits,
    decode,
    encode,
)

MiB = 1024 * 1024
P = 2**61 - 1  # CPython hashes ints (and Decimals, and complex parts) modulo this prime


def peak_of(fn: Callable[[], Any]) -> int:
    """Bytes traced at the peak of ``fn()`` (it may raise)."""
    tracemalloc.start()
    try:
        fn()
    except SerializationError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def array_of(item: bytes, count: int) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big") + item * count


# -- decoded size ---------------------------------------------------------------------


@pytest.mark.parametrize(("item", "size"), [(b"\x90", 64), (b"\x80", 64), (b"\xd4\x02\x90", 216)])
def test_empty_containers_stop_at_the_budget_before_allocating(item: bytes, size: int) -> None:
    """2 MiB of [] (or {}, or set()) would decode into 128-150 MiB."""
    count = 2 * MiB // len(item)
    data = array_of(item, count)
    assert count * size > 60 * MiB  # what the attack would cost
    limits = Limits(max_decoded_size=4 * MiB)
    with pytest.raises(SerializationError, match="max_decoded_size"):
        decode(data, limits=limits)
    # The budget, the outer list's slots (8 bytes per element, counted when it is
    # complete), the payload copies in flight.
    assert peak_of(lambda: decode(data, limits=limits)) < 4 * MiB + 8 * count + 4 * MiB


def test_default_limits_refuse_15_mib_of_empty_dicts_at_16_bytes_per_byte() -> None:
    """The reported attack, with the default limits: 15 MiB decoded into ~1.1 GiB."""
    data = array_of(b"\x80", 15 * MiB)
    budget = Limits().decode_budget(len(data))
    assert budget == DECODE_ALLOWANCE + 16 * len(data)
    with pytest.raises(SerializationError, match="max_expansion 16"):
        decode(data)


def test_payload_copies_of_nested_tuples_count_against_the_budget() -> None:
    """Each tuple level holds its own copy of its payload while it is decoded: 100 levels
    around 1 MiB were 100 MiB alive at once."""
    value: Any = b"x" * MiB
    for _ in range(99):
        value = (value,)
    data = encode(value)
    limits = Limits(max_decoded_size=16 * MiB)
    with pytest.raises(SerializationError, match="max_decoded_size"):
        decode(data, limits=limits)
    assert peak_of(lambda: decode(data, limits=limits)) < 16 * MiB + 2 * len(data)
    shallow = ((((b"x" * MiB,),),),)
    assert decode(encode(shallow)) == shallow  # the default limits carry a few levels


def test_ordinary_shapes_decode_under_the_default_limits() -> None:
    pairs = [[i, i + 1] for i in range(300_000)]  # 27 bytes per encoded byte
    records = [{"id": i, "name": "n", "v": 1.5} for i in range(50_000)]
    for value in (pairs, records, [(i, -i) for i in range(100_000)], list(range(10**6))):
        assert decode(encode(value)) == value


def test_uncounted_small_inputs_and_counted_big_ones_agree() -> None:
    value = [[[i], (i,), {i: {i}}] for i in range(30_000)]  # ~600 KiB: counted
    data = encode(value)
    assert len(data) > Limits()._uncounted_below
    assert decode(data) == value
    small = value[:100]
    assert decode(encode(small)) == small


@pytest.mark.parametrize(
    "field", ["max_size", "max_items", "max_depth", "max_decoded_size", "max_expansion"]
)
def test_limits_reject_values_out_of_range(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: -1})


def test_max_expansion_zero_leaves_only_the_absolute_limit() -> None:
    assert Limits(max_expansion=0, max_decoded_size=5).decode_budget(10**9) == 5


# -- hash flooding --------------------------------------------------------------------


def bigint(k: int) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_BIGINT, k.to_bytes((k.bit_length() + 8) // 8, "big", signed=True))


def colliding_map(keys: Iterator[Any], n: int) -> bytes:
    packed: bytes = msgpack.packb({k: None for _, k in zip(range(n), keys, strict=False)})
    return packed


def colliding_ints() -> Iterator[msgpack.ExtType]:
    k = 2**64 + 12345
    while True:
        yield bigint(k)
        k += P


def test_map_of_20000_colliding_big_int_keys_is_refused_at_the_bound() -> None:
    """The reported attack: 250 KiB, 1.2 s of quadratic inserts."""
    data = colliding_map(colliding_ints(), 20_000)
    assert 200_000 < len(data) < 300_000
    with pytest.raises(SerializationError, match=f"more than {MAX_HASH_COLLISIONS} distinct"):
        decode(data)


def test_colliding_keys_up_to_the_bound_still_decode() -> None:
    keys = [2**64 + 7 + i * P for i in range(MAX_HASH_COLLISIONS)]
    assert len({hash(k) for k in keys}) == 1
    assert decode(encode(dict.fromkeys(keys, 0))) == dict.fromkeys(keys, 0)
    one_more = [*keys, keys[-1] + P]
    with pytest.raises(SerializationError, match="share one hash"):
        decode(encode(dict.fromkeys(one_more, 0)))


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param([Decimal(2**64 + i * P) for i in range(100)], id="decimal"),
        # hash(complex(r, i)) == hash(r) + 1000003 * hash(i): trade one against the other.
        pytest.param([complex(5 - 1000003 * i, i) for i in range(100)], id="complex"),
        pytest.param([(2**64 + i * P,) for i in range(100)], id="tuple"),
        pytest.param([frozenset({2**64 + i * P}) for i in range(100)], id="frozenset"),
    ],
)
def test_colliding_keys_of_every_steerable_type_are_refused(keys: list[Any]) -> None:
    assert len({hash(k) for k in keys}) <= 2
    with pytest.raises(SerializationError, match="share one hash"):
        decode(encode(set(keys)))
    with pytest.raises(SerializationError, match="share one hash"):
        decode(encode(dict.fromkeys(keys)))


def test_equal_values_and_chance_collisions_are_not_counted() -> None:
    """hash(-1) == hash(-2), so (x, -1) and (x, -2) collide: real data has a few such."""
    value = [(0, -1), (0, -2), (2**70,), (2**70,)] * 1000
    assert decode(encode(value)) == value
    keyed = {(i, -1): 1 for i in range(100)} | {(i, -2): 2 for i in range(100)}
    assert decode(encode(keyed)) == keyed


def test_hashing_nested_tuples_is_bounded() -> None:
    """hash(tuple) is recomputed at every level: 100 levels of tuples around 100,000 ints
    hashed every int 100 times."""
    inner = msgpack.packb(list(range(100_000)))
    data = msgpack.packb(msgpack.ExtType(EXT_TUPLE, inner))
    for _ in range(60):
        data = msgpack.packb(msgpack.ExtType(EXT_TUPLE, b"\x91" + data))
    with pytest.raises(SerializationError, match="tuples nest too deeply"):
        decode(data)
