"""The value codec: Python values <-> bytes, shared by the SDK and the worker.

Pure functions over msgpack (docs/wire.md is the normative description). msgpack carries
None, bool, int (64-bit), float, str, bytes, list and dict natively; every other supported
type is a msgpack *extension* whose payload is itself msgpack or raw bytes. The packer runs
with ``strict_types`` so a ``tuple`` never silently becomes a list and a subclass never
passes for its base.

What cannot be encoded is handed to ``on_unencodable``: the worker turns such values into
refs in place ("graceful serialization"); the SDK raises ``SerializationError``.

Decoding is bounded by ``Limits`` (total size, items per container, nesting depth, the
memory the decoded value may take, distinct values sharing one hash) and every failure is
a ``SerializationError``. No pickle, ever.

This module must stay importable without grpclib/betterproto: the worker imports it.
"""

from __future__ import annotations

import datetime as _dt
import enum
import itertools
import operator
import re
import struct
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgpack

from ..errors import SerializationError
from . import values as _values
from .values import (
    EXT_CUSTOM,
    EXT_ENUM,
    EXT_PATH,
    EXT_RECORD,
    MAX_TYPE_NAME,
    PATH_KINDS,
    RemoteEnum,
    RemoteRecord,
    TypeResolver,
    enum_member,
    loaded_type,
    make_record,
    path_class,
    record_fields,
    registered_for,
    registered_named,
)

__all__ = [
    "DECODE_ALLOWANCE",
    "EXT_REF",
    "EXT_STREAM_REF",
    "MAX_HASH_COLLISIONS",
    "Limits",
    "RefPayload",
    "decode",
    "encode",
]

# Extension type codes (docs/wire.md). Never reuse a number.
EXT_TUPLE: Final = 1
EXT_SET: Final = 2
EXT_FROZENSET: Final = 3
EXT_BIGINT: Final = 4
EXT_BYTEARRAY: Final = 5
EXT_COMPLEX: Final = 6
EXT_DATETIME: Final = 7
EXT_DATE: Final = 8
EXT_TIME: Final = 9
EXT_TIMEDELTA: Final = 10
EXT_DECIMAL: Final = 11
EXT_UUID: Final = 12
EXT_NDARRAY: Final = 13
EXT_NPSCALAR: Final = 14
EXT_REF: Final = 15
EXT_STREAM_REF: Final = 16
# 17 EXT_PATH, 18 EXT_ENUM, 19 EXT_RECORD, 20 EXT_CUSTOM: see ``values``.

