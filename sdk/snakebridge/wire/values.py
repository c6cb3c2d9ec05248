"""Values that keep their type across the wire: paths, enum members, dataclasses,
namedtuples and the types registered with ``register_type`` (docs/wire.md, section 3.2,
codes 17-20). Pure; runs in the client and the worker alike (the codec imports it).

Decoding never imports anything: a type comes back as itself only when its module is
already loaded on the receiving side (and, in the worker, when the call policy allows it:
``codec.decode(resolve_type=...)``). Otherwise the value arrives as a ``RemoteEnum`` or
``RemoteRecord``, which says what it was and encodes back to the same wire form, so it
reaches a process that knows the type unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pathlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

EXT_PATH: Final = 17
EXT_ENUM: Final = 18
EXT_RECORD: Final = 19
EXT_CUSTOM: Final = 20

MAX_TYPE_NAME: Final = 512  # characters of "module:qualname" or a registered name

#: Path classes by their wire kind, and back.
PATH_KINDS: Final[dict[type, str]] = {
    pathlib.PosixPath: "posix",
    pathlib.WindowsPath: "windows",
    pathlib.PurePosixPath: "pure_posix",
    pathlib.PureWindowsPath: "pure_windows",
}


def path_class(kind: str) -> type[pathlib.PurePath]:
    """The class a path of wire ``kind`` decodes to here: a concrete ``Path`` of the
    local flavour, its pure form for the other one."""
    if kind == "posix":
        return pathlib.PosixPath if os.name == "posix" else pathlib.PurePosixPath
    if kind == "windows":
        return pathlib.WindowsPath if os.name == "nt" else pathlib.PureWindowsPath
    if kind == "pure_posix":
        return pathlib.PurePosixPath
    if kind == "pure_windows":
        return pathlib.PureWindowsPath
    raise ValueError(f"unknown path kind {kind!r}")


@dataclass(frozen=True, slots=True)
class RemoteEnum:
    """An enum member whose type is not loaded here: ``type_name`` ("module:qualname"),
    the member's ``name`` and ``value``. Sent back, it is the member again."""

    type_name: str
    name: str
    value: Any


@dataclass(frozen=True, slots=True)
class RemoteRecord:
    """A dataclass, namedtuple or registered value whose type is not loaded (or not
    registered) here: ``type_name``, ``kind`` ("dataclass", "namedtuple" or "registered")
    and its ``fields`` (for "registered", ``{"value": what its encoder returned}``). Sent
    back, it is the same wire value."""

    type_name: str
    kind: str
    fields: dict[str, Any]

    def __hash__(self) -> int:
        return hash((self.type_name, self.kind, tuple(self.fields)))


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def loaded_type(name: str) -> type | None:
    """The class ``name`` ("module:qualname") names, if its module is loaded; no import."""
    module_name, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None or not qualname:
        return None
    for part in qualname.split("."):
        if part.startswith("__") or part == "<locals>":
            return None
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) else None


TypeResolver = Callable[[str], "type | None"]


def enum_member(cls: type | None, name: Any, value: Any, type_str: str) -> Any:
    """The member of ``cls`` named ``name``, else the one of that ``value`` (a composite
    flag), else a ``RemoteEnum``."""
    if cls is not None and issubclass(cls, enum.Enum):
        if isinstance(name, str) and name in cls.__members__:
            return cls.__members__[name]
        try:
            return cls(value)  # a composite flag ("R|W") or a renamed member
        except (ValueError, TypeError):
            pass
    return RemoteEnum(type_str, name if isinstance(name, str) else "", value)


def is_namedtuple(cls: type) -> bool:
    fields = getattr(cls, "_fields", None)
    return issubclass(cls, tuple) and type(fields) is tuple


def record_fields(obj: Any) -> tuple[str, list[str], list[Any]] | None:
    """("dataclass" | "namedtuple", field names, values) of ``obj``; None for others."""
    cls = type(obj)
    if is_namedtuple(cls):
        return "namedtuple", list(getattr(cls, "_fields", ())), list(obj)
    if dataclasses.is_dataclass(cls) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)]
        return "dataclass", names, [getattr(obj, n) for n in names]
    return None


def make_record(cls: type | None, type_str: str, kind: str, fields: dict[str, Any]) -> Any:
    """An instance of ``cls`` built from ``fields``, or a ``RemoteRecord`` when ``cls``
    is missing, of another kind, has other fields, or refuses them."""
    if cls is not None:
        try:
            declared_names = list(getattr(cls, "_fields", ()))
            if kind == "namedtuple" and is_namedtuple(cls) and declared_names == list(fields):
                return cls(*fields.values())
            if kind == "dataclass" and dataclasses.is_dataclass(cls):
                declared = dataclasses.fields(cls)
                if [f.name for f in declared] == list(fields):
                    init = {f.name: fields[f.name] for f in declared if f.init}
                    obj = cls(**init)
                    for f in declared:
                        if not f.init:
                            object.__setattr__(obj, f.name, fields[f.name])
                    return obj
        except Exception:  # its __init__ / __post_init__ refused the values
            pass
    return RemoteRecord(type_str, kind, fields)


# -- register_type ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registered:
    cls: type
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_lock = threading.Lock()
_by_type: dict[type, Registered] = {}
_by_name: dict[str, Registered] = {}


def register_type(
    cls: type,
    encode: Callable[[Any], Any],
    decode: Callable[[Any], Any],
    *,
    name: str | None = None,
) -> None:
    """Carry instances of ``cls`` (exactly that class, not subclasses) by value:
    ``encode(obj)`` returns a value the codec carries (a str, a dict, a tuple...) and
    ``decode(that)`` rebuilds the object. ``name`` (default "module:qualname") is what
    travels: register the same name in the client and in the worker (a pool's ``preload``
    module can call this). A receiver without it gets a ``RemoteRecord``. Registering a
    name or class again replaces it."""
    if not isinstance(cls, type):
        raise TypeError(f"register_type takes a class, not {cls!r}")
    if not callable(encode) or not callable(decode):
        raise TypeError("register_type needs callable encode and decode functions")
    name = type_name(cls) if name is None else name
    if not isinstance(name, str) or not 0 < len(name) <= MAX_TYPE_NAME:
        raise ValueError(f"a registered type name is 1-{MAX_TYPE_NAME} characters")
    entry = Registered(cls, name, encode, decode)
    with _lock:
        old = _by_name.get(name)
        if old is not None:
            _by_type.pop(old.cls, None)
        old_of_cls = _by_type.get(cls)
        if old_of_cls is not None:
            _by_name.pop(old_of_cls.name, None)
        _by_type[cls] = entry
        _by_name[name] = entry


def unregister_type(cls_or_name: type | str) -> None:
    """Forget a registration (by class or name); unknown ones are ignored."""
    with _lock:
        entry = (
            _by_name.get(cls_or_name) if isinstance(cls_or_name, str) else _by_type.get(cls_or_name)
        )
        if entry is not None:
            _by_type.pop(entry.cls, None)
            _by_name.pop(entry.name, None)


def registered_for(cls: type) -> Registered | None:
    return _by_type.get(cls)


def registered_named(name: str) -> Registered | None:
    return _by_name.get(name)
