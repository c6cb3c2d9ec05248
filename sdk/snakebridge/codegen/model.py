"""The description of a remote module, as the ``Introspect`` RPC returns it.

Runs in the client process. Pure: ``module_info`` turns the decoded description (plain
lists, dicts and strings; docs/wire.md, Introspect) into frozen dataclasses, checking its
shape, so the renderer (``render``) works on typed values only. A description that does
not have the documented shape raises ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

#: Parameter kinds, in the order Python requires them.
KINDS: Final = (
    "positional_only",
    "positional_or_keyword",
    "var_positional",
    "keyword_only",
    "var_keyword",
)
CALL_KINDS: Final = ("function", "coroutine", "generator", "async_generator")
BINDINGS: Final = ("instance", "class", "static")


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kind: str  # one of KINDS
    default: str | None  # repr of the default, None when it has none
    annotation: str | None  # the annotation as text, None when it has none


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A function, a method or a class's constructor. ``params`` is None when the
    callable has no signature ``inspect`` can read (many C functions)."""

    name: str
    signature: str  # str(inspect.signature(...)), "" when it has none
    params: tuple[Param, ...] | None
    returns: str | None
    doc: str
    kind: str  # one of CALL_KINDS
    binding: str = "instance"  # methods only: one of BINDINGS

    @property
    def streams(self) -> bool:
        """A generator function: its wrapper iterates instead of returning."""
        return self.kind in ("generator", "async_generator")


@dataclass(frozen=True, slots=True)
class PropertyInfo:
    name: str
    annotation: str | None
    doc: str


@dataclass(frozen=True, slots=True)
class ClassInfo:
    name: str
    doc: str
    init: FunctionInfo
    methods: tuple[FunctionInfo, ...]
    properties: tuple[PropertyInfo, ...]
    iterable: bool
    truncated: bool


@dataclass(frozen=True, slots=True)
class ConstantInfo:
    name: str
    type_name: str  # "float", "collections.OrderedDict", ...


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    module: str
    version: str  # "python 3.11.7", "numpy 2.4.6", "" when unknown
    doc: str = ""
    functions: tuple[FunctionInfo, ...] = ()
    classes: tuple[ClassInfo, ...] = ()
    constants: tuple[ConstantInfo, ...] = ()
    submodules: tuple[ModuleInfo, ...] = ()
    truncated: bool = False


def _str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} is not a string")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _list(value: Any, what: str) -> list[Any]:
    if type(value) is not list:
        raise ValueError(f"{what} is not a list")
    return value


def _dict(value: Any, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise ValueError(f"{what} is not a map")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise ValueError(f"{what} is not a bool")
    return value


def _param(row: Any) -> Param:
    row = _list(row, "a parameter")
    if len(row) != 4:
        raise ValueError("a parameter is not [name, kind, default, annotation]")
    name, kind, default, annotation = row
    if _str(kind, "a parameter kind") not in KINDS:
        raise ValueError(f"unknown parameter kind {kind!r}")
    return Param(
        _str(name, "a parameter name"),
        kind,
        _opt_str(default, "a default"),
        _opt_str(annotation, "an annotation"),
    )


def _function(raw: Any) -> FunctionInfo:
    d = _dict(raw, "a function")
    params = d.get("params")
    kind = _str(d.get("kind"), "a function kind")
    if kind not in CALL_KINDS:
        raise ValueError(f"unknown function kind {kind!r}")
    binding = _str(d.get("binding", "instance"), "a binding")
    if binding not in BINDINGS:
        raise ValueError(f"unknown method binding {binding!r}")
    return FunctionInfo(
        name=_str(d.get("name"), "a function name"),
        signature=_str(d.get("signature"), "a signature"),
        params=None if params is None else tuple(map(_param, _list(params, "params"))),
        returns=_opt_str(d.get("returns"), "a return annotation"),
        doc=_str(d.get("doc"), "a docstring"),
        kind=kind,
        binding=binding,
    )


def _property(row: Any) -> PropertyInfo:
    row = _list(row, "a property")
    if len(row) != 3:
        raise ValueError("a property is not [name, annotation, doc]")
    return PropertyInfo(
        _str(row[0], "a property name"),
        _opt_str(row[1], "an annotation"),
        _str(row[2], "a docstring"),
    )


def _class(raw: Any) -> ClassInfo:
    d = _dict(raw, "a class")
    return ClassInfo(
        name=_str(d.get("name"), "a class name"),
        doc=_str(d.get("doc"), "a docstring"),
        init=_function(d.get("init")),
        methods=tuple(map(_function, _list(d.get("methods"), "methods"))),
        properties=tuple(map(_property, _list(d.get("properties"), "properties"))),
        iterable=_bool(d.get("iterable"), "iterable"),
        truncated=_bool(d.get("truncated"), "truncated"),
    )


def _constant(row: Any) -> ConstantInfo:
    row = _list(row, "a constant")
    if len(row) != 2:
        raise ValueError("a constant is not [name, type_name]")
    return ConstantInfo(_str(row[0], "a constant name"), _str(row[1], "a type name"))


def module_info(raw: Any) -> ModuleInfo:
    """The ``ModuleInfo`` of a decoded description; ``ValueError`` if it is malformed.
    A ``version_only`` description has only ``module`` and ``version``."""
    d = _dict(raw, "a description")
    return ModuleInfo(
        module=_str(d.get("module"), "module"),
        version=_str(d.get("version"), "version"),
        doc=_str(d.get("doc", ""), "a docstring"),
        functions=tuple(map(_function, _list(d.get("functions", []), "functions"))),
        classes=tuple(map(_class, _list(d.get("classes", []), "classes"))),
        constants=tuple(map(_constant, _list(d.get("constants", []), "constants"))),
        submodules=tuple(map(module_info, _list(d.get("submodules", []), "submodules"))),
        truncated=_bool(d.get("truncated", False), "truncated"),
    )