_COMPLEX: Final = struct.Struct(">dd")
# Plain numeric / string dtypes only: an object dtype decoded from raw bytes would forge
# pointers, and structured dtypes would lose their field names.
_DTYPE_RE: Final = re.compile(r"^[<>|=][biufcmMUS]\d{1,4}(\[[0-9A-Za-z]{1,8}\])?$")
_MAX_NDIM: Final = 32
# Every tuple/set/frozenset is packed by a fresh packb whose own list/dict recursion may
# reach ~511 C frames, so ext nesting multiplies C stack use: 40 tuples each wrapping 500
# lists overflowed the 8 MiB stack (a segfault). Past _UNCHECKED_EXT_DEPTH ext levels the
# value is walked once and rejected if any path nests deeper than _MAX_TOTAL_DEPTH.
_UNCHECKED_EXT_DEPTH: Final = 8
_MAX_TOTAL_DEPTH: Final = 2000
_NESTING_TYPES: Final = frozenset({list, tuple, dict, set, frozenset})


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied while decoding untrusted bytes."""

    max_size: int = 64 * 1024 * 1024
    """Largest encoded value accepted, in bytes."""
    max_items: int = 16 * 1024 * 1024
    """Most elements in any one list/dict/set/tuple (the total is bounded by ``max_size``)."""
    max_depth: int = 100
    """Deepest nesting of extension containers (tuple, set, frozenset). Plain list/dict
    nesting is bounded by msgpack's decoder itself (1024 levels); both fail with
    ``SerializationError``."""
    max_decoded_size: int = 1024 * 1024 * 1024
    """Most bytes the decoded containers and extension values may take (``sys.getsizeof``,
    counted while decoding, so the limit is hit before the memory is spent)."""
    max_expansion: int = 16
    """Most decoded bytes per encoded byte, beyond a ``DECODE_ALLOWANCE`` every value
    gets; 0 leaves only ``max_decoded_size``."""

    _uncounted_below: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        for name in ("max_size", "max_items", "max_depth", "max_decoded_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1")
        if self.max_expansion < 0:
            raise ValueError("Limits.max_expansion must be >= 0")
        # Inputs this small cannot reach the budget whatever they hold: every byte a
        # worst-case container, plus a payload copy per extension nesting level.
        worst = _WORST_EXPANSION + self.max_depth
        below = self.max_decoded_size // worst
        if self.max_expansion and worst > self.max_expansion:
            below = min(below, DECODE_ALLOWANCE // (worst - self.max_expansion))
        object.__setattr__(self, "_uncounted_below", below)

    def decode_budget(self, size: int) -> int:
        """Bytes a value encoded in ``size`` bytes may decode into."""
        if not self.max_expansion:
            return self.max_decoded_size
        return min(self.max_decoded_size, DECODE_ALLOWANCE + self.max_expansion * size)


# Decoded size. A Python object costs far more than its encoding: one 0x90 byte is an
# empty list (56 bytes plus an 8-byte slot in its parent), so 15 MiB of them decoded into
# 1.1 GiB. Every value may decode into DECODE_ALLOWANCE bytes; past that, into
# max_expansion (16) bytes per encoded byte. Measured ratios (sys.getsizeof per encoded
# byte): float lists 1, float64 arrays 1, dict records of 5 floats 3.4, of 5 small ints 12,
# lists of (1, 2) tuples 11, of [1, 2] lists 27, of {"a": 1} dicts 48, of [] 64, of {} 72,
# of set() 75. So a million [1, 2] pairs (2.9 MiB, 80 MiB decoded) pass; 15 MiB of []
# stop at 272 MiB counted.
DECODE_ALLOWANCE: Final = 32 * 1024 * 1024
# The most one encoded byte can become as containers or extension values: set() (fixext1,
# 3 bytes) is 216 bytes plus a slot, {} is 64 plus a slot. An input below
# Limits._uncounted_below (about 200 KiB with the defaults: every ordinary call) cannot
# reach its budget even so, with a payload copy per extension nesting level on top, and
# decodes without counting: msgpack builds containers at C speed with no Python hooks.
_WORST_EXPANSION: Final = 80
_BYTES_HEADER: Final = sys.getsizeof(b"")  # each extension payload is a bytes copy
_REF_COST: Final = 64  # the worker's object already exists; the SDK's Ref is small
# Hash flooding. Python hashes ints modulo 2**61-1 (also Decimal, UUID via its int, and
# complex and tuples through their parts), so k, k + (2**61-1), k + 2*(2**61-1)... all
# collide and a map of them is built in quadratic time: 20,000 such big-int keys (250 KiB)
# took 1.2 s. Every hashable extension value is entered in a per-decode census by hash; a
# 33rd distinct value with one hash is refused, so inserting any key probes at most 32
# colliding entries. Only extension values can collide in bulk: str/bytes hashes are
# randomized, native ints span 2**64 (at most 12 share a hash) and a float's hash is its
# value modulo 2**61-1 with a 53-bit mantissa (a few hundred at most).
MAX_HASH_COLLISIONS: Final = 32
# hash(tuple) is recomputed at every level of nested tuples (tuples do not cache it), so
# the census caps the tuple bytes it hashes: 16 per encoded byte plus 1 MiB, i.e. about 16
# levels of tuples around all of the data.
_HASH_WORK_PER_BYTE: Final = 16
_HASH_WORK_ALLOWANCE: Final = 1024 * 1024

DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True, slots=True)
class RefPayload:
    """A ref as it travels: produced by the worker, carried by the SDK's ``Ref``."""

    stream: bool
    id: str
    session_id: str
    pool: str
    type_name: str


Unencodable = Callable[[Any], "msgpack.ExtType"]


def _pack(obj: Any, default: Callable[[Any], Any]) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        obj,
        default=default,
        use_bin_type=True,
        strict_types=True,
        unicode_errors="surrogatepass",
    )


def ref_ext(ref: RefPayload) -> msgpack.ExtType:
    """The extension value for a ref (used by the worker and the SDK alike)."""
    payload = _pack([ref.id, ref.session_id, ref.pool, ref.type_name], _no_default)
    return msgpack.ExtType(EXT_STREAM_REF if ref.stream else EXT_REF, payload)


