"""Unit tests for the value codec (sdk/snakebridge/codec.py): pure, no event loop."""

from __future__ import annotations

import collections
import datetime as dt
import enum
import math
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snakebridge.errors import SerializationError
from snakebridge.wire import codec
from snakebridge.wire.codec import Limits, RefPayload, decode, encode

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is installed in the dev venv
    np = None  # type: ignore[assignment]

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")


def _zones_available() -> tuple[list[zoneinfo.ZoneInfo], str]:
    try:
        zones = [zoneinfo.ZoneInfo("Europe/Paris"), zoneinfo.ZoneInfo("America/New_York")]
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        reason = f"tzdata is not available ({exc}); ZoneInfo cases are skipped"
        print(reason)
        return [], reason
    return zones, ""


ZONES, NO_ZONES_REASON = _zones_available()
needs_zones = pytest.mark.skipif(not ZONES, reason=NO_ZONES_REASON or "tzdata missing")

PROPERTY = settings(max_examples=200, deadline=None)


# --- helpers --------------------------------------------------------------------------------


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b) and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _same_tz(a: dt.tzinfo | None, b: dt.tzinfo | None) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, zoneinfo.ZoneInfo):
        assert isinstance(b, zoneinfo.ZoneInfo)
        assert a.key == b.key
    else:
        assert a == b


def assert_same(a: Any, b: Any) -> None:
    """``a == b`` with the exact same types all the way down; nan, -0.0 and Decimal NaN
    compared by value bits / text rather than ``==``."""
    assert type(a) is type(b), f"{type(a).__name__} became {type(b).__name__}: {a!r} / {b!r}"
    t = type(a)
    if t is float:
        assert _same_float(a, b), (a, b)
    elif t is complex:
        assert _same_float(a.real, b.real) and _same_float(a.imag, b.imag), (a, b)
    elif t is Decimal:
        assert str(a) == str(b)
    elif t is list or t is tuple:
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif t is dict:
        assert a.keys() == b.keys()
        b_keys = {k: k for k in b}
        for k, v in a.items():
            assert_same(k, b_keys[k])
            assert_same(v, b[k])
    elif t is set or t is frozenset:
        assert a == b
        b_items = {x: x for x in b}
        for x in a:
            assert_same(x, b_items[x])
    elif t is dt.datetime:
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None)
        assert a.fold == b.fold
        _same_tz(a.tzinfo, b.tzinfo)
        assert a.utcoffset() == b.utcoffset()
        assert a.tzname() == b.tzname()
    elif t is dt.time:
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None)
        assert a.fold == b.fold
        _same_tz(a.tzinfo, b.tzinfo)
    else:
        assert a == b, (a, b)


def roundtrip(value: Any, **kwargs: Any) -> Any:
    return decode(encode(value, **kwargs))


def ext(code: int, payload: Any) -> bytes:
    """A top-level extension value whose payload is ``payload`` (packed unless bytes)."""
    body = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
    packed: bytes = msgpack.packb(msgpack.ExtType(code, body), use_bin_type=True)
    return packed


def nested_ext_tuples(levels: int) -> bytes:
    """``levels`` EXT_TUPLEs, each a one-element tuple around the next, ending in None."""
    data: bytes = msgpack.packb(None)
    for _ in range(levels):
        data = msgpack.packb(msgpack.ExtType(codec.EXT_TUPLE, b"\x91" + data))
    return data


# --- strategies -----------------------------------------------------------------------------

big_ints = st.one_of(
    st.integers(),
    st.integers(min_value=2**64),
    st.integers(max_value=-(2**63) - 1),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(2**64)]),
)
texts = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=())),  # includes lone surrogates
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
)
offsets = st.timedeltas(
    min_value=-dt.timedelta(hours=24) + dt.timedelta(microseconds=1),
    max_value=dt.timedelta(hours=24) - dt.timedelta(microseconds=1),
)
tzinfos = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.builds(dt.timezone, offsets),
    *([st.sampled_from(ZONES)] if ZONES else []),
)
datetimes = st.builds(
    lambda naive, tz, fold: naive.replace(tzinfo=tz, fold=fold),
    st.datetimes(),
    tzinfos,
    st.sampled_from([0, 1]),
)
times = st.builds(
    lambda naive, tz, fold: naive.replace(tzinfo=tz, fold=fold),
    st.times(),
    tzinfos,
    st.sampled_from([0, 1]),
)
decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [Decimal(s) for s in ("NaN", "-NaN", "sNaN", "NaN123", "-0", "0E-7", "Infinity")]
        + [Decimal(s) for s in ("-Infinity", "1.000", "1E+999999", "-1.5E-999999")]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    big_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    texts,
    st.binary(),
    st.binary().map(bytearray),
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    decimals,
    st.uuids(),
)
hashables = st.recursive(
    st.one_of(st.none(), st.booleans(), big_ints, texts, st.binary()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(inner, max_size=3),
    ),
    max_leaves=6,
)
values = st.recursive(
    st.one_of(scalars, st.sets(hashables, max_size=4), st.frozensets(hashables, max_size=4)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(hashables, children, max_size=4),
    ),
    max_leaves=12,
)


