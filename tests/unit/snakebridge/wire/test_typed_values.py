"""Values that keep their type (issue #16 C, ``snakebridge.wire.values`` through the
codec): paths, enum members, dataclasses and namedtuples by value, ``register_type``,
and what a receiver that does not have the type gets. Pure: no process, no loop."""

from __future__ import annotations

import collections
import dataclasses
import enum
import pathlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import snakebridge
from snakebridge.errors import SerializationError
from snakebridge.wire.codec import decode, encode
from snakebridge.wire.values import (
    EXT_CUSTOM,
    EXT_ENUM,
    EXT_PATH,
    EXT_RECORD,
    RemoteEnum,
    RemoteRecord,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


class Level(enum.IntEnum):
    LOW = 1


class Perm(enum.Flag):
    R = 4
    W = 2


Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass(frozen=True)
class Box:
    name: str
    size: tuple[int, int]
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Counted:
    n: int
    total: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("negative")


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    def __hash__(self) -> int:
        return self.cents


class _Unencodable:
    pass


def _round(value: Any) -> Any:
    return decode(encode(value))


@pytest.mark.parametrize(
    "path",
    [
        pathlib.Path("/tmp/a b/c.txt"),
        pathlib.PurePosixPath("rel/x"),
        pathlib.PureWindowsPath(r"C:\Users\x"),
    ],
)
def test_paths_round_trip_with_their_class(path: pathlib.PurePath) -> None:
    back = _round(path)
    assert back == path and type(back) is type(path)


def test_a_path_is_its_kind_and_text() -> None:
    data = encode(pathlib.PurePosixPath("/a"))
    ext = msgpack.unpackb(data, ext_hook=lambda code, body: (code, body))
    assert ext[0] == EXT_PATH and msgpack.unpackb(ext[1]) == ["pure_posix", "/a"]
    with pytest.raises(SerializationError):
        decode(msgpack.packb(msgpack.ExtType(EXT_PATH, msgpack.packb(["ntfs", "x"]))))


@pytest.mark.parametrize("member", [Color.RED, Color.BLUE, Level.LOW, Perm.R, Perm.R | Perm.W])
def test_enum_members_come_back_as_themselves(member: enum.Enum) -> None:
    assert _round(member) is member
    assert _round([member, {"k": member}]) == [member, {"k": member}]


def test_an_enum_whose_module_is_not_loaded_is_a_remote_enum_that_goes_back_unchanged() -> None:
    payload = msgpack.packb(["not_loaded_anywhere:Color", "RED", "red"])
    data = msgpack.packb(msgpack.ExtType(EXT_ENUM, payload))
    value = decode(data)
    assert value == RemoteEnum("not_loaded_anywhere:Color", "RED", "red")
    assert encode(value) == data
    # Rebuilt where the type is known.
    name = f"{Color.__module__}:Color"
    assert decode(encode(RemoteEnum(name, "RED", "red"))) is Color.RED


def test_dataclasses_and_namedtuples_travel_by_value() -> None:
    box = Box("b", (1, 2), ["x"])
    assert _round(box) == box and type(_round(box)) is Box
    assert _round(Point(1, 2)) == Point(1, 2) and type(_round(Point(1, 2))) is Point
    counted = Counted(3)
    counted.total = 9  # a field outside __init__ comes back too
    back = _round(counted)
    assert (back.n, back.total) == (3, 9)
    assert _round({Point(1, 2): "key"}) == {Point(1, 2): "key"}  # hashable: a key


def test_a_record_whose_class_is_missing_or_refuses_its_fields_is_a_remote_record() -> None:
    fields = ["gone_module:Thing", "dataclass", ["a", "b"], [1, [2]]]
    data = msgpack.packb(msgpack.ExtType(EXT_RECORD, msgpack.packb(fields)))
    value = decode(data)
    assert value == RemoteRecord("gone_module:Thing", "dataclass", {"a": 1, "b": [2]})
    assert encode(value) == data
    name = f"{Counted.__module__}:Counted"
    refused = decode(encode(RemoteRecord(name, "dataclass", {"n": -1, "total": 0})))
    assert refused == RemoteRecord(name, "dataclass", {"n": -1, "total": 0})
    other_fields = decode(encode(RemoteRecord(name, "dataclass", {"m": 1})))
    assert isinstance(other_fields, RemoteRecord)


def test_a_record_with_an_unencodable_field_is_unsupported_as_a_whole() -> None:
    box = Box("b", (1, 2), [_Unencodable()])  # type: ignore[list-item]
    seen: list[Any] = []

    def hook(obj: Any) -> msgpack.ExtType:
        seen.append(obj)
        return msgpack.ExtType(15, msgpack.packb(["id", "s", "p", "Box"]))

    encode([box], on_unencodable=hook)
    assert seen == [box]  # the whole box becomes one ref, not a box holding a ref
    with pytest.raises(SerializationError, match="_Unencodable"):  # names the culprit
        encode(box)


def test_decoding_imports_nothing_and_refuses_malformed_records() -> None:
    import sys

    fields = ["json.tool:Thing", "dataclass", [], []]
    decode(msgpack.packb(msgpack.ExtType(EXT_RECORD, msgpack.packb(fields))))
    assert "json.tool" not in sys.modules
    for bad in (
        ["m:T", "class", [], []],
        ["m:T", "dataclass", ["a"], []],
        ["m:T", "dataclass", ["a", "a"], [1, 2]],
        ["m:T", "dataclass", [1], [1]],
        ["", "dataclass", [], []],
        ["x" * 600, "dataclass", [], []],
    ):
        with pytest.raises(SerializationError):
            decode(msgpack.packb(msgpack.ExtType(EXT_RECORD, msgpack.packb(bad))))


def test_private_and_local_names_are_never_resolved() -> None:
    from snakebridge.wire.values import loaded_type

    assert loaded_type("os:__class__") is None
    assert loaded_type("os:path.__class__") is None
    assert loaded_type(f"{Box.__module__}:Box") is Box
    assert loaded_type("os:sep") is None  # not a class


@pytest.fixture
def money() -> Iterator[None]:
    snakebridge.register_type(Money, lambda m: m.cents, Money, name="test.Money")
    yield
    snakebridge.unregister_type(Money)


@pytest.mark.usefixtures("money")
def test_a_registered_type_travels_under_its_name() -> None:
    assert _round([Money(250), {"m": Money(1)}]) == [Money(250), {"m": Money(1)}]
    ext = msgpack.unpackb(encode(Money(5)), ext_hook=lambda code, body: (code, body))
    assert ext[0] == EXT_CUSTOM and msgpack.unpackb(ext[1]) == ["test.Money", 5]


def test_an_unregistered_name_is_a_remote_record(money: None) -> None:
    data = encode(Money(7))
    snakebridge.unregister_type("test.Money")
    value = decode(data)
    assert value == RemoteRecord("test.Money", "registered", {"value": 7})
    assert encode(value) == data


def test_register_type_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        snakebridge.register_type("Money", str, str)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="characters"):
        snakebridge.register_type(Money, str, str, name="")


def test_a_failing_registered_codec_is_a_serialization_error() -> None:
    def boom(obj: Any) -> Any:
        raise RuntimeError("no")

    snakebridge.register_type(Money, boom, boom, name="test.Boom")
    try:
        with pytest.raises(SerializationError, match=r"test\.Boom"):
            encode(Money(1))
        data = msgpack.packb(msgpack.ExtType(EXT_CUSTOM, msgpack.packb(["test.Boom", 1])))
        with pytest.raises(SerializationError, match=r"test\.Boom"):
            decode(data)
    finally:
        snakebridge.unregister_type(Money)