def _no_default(obj: Any) -> Any:
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _tz_payload(tz: _dt.tzinfo | None, probe: Any) -> Any:
    """None, an offset in microseconds (``datetime.timezone``) or a zone key (``ZoneInfo``)."""
    if tz is None:
        return None
    if type(tz) is _dt.timezone:
        offset = tz.utcoffset(None)
        return offset // _dt.timedelta(microseconds=1)
    key = getattr(tz, "key", None)
    if type(tz).__name__ == "ZoneInfo" and isinstance(key, str):
        return key
    raise _Unsupported(probe)


class _BoxedByteArray:
    """msgpack packs ``bytearray`` as plain ``bin`` before ``default`` is consulted, which
    would make it come back as ``bytes``; boxed, it reaches ``default`` as EXT_BYTEARRAY."""

    __slots__ = ("data",)

    def __init__(self, data: bytearray) -> None:
        self.data = data


# Values that can never contain a bytearray: containers made only of these are skipped
# by the boxing pass at C speed (set(map(type, ...))), so big payloads pay almost nothing.
_LEAF_TYPES: Final = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        str,
        bytes,
        complex,
        Decimal,
        uuid.UUID,
        _dt.datetime,
        _dt.date,
        _dt.time,
        _dt.timedelta,
        set,  # set and frozenset elements are hashable, so never a bytearray
        frozenset,
    }
)
_BOX_MAX_DEPTH: Final = 256


def _box_bytearrays(obj: Any) -> Any:
    """``obj`` with every bytearray inside lists, tuples and dict values boxed. Containers
    without one are returned as they are (same identity). Each container is visited once
    (memoized by identity, so shared and cyclic structures stay linear); beyond
    ``_BOX_MAX_DEPTH`` nothing is boxed and the packer's own depth checks take over."""
    if type(obj) is bytearray:
        return _BoxedByteArray(obj)
    if type(obj) not in (list, tuple, dict):
        return obj
    return _box(obj, {}, 0)


def _box(obj: Any, memo: dict[int, Any], depth: int) -> Any:
    t = type(obj)
    if t is bytearray:
        return _BoxedByteArray(obj)
    if t is not list and t is not tuple and t is not dict:
        return obj
    key = id(obj)
    if key in memo:
        return memo[key]
    if depth > _BOX_MAX_DEPTH:
        return obj
    values = obj.values() if t is dict else obj
    if set(map(type, values)) <= _LEAF_TYPES:
        return obj
    memo[key] = obj  # provisional: a cycle leading back here sees the original
    result: Any = obj
    if t is dict:
        boxed = {k: _box(v, memo, depth + 1) for k, v in obj.items()}
        if not all(map(operator.is_, boxed.values(), obj.values())):
            result = boxed
    else:
        items = [_box(x, memo, depth + 1) for x in obj]
        if not all(map(operator.is_, items, obj)):
            result = items if t is list else tuple(items)
    memo[key] = result
    return result


class _Unsupported(Exception):
    def __init__(self, obj: Any) -> None:
        self.obj = obj