# --- round trip -----------------------------------------------------------------------------


@PROPERTY
@given(values)
def test_every_supported_value_round_trips_with_exact_types(value: Any) -> None:
    assert_same(value, roundtrip(value))


@PROPERTY
@given(values)
def test_encoding_is_deterministic_for_the_same_value(value: Any) -> None:
    assert encode(value) == encode(value)


def test_none_stays_none() -> None:
    assert roundtrip(None) is None


def test_int_stays_int_not_float() -> None:
    for n in (0, 1, -1, 2**53 + 1, 2**64 - 1, 2**64, -(2**63) - 1, 10**40):
        back = roundtrip(n)
        assert type(back) is int
        assert back == n


def test_bytes_stay_bytes_not_str() -> None:
    for b in (b"", b"abc", bytes(range(256))):
        back = roundtrip(b)
        assert type(back) is bytes
        assert back == b


def test_bytearray_stays_bytearray() -> None:
    back = roundtrip(bytearray(b"\x00\xff"))
    assert type(back) is bytearray
    assert back == bytearray(b"\x00\xff")


def test_bytearray_nested_in_containers_stays_bytearray() -> None:
    value = [1, (bytearray(b"a"), {"k": [bytearray(b"b")]}), {"x": bytearray()}, b"c"]
    assert_same(value, roundtrip(value))


def test_containers_without_bytearray_are_encoded_without_copying() -> None:
    from snakebridge.wire.codec import _box_bytearrays

    plain = [1, "a", (2.0, None), {"k": [b"x"]}]
    assert _box_bytearrays(plain) is plain


def test_user_dict_with_id_and_session_id_stays_a_dict() -> None:
    value = {"id": 1, "session_id": "x"}
    back = roundtrip(value)
    assert type(back) is dict
    assert back == value


def test_user_dict_shaped_like_a_ref_payload_is_not_turned_into_a_ref() -> None:
    value: dict[str, str] = {"id": "r1", "session_id": "s", "pool": "default", "type_name": "Foo"}
    assert_same(value, decode(encode(value), ref_factory=lambda p: pytest.fail("not a ref")))


def test_tuple_and_list_are_kept_apart() -> None:
    value: list[Any] = [(1, 2), [1, 2], ((),), [[]], ()]
    assert_same(value, roundtrip(value))


def test_dict_with_tuple_key_round_trips() -> None:
    assert_same({(1, 2): 3}, roundtrip({(1, 2): 3}))


def test_dict_with_frozenset_and_int_keys_round_trips() -> None:
    value = {frozenset({1, "a"}): "fs", 7: "int", "7": "str", (): "empty tuple"}
    assert_same(value, roundtrip(value))


def test_bool_stays_bool_and_true_is_not_one() -> None:
    back = roundtrip([True, False, 1, 0])
    assert back[0] is True
    assert back[1] is False
    assert type(back[2]) is int
    assert type(back[3]) is int


def test_float_specials_keep_their_bits() -> None:
    for f in (-0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308):
        assert_same(f, roundtrip(f))


def test_lone_surrogates_in_strings_round_trip() -> None:
    value = {"\udc80key": ["\ud800", "a\udfffb"]}
    assert_same(value, roundtrip(value))


def test_decimal_specials_round_trip_textually() -> None:
    for text in ("NaN", "-NaN", "sNaN", "-0", "Infinity", "-Infinity", "1.2300", "1E+5"):
        assert_same(Decimal(text), roundtrip(Decimal(text)))


def test_timezone_aware_datetime_keeps_its_offset() -> None:
    tz = dt.timezone(dt.timedelta(hours=-3, minutes=-30, microseconds=-1))
    value = dt.datetime(2024, 3, 1, 12, 0, 0, 5, tzinfo=tz)
    assert_same(value, roundtrip(value))


def test_utc_datetime_round_trips() -> None:
    value = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    assert_same(value, roundtrip(value))


@needs_zones
def test_zoneinfo_datetime_keeps_its_zone_and_fold() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    for fold in (0, 1):  # 02:30 on 2024-10-27 happens twice in Paris
        value = dt.datetime(2024, 10, 27, 2, 30, tzinfo=paris, fold=fold)
        back = roundtrip(value)
        assert_same(value, back)
        assert back.utcoffset() == value.utcoffset()


@needs_zones
def test_time_with_zoneinfo_round_trips() -> None:
    value = dt.time(8, 15, tzinfo=zoneinfo.ZoneInfo("America/New_York"))
    assert_same(value, roundtrip(value))


def test_date_time_timedelta_uuid_round_trip() -> None:
    value = [
        dt.date(1, 1, 1),
        dt.date(9999, 12, 31),
        dt.time(23, 59, 59, 999999),
        dt.timedelta(days=-999999999),
        dt.timedelta(days=999999999, seconds=86399, microseconds=999999),
        uuid.UUID(int=0),
        uuid.UUID(int=2**128 - 1),
    ]
    assert_same(value, roundtrip(value))


def test_empty_containers_round_trip() -> None:
    value = [[], (), {}, set(), frozenset(), b"", ""]
    assert_same(value, roundtrip(value))


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode({"a": (1, 2)})
    assert_same({"a": (1, 2)}, decode(bytearray(data)))
    assert_same({"a": (1, 2)}, decode(memoryview(data)))


# --- numpy ----------------------------------------------------------------------------------


def _same_array(a: Any, b: Any) -> None:
    assert type(b) is np.ndarray
    assert b.dtype == a.dtype
    assert b.dtype.str == a.dtype.str
    assert b.shape == a.shape
    assert b.tobytes() == a.tobytes()  # bitwise: nan payloads, -0.0 and NaT included


@needs_numpy
@pytest.mark.parametrize(
    "array",
    [
        pytest.param(lambda: np.array([1.5, -0.0, np.nan, np.inf]), id="float64"),
        pytest.param(lambda: np.array([-128, 0, 127], dtype=np.int8), id="int8"),
        pytest.param(lambda: np.array([True, False, True]), id="bool"),
        pytest.param(lambda: np.array([1 + 2j, np.nan - 1j]), id="complex128"),
        pytest.param(lambda: np.arange(6, dtype=">i4").reshape(2, 3), id="big-endian-i4"),
        pytest.param(lambda: np.arange(6, dtype="<u2").reshape(3, 2), id="uint16"),
        pytest.param(lambda: np.array([1.5], dtype=np.float16), id="float16"),
        pytest.param(
            lambda: np.array(["2020-01-01T00:00:00.123456789", "NaT"], dtype="datetime64[ns]"),
            id="datetime64[ns]",
        ),
        pytest.param(lambda: np.array([1, -2], dtype="timedelta64[s]"), id="timedelta64[s]"),
        pytest.param(lambda: np.array(["abc", "hello"], dtype="<U5"), id="unicode-U5"),
        pytest.param(lambda: np.array([b"ab", b""], dtype="S2"), id="bytes-S2"),
        pytest.param(lambda: np.array(3.5), id="0-d"),
        pytest.param(lambda: np.array(7, dtype=">i8"), id="0-d-big-endian"),
        pytest.param(lambda: np.zeros((0, 3)), id="empty-0x3"),
        pytest.param(lambda: np.zeros((2, 0, 4), dtype=np.int32), id="empty-2x0x4"),
        pytest.param(lambda: np.arange(24.0).reshape(2, 3, 4)[:, ::2, 1:], id="strided-view"),
    ],
)
def test_ndarray_round_trips_with_dtype_and_shape(array: Any) -> None:
    value = array()
    _same_array(value, roundtrip(value))


@needs_numpy
@PROPERTY
@given(st.data())
def test_random_plain_dtype_arrays_round_trip_bitwise(data: st.DataObject) -> None:
    from hypothesis.extra import numpy as hnp

    dtype = data.draw(
        st.one_of(
            hnp.boolean_dtypes(),
            hnp.integer_dtypes(endianness="?"),
            hnp.unsigned_integer_dtypes(endianness="?"),
            hnp.floating_dtypes(endianness="?"),
            hnp.complex_number_dtypes(endianness="?"),
            hnp.datetime64_dtypes(endianness="?"),
            hnp.timedelta64_dtypes(endianness="?"),
            hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=8),
            hnp.byte_string_dtypes(min_len=1, max_len=8),
        )
    )
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0))
    if dtype.kind in "iufcmM":
        # Every bit pattern is a value of these kinds (nan payloads, -0.0, NaT, subnormals):
        # drawing the buffer covers them all, and costs a fraction of drawing each element.
        raw = data.draw(st.binary(min_size=dtype.itemsize * math.prod(shape)).map(bytearray))
        value = np.frombuffer(raw[: dtype.itemsize * math.prod(shape)], dtype).reshape(shape)
    else:
        value = data.draw(hnp.arrays(dtype, shape))
    if data.draw(st.booleans()):
        value = np.asfortranarray(value)
    _same_array(value, roundtrip(value))
    if value.ndim == 0:
        scalar = value[()]
        back = roundtrip(scalar)
        assert type(back) is type(scalar)
        assert back.dtype == scalar.dtype
        assert back.tobytes() == scalar.tobytes()