class _Encoder:
    """One encode pass. ``default`` is msgpack's hook for every non-native value."""

    __slots__ = ("depth", "max_depth", "on_unencodable", "ref_ids", "root", "walked")

    def __init__(
        self, on_unencodable: Unencodable | None, max_depth: int, ref_ids: list[str] | None
    ) -> None:
        self.on_unencodable = on_unencodable
        self.max_depth = max_depth
        self.ref_ids = ref_ids
        self.depth = 0
        self.root: Any = None
        self.walked = False

    def nested(self, value: Any) -> bytes:
        self.depth += 1
        if self.depth > self.max_depth:
            raise SerializationError(f"value nests deeper than {self.max_depth} levels")
        if self.depth > _UNCHECKED_EXT_DEPTH and not self.walked:
            self.walked = True
            if _nests_deeper_than(self.root, _MAX_TOTAL_DEPTH):
                raise SerializationError(
                    f"value is cyclic or nests deeper than {_MAX_TOTAL_DEPTH} levels"
                )
        try:
            return _pack(value, self.default)
        finally:
            self.depth -= 1

    def default(self, obj: Any) -> Any:
        try:
            return self._known(obj)
        except _Unsupported as exc:
            if self.on_unencodable is None:
                raise SerializationError(
                    f"cannot encode value of type {_type_name(exc.obj)}; "
                    "pass a Ref or a supported type (docs/wire.md)"
                ) from None
            return self.on_unencodable(exc.obj)

    def _known(self, obj: Any) -> Any:
        t = type(obj)
        if t is tuple:
            return msgpack.ExtType(EXT_TUPLE, self.nested(list(obj)))
        if t is int:  # only reached when it does not fit 64 bits
            length = (obj.bit_length() + 8) // 8
            return msgpack.ExtType(EXT_BIGINT, obj.to_bytes(length, "big", signed=True))
        if t is set or t is frozenset:
            code = EXT_SET if t is set else EXT_FROZENSET
            return msgpack.ExtType(code, self.nested(list(obj)))
        if t is _BoxedByteArray:
            return msgpack.ExtType(EXT_BYTEARRAY, bytes(obj.data))
        if t is complex:
            return msgpack.ExtType(EXT_COMPLEX, _COMPLEX.pack(obj.real, obj.imag))
        if t is _dt.datetime:
            tz = _tz_payload(obj.tzinfo, obj)
            fields = [obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second]
            fields += [obj.microsecond, obj.fold, tz]
            return msgpack.ExtType(EXT_DATETIME, _pack(fields, _no_default))
        if t is _dt.date:
            return msgpack.ExtType(EXT_DATE, _pack([obj.year, obj.month, obj.day], _no_default))
        if t is _dt.time:
            tz = _tz_payload(obj.tzinfo, obj)
            fields = [obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold, tz]
            return msgpack.ExtType(EXT_TIME, _pack(fields, _no_default))
        if t is _dt.timedelta:
            fields = [obj.days, obj.seconds, obj.microseconds]
            return msgpack.ExtType(EXT_TIMEDELTA, _pack(fields, _no_default))
        if t is Decimal:
            return msgpack.ExtType(EXT_DECIMAL, str(obj).encode("ascii"))
        if t is uuid.UUID:
            return msgpack.ExtType(EXT_UUID, obj.bytes)
        # Looked up on the type, like a special method: an instance ``__getattr__`` that
        # answers every name (proxies, attribute dicts) must not pass for a Ref.
        if getattr(t, "__snakebridge_ref__", None) is not None and not isinstance(obj, type):
            payload: RefPayload = obj.__snakebridge_ref__()
            if self.ref_ids is not None:
                self.ref_ids.append(payload.id)
            return ref_ext(payload)
        if t.__module__ == "numpy":
            return self._numpy(obj)
        return self._typed(t, obj)

    def _typed(self, t: type, obj: Any) -> Any:
        """Paths, registered types, enum members, dataclasses and namedtuples (``values``);
        ``_Unsupported`` for anything else, or when a field cannot be encoded."""
        kind = PATH_KINDS.get(t)
        if kind is not None:
            return msgpack.ExtType(EXT_PATH, _pack([kind, str(obj)], _no_default))
        registered = registered_for(t)
        if registered is not None:
            try:
                value = registered.encode(obj)
            except Exception as exc:
                raise SerializationError(
                    f"the encoder registered for {registered.name!r} raised {exc!r}"
                ) from None
            return msgpack.ExtType(EXT_CUSTOM, self.by_value([registered.name, value], obj))
        if t is RemoteEnum:
            fields = [obj.type_name, obj.name, obj.value]
            return msgpack.ExtType(EXT_ENUM, self.by_value(fields, obj))
        if t is RemoteRecord:
            if obj.kind == "registered":
                payload = self.by_value([obj.type_name, obj.fields.get("value")], obj)
                return msgpack.ExtType(EXT_CUSTOM, payload)
            fields = [obj.type_name, obj.kind, list(obj.fields), list(obj.fields.values())]
            return msgpack.ExtType(EXT_RECORD, self.by_value(fields, obj))
        if isinstance(obj, enum.Enum):
            fields = [_values.type_name(t), obj.name or "", obj.value]
            return msgpack.ExtType(EXT_ENUM, self.by_value(fields, obj))
        record = record_fields(obj)
        if record is not None:
            kind, names, values = record
            payload = self.by_value([_values.type_name(t), kind, names, values], obj)
            return msgpack.ExtType(EXT_RECORD, payload)
        raise _Unsupported(obj)

    def by_value(self, fields: list[Any], obj: Any) -> bytes:
        """``fields`` packed with no fallback: if any part cannot be encoded, ``obj`` as a
        whole is unsupported (a ref in place in the worker), never half a value."""
        on_unencodable, self.on_unencodable = self.on_unencodable, None
        try:
            return self.nested(fields)
        except SerializationError:
            if on_unencodable is None:
                raise
            raise _Unsupported(obj) from None
        finally:
            self.on_unencodable = on_unencodable

    def _numpy(self, obj: Any) -> Any:
        np = sys.modules["numpy"]
        if type(obj) is np.ndarray:
            dtype = obj.dtype
            # Only what the decoder accepts (_DTYPE_RE), so graceful serialization turns
            # the rest into refs instead of producing bytes the peer must reject.
            if not _DTYPE_RE.match(dtype.str) or obj.ndim > _MAX_NDIM:
                raise _Unsupported(obj)
            # ascontiguousarray would turn a 0-d array into shape (1,).
            arr = obj if obj.flags.c_contiguous else obj.copy(order="C")
            # A uint8 view: datetime64/timedelta64 arrays do not export a buffer themselves.
            body = arr.reshape(-1).view(np.uint8).data if arr.size else b""
            payload = _pack([dtype.str, list(arr.shape), body], _no_default)
            return msgpack.ExtType(EXT_NDARRAY, payload)
        if isinstance(obj, np.generic):
            dtype = obj.dtype
            if not _DTYPE_RE.match(dtype.str):
                raise _Unsupported(obj)
            # np.str_("").tobytes() is 4 NUL bytes although its itemsize is 0.
            body = obj.tobytes() if dtype.itemsize else b""
            return msgpack.ExtType(EXT_NPSCALAR, _pack([dtype.str, body], _no_default))
        raise _Unsupported(obj)