@needs_numpy
@pytest.mark.parametrize("ndim", [17, 32])
def test_arrays_with_up_to_32_dimensions_round_trip(ndim: int) -> None:
    value = np.arange(2, dtype=np.int16).reshape((1,) * (ndim - 1) + (2,))
    _same_array(value, roundtrip(value))


@needs_numpy
def test_array_with_33_dimensions_goes_to_on_unencodable() -> None:
    value = np.zeros((1,) * 33)
    hook = _RefHook()
    encode(value, on_unencodable=hook)
    assert hook.seen == [value]


@needs_numpy
def test_fortran_ordered_array_round_trips_as_a_writable_array() -> None:
    value = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    assert not value.flags.c_contiguous
    back = roundtrip(value)
    _same_array(value, back)
    assert back.flags.writeable
    back[0, 0] = 99.0
    assert value[0, 0] == 0.0


@needs_numpy
def test_decoded_arrays_are_writable() -> None:
    for value in (np.arange(3), np.array(2.0), np.zeros((0, 2))):
        assert roundtrip(value).flags.writeable


@needs_numpy
@pytest.mark.parametrize(
    "scalar",
    [
        pytest.param(lambda: np.float32(1.5), id="float32"),
        pytest.param(lambda: np.int64(-(2**62)), id="int64"),
        pytest.param(lambda: np.bool_(True), id="bool_"),
        pytest.param(lambda: np.complex64(1 - 2j), id="complex64"),
        pytest.param(lambda: np.uint8(255), id="uint8"),
        pytest.param(lambda: np.datetime64("2020-01-01"), id="datetime64[D]"),
        pytest.param(lambda: np.timedelta64(5, "ms"), id="timedelta64[ms]"),
        pytest.param(lambda: np.str_("abc"), id="str_"),
        pytest.param(lambda: np.str_(""), id="empty-str_"),
        pytest.param(lambda: np.bytes_(b""), id="empty-bytes_"),
    ],
)
def test_numpy_scalar_round_trips_with_its_type(scalar: Any) -> None:
    value = scalar()
    back = roundtrip(value)
    assert type(back) is type(value)
    assert back.dtype == value.dtype
    assert back == value


@needs_numpy
def test_numpy_values_nested_in_containers_round_trip() -> None:
    value = {"a": (np.arange(3), [np.float64(2.5)])}
    back = roundtrip(value)
    _same_array(value["a"][0], back["a"][0])
    assert type(back["a"]) is tuple
    assert type(back["a"][1][0]) is np.float64


@needs_numpy
def test_object_dtype_array_is_not_encoded_without_a_hook() -> None:
    with pytest.raises(SerializationError, match=r"numpy\.ndarray"):
        encode(np.array([object(), 1], dtype=object))


@needs_numpy
@pytest.mark.parametrize(
    "array",
    [
        pytest.param(lambda: np.array([object()], dtype=object), id="object"),
        pytest.param(lambda: np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]), id="structured"),
        pytest.param(lambda: np.zeros(2, dtype="V8"), id="void"),
        pytest.param(lambda: np.array(["x" * 10_000]), id="U10000-beyond-the-dtype-rule"),
        pytest.param(lambda: np.ma.masked_array([1, 2], mask=[False, True]), id="masked-subclass"),
    ],
)
def test_arrays_the_decoder_would_reject_go_to_on_unencodable(array: Any) -> None:
    value = array()
    seen: list[Any] = []

    def hook(obj: Any) -> msgpack.ExtType:
        seen.append(obj)
        return codec.ref_ext(RefPayload(False, "r0", "s", "default", type(obj).__name__))

    back = decode(encode([value], on_unencodable=hook), ref_factory=lambda p: p)
    assert len(seen) == 1
    assert seen[0] is value
    assert back == [RefPayload(False, "r0", "s", "default", type(value).__name__)]


@needs_numpy
def test_numpy_void_scalar_goes_to_on_unencodable() -> None:
    with pytest.raises(SerializationError, match=r"numpy\.void"):
        encode(np.void(b"abc"))


@needs_numpy
@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (["|O8", [1], b"\x00" * 8], "object dtype"),
        (["|O", [1], b"\x00" * 8], "object dtype without size"),
        (["|V8", [1], b"\x00" * 8], "void dtype"),
        (["<f8", [2], b"\x00" * 8], "body shorter than the shape"),
        (["<f8", [1], b"\x00" * 9], "body longer than the shape"),
        (["<f8", [-1], b""], "negative dimension"),
        (["<f8", 3, b"\x00" * 24], "shape is not a list"),
        (["<f8", [1] * 33, b"\x00" * 8], "too many dimensions"),
        (["<f8", [1], "x" * 8], "body is not bytes"),
        ([8, [1], b"\x00" * 8], "dtype is not a string"),
        (["<f8", [1]], "missing body"),
        (["<f8", [2**62, 2**62], b""], "shape overflows"),
        (["<f8", [0, 2**63], b""], "dimension too large for numpy"),
        (["<U0", [2**40], b""], "zero-size elements would allocate a huge <U1 array"),
        (["<M8[parsec]", [1], b"\x00" * 8], "unknown datetime unit"),
    ],
)
def test_crafted_ndarray_payloads_raise_serialization_error(fields: list[Any], why: str) -> None:
    with pytest.raises(SerializationError):
        decode(ext(codec.EXT_NDARRAY, fields))


@needs_numpy
def test_crafted_numpy_scalar_with_object_dtype_raises_serialization_error() -> None:
    with pytest.raises(SerializationError):
        decode(ext(codec.EXT_NPSCALAR, ["|O8", b"\x00" * 8]))


# --- graceful serialization -----------------------------------------------------------------