def _nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether some path through lists, dicts, tuples and sets is longer than ``limit``
    (a cycle always is). Iterative with one iterator per level: O(limit) memory."""
    if type(value) not in _NESTING_TYPES:
        return False
    stack = [_children(value)]
    while stack:
        for child in stack[-1]:
            if type(child) in _NESTING_TYPES:
                if len(stack) >= limit:
                    return True
                stack.append(_children(child))
                break
        else:
            stack.pop()
    return False


def _children(obj: Any) -> Iterator[Any]:
    return itertools.chain.from_iterable(obj.items()) if type(obj) is dict else iter(obj)


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def encode(
    value: Any,
    *,
    on_unencodable: Unencodable | None = None,
    max_depth: int = DEFAULT_LIMITS.max_depth,
    ref_ids: list[str] | None = None,
) -> bytes:
    """Encode ``value``. Values the codec cannot carry go to ``on_unencodable`` (which
    returns an extension value, typically a ref); without it they raise
    ``SerializationError``. Cycles and over-deep nesting raise ``SerializationError``.

    Objects with a ``__snakebridge_ref__()`` method (the SDK's ``Ref``) encode as refs;
    their ids are appended to ``ref_ids`` when given, so the caller can route the call."""
    enc = _Encoder(on_unencodable, max_depth, ref_ids)
    try:
        value = _box_bytearrays(value)
        enc.root = value
        return _pack(value, enc.default)
    except SerializationError:
        raise
    except (ValueError, RecursionError) as exc:
        # msgpack's own recursion limit: a cycle, or nesting past ~500 plain levels.
        raise SerializationError(f"value is cyclic or nests too deeply: {_reason(exc)}") from None
    except (TypeError, OverflowError, UnicodeError) as exc:
        raise SerializationError(f"cannot encode value: {_reason(exc)}") from None


RefFactory = Callable[[RefPayload], Any]


_EXT_CONTAINERS: Final = {EXT_TUPLE: tuple, EXT_SET: set, EXT_FROZENSET: frozenset}
# Extension values whose hash an attacker can steer (see MAX_HASH_COLLISIONS); datetimes
# hash their bytes with the randomized hash, sets, bytearrays and arrays are unhashable.
_CENSUS_CODES: Final = frozenset(
    {
        EXT_TUPLE,
        EXT_FROZENSET,
        EXT_BIGINT,
        EXT_COMPLEX,
        EXT_DECIMAL,
        EXT_UUID,
        EXT_NPSCALAR,
        EXT_RECORD,  # a namedtuple hashes as the tuple of its fields
        EXT_CUSTOM,
    }
)


class _Decoder:
    __slots__ = (
        "budget",
        "census",
        "collided",
        "counted",
        "depth",
        "hashed",
        "limits",
        "ref_factory",
        "resolve_type",
        "size",
        "spent",
    )

    def __init__(
        self,
        limits: Limits,
        ref_factory: RefFactory | None,
        size: int,
        resolve_type: TypeResolver = loaded_type,
    ) -> None:
        self.limits = limits
        self.ref_factory = ref_factory
        self.resolve_type = resolve_type
        self.depth = 0
        self.size = size
        # Big inputs count each container as msgpack finishes it and each extension value
        # as it is built, and stop at the budget; small ones cannot reach it.
        self.counted = size > limits._uncounted_below
        if self.counted:
            self.budget = limits.decode_budget(size)
            self.spent = 0
        self.hashed = 0  # tuple bytes hashed by the census
        self.census: dict[int, Any] | None = None  # made on first use: most calls hold no
        self.collided: dict[int, list[Any]] | None = None  # extension values

    def spend(self, nbytes: int) -> None:
        self.spent += nbytes
        if self.spent > self.budget:
            lim = self.limits
            how = f"max_decoded_size {lim.max_decoded_size}"
            if lim.max_expansion:
                how = (
                    f"{DECODE_ALLOWANCE} + max_expansion {lim.max_expansion} x encoded bytes, "
                    f"at most {how}"
                )
            raise SerializationError(
                f"the value decodes to more than {self.budget} bytes, over the decode limit "
                f"({how}); send less data or pass a ref"
            )

    def container(self, value: Any) -> Any:
        """msgpack's list_hook / object_hook when containers are counted."""
        self.spend(sys.getsizeof(value))
        return value

    def unpack(self, data: bytes | bytearray | memoryview) -> Any:
        lim = self.limits
        # An element takes at least one byte (a map entry two): a header claiming more is
        # malformed. (unpackb's own defaults; passing max_items alone had replaced them.)
        n = len(data)
        max_array = n if n < lim.max_items else lim.max_items
        max_map = n // 2 if n // 2 < lim.max_items else lim.max_items
        if self.counted:
            return msgpack.unpackb(
                data,
                ext_hook=self.counted_ext,
                list_hook=self.container,
                object_hook=self.container,
                raw=False,
                strict_map_key=False,
                unicode_errors="surrogatepass",
                timestamp=3,
                max_str_len=lim.max_size,
                max_bin_len=lim.max_size,
                max_ext_len=lim.max_size,
                max_array_len=max_array,
                max_map_len=max_map,
            )
        # The same, without the counting hooks: C speed for small inputs. Spelled out twice
        # on purpose: one call with the hooks passed as **kwargs made a small call's decode
        # 0.96 -> 2.34 µs, and this runs for every argument list and result.
        return msgpack.unpackb(
            data,
            ext_hook=self.uncounted_ext,
            raw=False,
            strict_map_key=False,
            unicode_errors="surrogatepass",
            # msgpack's own ext -1 (timestamp) is decoded by msgpack itself, before
            # ext_hook: make it an aware UTC datetime, a type this codec carries anyway.
            timestamp=3,
            # unpackb has no max_buffer_size; decode() checks the total size up front.
            max_str_len=lim.max_size,
            max_bin_len=lim.max_size,
            max_ext_len=lim.max_size,
            max_array_len=max_array,
            max_map_len=max_map,
        )

    def nested_list(self, data: bytes) -> list[Any]:
        self.depth += 1
        try:
            if self.depth > self.limits.max_depth:
                raise SerializationError(f"value nests deeper than {self.limits.max_depth} levels")
            value = self.unpack(data)
        finally:
            self.depth -= 1
        if type(value) is not list:
            raise SerializationError("malformed container extension")
        return value

    def uncounted_ext(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            value: Any = tuple(self.nested_list(data))
            self._hashing(len(data))
        elif code == EXT_SET:
            return set(self.nested_list(data))  # unhashable: never a key
        elif code == EXT_FROZENSET:
            value = frozenset(self.nested_list(data))
        else:
            value = self._ext(code, data)
            if code not in _CENSUS_CODES:
                return value
        # The census, inline: this runs for every tuple and big int.
        try:
            h = hash(value)
        except TypeError:  # a tuple holding a list, a signaling NaN: never a key
            return value
        census = self.census
        if census is None:
            census = self.census = {}
        first = census.setdefault(h, value)
        if first is not value and first != value:
            self._collision(h, value)
        return value

    def counted_ext(self, code: int, data: bytes) -> Any:
        # The payload is a copy, alive while it is decoded (nested tuples hold one copy per
        # level); arrays and scalars make two more (the body, the array) before returning.
        transient = len(data) + _BYTES_HEADER
        if code == EXT_NDARRAY or code == EXT_NPSCALAR:
            transient *= 3
        self.spend(transient)
        try:
            if code in _EXT_CONTAINERS:
                items = self.nested_list(data)
                value = _EXT_CONTAINERS[code](items)
                self.spent -= sys.getsizeof(items)  # counted by the hook, garbage now
            else:
                value = self._ext(code, data)
        finally:
            self.spent -= transient
        if code in _CENSUS_CODES:
            self._census(code, value, len(data))
        self.spend(_REF_COST if code == EXT_REF or code == EXT_STREAM_REF else sys.getsizeof(value))
        return value

    def _census(self, code: int, value: Any, size: int) -> None:
        """Enter ``value`` in the census of hashes (see MAX_HASH_COLLISIONS)."""
        if code == EXT_TUPLE:
            self._hashing(size)
        try:
            h = hash(value)
        except TypeError:  # a tuple holding a list, a signaling NaN: never a key
            return
        census = self.census
        if census is None:
            census = self.census = {}
        first = census.setdefault(h, value)
        if first is not value and first != value:
            self._collision(h, value)

    def _collision(self, h: int, value: Any) -> None:
        """``value`` differs from the first value of hash ``h``: refuse it once
        MAX_HASH_COLLISIONS distinct values share that hash."""
        if self.collided is None:
            self.collided = {}
        others = self.collided.setdefault(h, [])
        if value in others:
            return
        others.append(value)
        if len(others) >= MAX_HASH_COLLISIONS:
            raise SerializationError(
                f"more than {MAX_HASH_COLLISIONS} distinct values share one hash "
                "(a hash-flooding input)"
            )

    def _hashing(self, nbytes: int) -> None:
        """Account for hashing a tuple of ``nbytes`` encoded bytes (see _HASH_WORK_PER_BYTE)."""
        self.hashed += nbytes
        if self.hashed > _HASH_WORK_PER_BYTE * self.size + _HASH_WORK_ALLOWANCE:
            raise SerializationError(
                "tuples nest too deeply around too much data to check their hashes"
            )

    def _ext(self, code: int, data: bytes) -> Any:
        if code == EXT_BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == EXT_BYTEARRAY:
            return bytearray(data)
        if code == EXT_COMPLEX:
            real, imag = _COMPLEX.unpack(data)
            return complex(real, imag)
        if code == EXT_DATETIME:
            y, mo, d, h, mi, s, us, fold, tz = self._fields(data, 9)
            return _dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_tz(tz), fold=fold)
        if code == EXT_DATE:
            y, mo, d = self._fields(data, 3)
            return _dt.date(y, mo, d)
        if code == EXT_TIME:
            h, mi, s, us, fold, tz = self._fields(data, 6)
            return _dt.time(h, mi, s, us, tzinfo=_tz(tz), fold=fold)
        if code == EXT_TIMEDELTA:
            days, secs, us = self._fields(data, 3)
            return _dt.timedelta(days=days, seconds=secs, microseconds=us)
        if code == EXT_DECIMAL:
            return Decimal(data.decode("ascii"))
        if code == EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == EXT_NDARRAY:
            return _ndarray(self._fields(data, 3))
        if code == EXT_NPSCALAR:
            dtype_str, body = self._fields(data, 2)
            return _ndarray([dtype_str, [], body])[()]
        return self._ext_typed(code, data)

    def _ext_typed(self, code: int, data: bytes) -> Any:
        """Refs and the values of ``values`` (paths, enums, records, registered types)."""
        if code == EXT_PATH:
            kind, text = self._fields(data, 2)
            if not isinstance(kind, str) or not isinstance(text, str):
                raise SerializationError("malformed path")
            return path_class(kind)(text)
        if code == EXT_ENUM or code == EXT_RECORD or code == EXT_CUSTOM:
            return self._typed(code, self.nested_list(data))
        if code in (EXT_REF, EXT_STREAM_REF):
            ref_id, session_id, pool, type_name = self._fields(data, 4)
            if not all(isinstance(x, str) for x in (ref_id, session_id, pool, type_name)):
                raise SerializationError("malformed ref")
            payload = RefPayload(code == EXT_STREAM_REF, ref_id, session_id, pool, type_name)
            if self.ref_factory is None:
                raise SerializationError("refs are not accepted here")
            return self.ref_factory(payload)
        raise SerializationError(f"unknown extension type {code}")

    def _typed(self, code: int, fields: list[Any]) -> Any:
        """An enum member, a record or a registered value from its decoded fields."""
        name = fields[0] if fields else None
        if not isinstance(name, str) or not 0 < len(name) <= MAX_TYPE_NAME:
            raise SerializationError("malformed type name")
        if code == EXT_CUSTOM:
            if len(fields) != 2:
                raise SerializationError("malformed registered value")
            registered = registered_named(name)
            if registered is None:
                return RemoteRecord(name, "registered", {"value": fields[1]})
            try:
                return registered.decode(fields[1])
            except Exception as exc:
                raise SerializationError(
                    f"the decoder registered for {name!r} raised {exc!r}"
                ) from None
        if code == EXT_ENUM:
            if len(fields) != 3:
                raise SerializationError("malformed enum member")
            return enum_member(self.resolve_type(name), fields[1], fields[2], name)
        if len(fields) != 4:
            raise SerializationError("malformed record")
        _, kind, names, values = fields
        if (
            kind not in ("dataclass", "namedtuple")
            or type(names) is not list
            or type(values) is not list
            or len(names) != len(values)
            or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
        ):
            raise SerializationError("malformed record")
        fields_by_name = dict(zip(names, values, strict=True))
        return make_record(self.resolve_type(name), name, kind, fields_by_name)

    def _fields(self, data: bytes, n: int) -> list[Any]:
        fields = msgpack.unpackb(data, raw=False, max_array_len=_MAX_NDIM, max_map_len=0)
        if type(fields) is not list or len(fields) != n:
            raise SerializationError("malformed extension payload")
        return fields


def _tz(tz: Any) -> _dt.tzinfo | None:
    if tz is None:
        return None
    if type(tz) is int:
        return _dt.timezone(_dt.timedelta(microseconds=tz))
    if type(tz) is str:
        from zoneinfo import ZoneInfo

        return ZoneInfo(tz)
    raise SerializationError("malformed time zone")


def _ndarray(fields: list[Any]) -> Any:
    dtype_str, shape, body = fields
    if not (isinstance(dtype_str, str) and _DTYPE_RE.match(dtype_str)):
        raise SerializationError(f"unsupported array dtype {dtype_str!r}")
    if not (
        isinstance(shape, list)
        and len(shape) <= _MAX_NDIM
        and all(type(n) is int and n >= 0 for n in shape)
    ):
        raise SerializationError("malformed array shape")
    if not isinstance(body, bytes):
        raise SerializationError("malformed array body")
    try:
        import numpy as np
    except ImportError:
        raise SerializationError("received a numpy array but numpy is not installed") from None
    dtype = np.dtype(dtype_str)
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != len(body):
        raise SerializationError("array body does not match its shape and dtype")
    if dtype.itemsize == 0:  # "<U0" / "|S0": the dtype of np.str_("") and np.bytes_(b"")
        if count > 1:  # numpy widens to "<U1" on allocation: keep it bounded by the body
            raise SerializationError("zero-size array elements")
        return np.zeros(shape, dtype=dtype)
    # frombuffer over immutable bytes is read-only; callers expect a normal array.
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def decode(
    data: bytes | bytearray | memoryview,
    *,
    limits: Limits = DEFAULT_LIMITS,
    ref_factory: RefFactory | None = None,
    resolve_type: TypeResolver = loaded_type,
) -> Any:
    """Decode bytes produced by ``encode``. Refs are passed to ``ref_factory``; without one
    they are rejected. ``resolve_type`` finds the class of an enum member or record by
    its "module:qualname" (default: only in modules already loaded; None gives a
    ``RemoteEnum``/``RemoteRecord``). Every malformed or over-limit input raises
    ``SerializationError``, over-limit ones before the memory or work they would take is
    spent."""
    if len(data) > limits.max_size:
        raise SerializationError(
            f"encoded value is {len(data)} bytes, over the {limits.max_size}-byte limit"
        )
    dec = _Decoder(limits, ref_factory, len(data), resolve_type)
    try:
        return dec.unpack(data)
    except SerializationError:
        raise
    except msgpack.StackError:
        raise SerializationError("value nests too deeply") from None
    except (
        ValueError,
        TypeError,
        OverflowError,
        UnicodeError,
        LookupError,
        ArithmeticError,
        struct.error,
    ) as exc:
        # ExtraData / FormatError / BufferFull / unhashable keys / bad dates all land here.
        raise SerializationError(f"cannot decode value: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """What went wrong, never empty: msgpack's FormatError (a reserved byte such as 0xc1)
    has no message, which left "cannot decode value: " ending in a space."""
    return str(exc).strip() or f"malformed input ({type(exc).__name__})"