class _RefHook:
    """An ``on_unencodable`` that records what it saw and hands out sequential refs."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, obj: Any) -> msgpack.ExtType:
        payload = RefPayload(False, f"r{len(self.seen)}", "s", "default", type(obj).__name__)
        self.seen.append(obj)
        return codec.ref_ext(payload)


def _ref(n: int, type_name: str) -> RefPayload:
    return RefPayload(False, f"r{n}", "s", "default", type_name)


def test_unencodable_leaves_become_refs_and_the_shape_is_kept() -> None:
    obj = object()
    inner = object()
    hook = _RefHook()
    back = decode(encode([1, obj, {"k": inner}], on_unencodable=hook), ref_factory=lambda p: p)
    assert hook.seen == [obj, inner]
    assert back == [1, _ref(0, "object"), {"k": _ref(1, "object")}]
    assert type(back[2]) is dict


def test_same_object_twice_reaches_the_hook_twice_dedup_is_the_hooks_job() -> None:
    obj = object()
    hook = _RefHook()
    back = decode(encode((obj, [obj]), on_unencodable=hook), ref_factory=lambda p: p)
    assert hook.seen == [obj, obj]
    assert back == (_ref(0, "object"), [_ref(1, "object")])


def test_generator_reaches_on_unencodable() -> None:
    gen = (i for i in range(3))
    hook = _RefHook()
    back = decode(encode({"g": gen}, on_unencodable=hook), ref_factory=lambda p: p)
    assert hook.seen == [gen]
    assert back == {"g": _ref(0, "generator")}


def test_unencodable_inside_tuple_set_and_dict_key_becomes_a_ref() -> None:
    class Key:
        pass

    key = Key()
    hook = _RefHook()
    value = {(1, key): frozenset({key})}
    back = decode(encode(value, on_unencodable=hook), ref_factory=lambda p: p)
    assert hook.seen == [key, key]
    assert back == {(1, _ref(0, "Key")): frozenset({_ref(1, "Key")})}


def test_stream_ref_decodes_with_stream_flag() -> None:
    payload = RefPayload(True, "it1", "s", "pool-a", "generator")
    back = decode(msgpack.packb(codec.ref_ext(payload)), ref_factory=lambda p: p)
    assert back == payload


def test_ref_factory_result_is_placed_where_the_ref_was() -> None:
    data = encode([object()], on_unencodable=_RefHook())
    assert decode(data, ref_factory=lambda p: ("handle", p.id)) == [("handle", "r0")]


def test_object_with_snakebridge_ref_method_encodes_as_ref_and_reports_its_id() -> None:
    class Handle:
        def __snakebridge_ref__(self) -> RefPayload:
            return RefPayload(False, "h1", "s", "default", "Thing")

    ref_ids: list[str] = []
    data = encode({"x": Handle()}, ref_ids=ref_ids)
    assert ref_ids == ["h1"]
    assert decode(data, ref_factory=lambda p: p) == {
        "x": RefPayload(False, "h1", "s", "default", "Thing")
    }


def test_object_whose_getattr_answers_everything_is_not_taken_for_a_ref() -> None:
    class Anything:
        def __getattr__(self, name: str) -> Any:
            return lambda: 1

    obj = Anything()
    hook = _RefHook()
    back = decode(encode([obj], on_unencodable=hook), ref_factory=lambda p: p)
    assert hook.seen == [obj]
    assert back == [_ref(0, "Anything")]
    with pytest.raises(SerializationError, match="Anything"):
        encode(obj)


def test_a_class_with_a_ref_method_is_not_itself_a_ref() -> None:
    class Handle:
        def __snakebridge_ref__(self) -> RefPayload:
            raise AssertionError("must not be called on the class")

    hook = _RefHook()
    decode(encode(Handle, on_unencodable=hook), ref_factory=lambda p: p)
    assert hook.seen == [Handle]


# --- unencodable without a hook -------------------------------------------------------------


def test_unencodable_without_hook_raises_naming_the_type() -> None:
    class Widget:
        pass

    with pytest.raises(SerializationError, match="Widget"):
        encode({"w": Widget()})
    with pytest.raises(SerializationError, match="object"):
        encode([object()])


class _D(dict):  # type: ignore[type-arg]
    pass


class _I(int):
    pass


class _S(str):
    __slots__ = ()


class _L(list):  # type: ignore[type-arg]
    pass


class _F(float):
    pass


class _T(tuple):  # type: ignore[type-arg]
    __slots__ = ()


class _Color(enum.IntEnum):
    RED = 1


class _Mode(enum.StrEnum):
    FAST = "fast"


_Point = collections.namedtuple("_Point", "x y")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(_D(a=1), id="dict-subclass"),
        pytest.param(_I(3), id="int-subclass"),
        pytest.param(_S("s"), id="str-subclass"),
        pytest.param(_L([1]), id="list-subclass"),
        pytest.param(_F(1.5), id="float-subclass"),
        pytest.param(_T((1,)), id="tuple-subclass"),
        pytest.param(collections.OrderedDict(a=1), id="OrderedDict"),
        pytest.param(collections.defaultdict(int), id="defaultdict"),
    ],
)
def test_subclass_of_a_supported_type_is_not_encoded_as_its_base(value: Any) -> None:
    hook = _RefHook()
    back = decode(encode([value], on_unencodable=hook), ref_factory=lambda p: p)
    assert hook.seen == [value]
    assert back == [_ref(0, type(value).__name__)]
    with pytest.raises(SerializationError, match=type(value).__name__):
        encode(value)


def test_datetime_with_unsupported_tzinfo_goes_to_on_unencodable() -> None:
    class Fixed(dt.tzinfo):
        def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(hours=1)

        def dst(self, d: dt.datetime | None) -> dt.timedelta | None:
            return None

        def tzname(self, d: dt.datetime | None) -> str | None:
            return None

    value = dt.datetime(2024, 1, 1, tzinfo=Fixed())
    hook = _RefHook()
    encode(value, on_unencodable=hook)
    assert hook.seen == [value]
    with pytest.raises(SerializationError, match="datetime"):
        encode(value)


def test_memoryview_is_encoded_as_bytes() -> None:
    # msgpack packs buffers natively; the decoded value is plain bytes.
    assert_same(b"abc", roundtrip(memoryview(b"abc")))


# --- cycles and depth -----------------------------------------------------------------------


def test_self_containing_list_raises_serialization_error() -> None:
    lst: list[Any] = []
    lst.append(lst)
    with pytest.raises(SerializationError):
        encode(lst)


def test_self_containing_dict_raises_serialization_error() -> None:
    d: dict[str, Any] = {}
    d["self"] = d
    with pytest.raises(SerializationError):
        encode(d)


def test_cycle_through_a_tuple_raises_serialization_error() -> None:
    lst: list[Any] = []
    lst.append((lst,))
    with pytest.raises(SerializationError):
        encode(lst)
    with pytest.raises(SerializationError):
        encode(lst, on_unencodable=_RefHook())


def test_wide_cycle_through_tuples_raises_serialization_error() -> None:
    lst: list[Any] = []
    lst.extend([(lst,)] * 1000)
    with pytest.raises(SerializationError):
        encode(lst)


def test_tuple_nested_500_deep_raises_serialization_error() -> None:
    value: Any = None
    for _ in range(500):
        value = (value,)
    with pytest.raises(SerializationError):
        encode(value)


def test_tuples_nested_up_to_max_depth_round_trip_and_one_more_raises() -> None:
    value: Any = None
    for _ in range(Limits().max_depth):
        value = (value,)
    assert_same(value, roundtrip(value))
    with pytest.raises(SerializationError):
        encode((value,))
    assert_same((((1,),),), roundtrip((((1,),),), max_depth=3))
    with pytest.raises(SerializationError):
        encode((((1,),),), max_depth=2)


def test_deep_lists_between_tuples_raise_instead_of_overflowing_the_c_stack() -> None:
    # 40 tuples each wrapping 500 lists used to segfault: every tuple is a fresh packb.
    value: Any = 0
    for _ in range(40):
        for _ in range(500):
            value = [value]
        value = (value,)
    with pytest.raises(SerializationError):
        encode(value)


def test_moderately_deep_mixed_nesting_still_round_trips() -> None:
    value: Any = 0
    for _ in range(Limits().max_depth):
        for _ in range(15):
            value = [value]
        value = (value,)
    back = roundtrip(value)
    for _ in range(Limits().max_depth):  # unwrapped by hand: == would hit the recursion limit
        assert type(back) is tuple
        assert len(back) == 1
        back = back[0]
        for _ in range(15):
            assert type(back) is list
            assert len(back) == 1
            back = back[0]
    assert back == 0
    assert type(back) is int


def test_plain_lists_nested_2000_deep_raise_serialization_error_on_encode() -> None:
    value: Any = None
    for _ in range(2000):
        value = [value]
    with pytest.raises(SerializationError):
        encode(value)


def test_decode_of_ext_tuples_nested_past_max_depth_raises_serialization_error() -> None:
    limits = Limits(max_depth=10)
    back = decode(nested_ext_tuples(10), limits=limits)
    for _ in range(10):
        assert type(back) is tuple
        back = back[0]
    assert back is None
    with pytest.raises(SerializationError):
        decode(nested_ext_tuples(11), limits=limits)
    with pytest.raises(SerializationError):
        decode(nested_ext_tuples(Limits().max_depth + 1))


def test_decode_of_plain_lists_nested_2000_deep_raises_serialization_error() -> None:
    with pytest.raises(SerializationError):
        decode(b"\x91" * 2000 + b"\xc0")


def test_decode_of_plain_maps_nested_2000_deep_raises_serialization_error() -> None:
    with pytest.raises(SerializationError):
        decode(b"\x81\x00" * 2000 + b"\xc0")


# --- limits and malformed input -------------------------------------------------------------


def test_decode_over_max_size_raises_serialization_error() -> None:
    data = encode(b"x" * 98)
    assert len(data) == 100
    with pytest.raises(SerializationError):
        decode(data, limits=Limits(max_size=10))
    with pytest.raises(SerializationError):
        decode(data, limits=Limits(max_size=99))
    assert decode(data, limits=Limits(max_size=100)) == b"x" * 98


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(list(range(11)), id="list"),
        pytest.param({i: i for i in range(11)}, id="dict"),
        pytest.param(tuple(range(11)), id="tuple"),
        pytest.param(set(range(11)), id="set"),
        pytest.param([[0] * 11], id="nested-list"),
    ],
)
def test_decode_over_max_items_raises_serialization_error(value: Any) -> None:
    data = encode(value)
    with pytest.raises(SerializationError):
        decode(data, limits=Limits(max_items=10))
    assert_same(value, decode(data, limits=Limits(max_items=11)))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(encode([1, 2, 3])[:-1], "truncated list", id="truncated-list"),
        pytest.param(encode("hello")[:-2], "truncated str", id="truncated-str"),
        pytest.param(encode((1, 2))[:-1], "truncated ext", id="truncated-ext"),
        pytest.param(encode(1) + b"x", "trailing garbage", id="trailing-garbage"),
        pytest.param(b"\xc1", "reserved byte", id="never-used-byte"),
        pytest.param(ext(99, b""), "unknown ext", id="unknown-ext-99"),
        pytest.param(ext(0, b""), "unknown ext", id="unknown-ext-0"),
        pytest.param(ext(codec.EXT_DATETIME, [2024, 1, 1]), "", id="datetime-3-fields"),
        pytest.param(
            ext(codec.EXT_DATETIME, [2024, 13, 1, 0, 0, 0, 0, 0, None]), "", id="datetime-month"
        ),
        pytest.param(
            ext(codec.EXT_DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, 1.5]), "", id="datetime-tz-float"
        ),
        pytest.param(
            ext(codec.EXT_DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, 86_400_000_000]),
            "",
            id="datetime-tz-24h",
        ),
        pytest.param(
            ext(codec.EXT_DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, "No/Such_Zone"]),
            "",
            id="datetime-unknown-zone",
        ),
        pytest.param(
            ext(codec.EXT_DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, "../../etc/passwd"]),
            "",
            id="datetime-zone-path",
        ),
        pytest.param(
            ext(codec.EXT_DATETIME, [2024, 1, 1, 0, 0, 0, 0, 2, None]), "", id="datetime-fold-2"
        ),
        pytest.param(ext(codec.EXT_DATETIME, b"\xc1"), "", id="datetime-not-msgpack"),
        pytest.param(ext(codec.EXT_DATETIME, {"y": 1}), "", id="datetime-map"),
        pytest.param(ext(codec.EXT_DATE, ["2024", 1, 1]), "", id="date-str-year"),
        pytest.param(ext(codec.EXT_TIME, [25, 0, 0, 0, 0, None]), "", id="time-hour-25"),
        pytest.param(ext(codec.EXT_TIMEDELTA, [10**10, 0, 0]), "", id="timedelta-overflow"),
        pytest.param(ext(codec.EXT_COMPLEX, b"\x00" * 3), "", id="complex-3-bytes"),
        pytest.param(ext(codec.EXT_DECIMAL, b"zz"), "", id="decimal-zz"),
        pytest.param(ext(codec.EXT_DECIMAL, "é".encode()), "", id="decimal-non-ascii"),
        pytest.param(ext(codec.EXT_UUID, b"\x00" * 3), "", id="uuid-3-bytes"),
        pytest.param(ext(codec.EXT_TUPLE, 5), "", id="tuple-payload-not-a-list"),
        pytest.param(ext(codec.EXT_TUPLE, b"\x92\x01"), "", id="tuple-payload-truncated"),
        pytest.param(ext(codec.EXT_SET, [[1]]), "", id="set-of-unhashable"),
        pytest.param(ext(codec.EXT_FROZENSET, [{}]), "", id="frozenset-of-unhashable"),
        pytest.param(b"\x81\x92\x01\x02\x03", "", id="map-key-is-an-array"),
        pytest.param(b"\x81\x80\x01", "", id="map-key-is-a-map"),
        pytest.param(ext(codec.EXT_REF, ["r1", "s", "default"]), "", id="ref-3-fields"),
        pytest.param(ext(codec.EXT_REF, ["r1", "s", "default", 5]), "", id="ref-int-field"),
        pytest.param(b"\xd9\x02\xff\xfe", "", id="str-invalid-utf8"),
    ],
)
def test_malformed_input_raises_serialization_error(data: bytes, why: str) -> None:
    with pytest.raises(SerializationError):
        decode(data, ref_factory=lambda p: p)


def test_refs_without_ref_factory_raise_serialization_error() -> None:
    data = encode([object()], on_unencodable=_RefHook())
    with pytest.raises(SerializationError, match="ref"):
        decode(data)
    stream = msgpack.packb(codec.ref_ext(RefPayload(True, "i", "s", "p", "generator")))
    with pytest.raises(SerializationError):
        decode(stream)


def test_limits_reject_non_positive_bounds() -> None:
    with pytest.raises(ValueError, match="max_size"):
        Limits(max_size=0)
    with pytest.raises(ValueError, match="max_items"):
        Limits(max_items=-1)
    with pytest.raises(ValueError, match="max_depth"):
        Limits(max_depth=0)


@PROPERTY
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_serialization_error_only(data: bytes) -> None:
    try:
        decode(data, ref_factory=lambda p: p)
    except SerializationError:
        pass


@PROPERTY
@given(st.integers(min_value=0, max_value=127), st.binary(max_size=64))
def test_random_extension_payloads_decode_or_raise_serialization_error_only(
    code: int, payload: bytes
) -> None:
    try:
        decode(ext(code, payload), ref_factory=lambda p: p)
    except SerializationError:
        pass


@PROPERTY
@given(
    st.sampled_from(
        [
            codec.EXT_TUPLE,
            codec.EXT_SET,
            codec.EXT_DATETIME,
            codec.EXT_TIME,
            codec.EXT_NDARRAY,
            codec.EXT_NPSCALAR,
            codec.EXT_REF,
        ]
    ),
    st.lists(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.floats(),
            st.text(max_size=12),
            st.binary(max_size=24),
            st.lists(st.integers(min_value=-2, max_value=4), max_size=3),
        ),
        max_size=10,
    ),
)
def test_structured_extension_payloads_decode_or_raise_serialization_error_only(
    code: int, fields: list[Any]
) -> None:
    try:
        decode(ext(code, fields), ref_factory=lambda p: p)
    except SerializationError:
        pass


@PROPERTY
@given(values, st.data())
def test_corrupted_encodings_decode_or_raise_serialization_error_only(
    value: Any, data: st.DataObject
) -> None:
    encoded = bytearray(encode(value))
    if not encoded:
        return
    index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    try:
        decode(bytes(encoded[:cut]), ref_factory=lambda p: p)
    except SerializationError:
        pass


def test_msgpack_native_timestamp_decodes_as_an_aware_utc_datetime() -> None:
    # ext -1 is decoded by msgpack before our ext hook; it must not leak msgpack.Timestamp.
    data = msgpack.packb(msgpack.Timestamp(seconds=1_700_000_000, nanoseconds=5000))
    value = decode(data)
    assert type(value) is dt.datetime
    assert value == dt.datetime(2023, 11, 14, 22, 13, 20, 5, tzinfo=dt.UTC)
