"""Annotation text from a worker, as a type the generated code may state. Client process.

Pure. ``resolve`` parses an annotation (``"Optional[List[int]]"``, ``"int | None"``,
``"mymod.Point"``) and rewrites it into today's spelling (``list[int] | None``), keeping it
only when every name in it is a builtin, a ``typing`` or ``collections.abc`` form, or a
class the same generated module defines; anything else becomes ``Any``. A type the value
codec cannot carry back (iterators, callables, classes) is ``Any`` in a result: the result
arrives as a ref, and the generated code must not claim otherwise.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Final

from .literals import literal

#: Characters of the longest type written; a longer one is ``Any``.
MAX_TYPE: Final = 60
#: Builtin types a value can be annotated with; all of them travel by value but ``object``.
BUILTIN_TYPES: Final = frozenset(
    {
        "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
        "object", "set", "str", "tuple",
    }
)  # fmt: skip
_TYPING_BUILTIN: Final = {
    "List": "list",
    "Dict": "dict",
    "Tuple": "tuple",
    "Set": "set",
    "FrozenSet": "frozenset",
    "Text": "str",
}
_ABC: Final = frozenset(
    {
        "AsyncGenerator", "AsyncIterable", "AsyncIterator", "Awaitable", "Callable",
        "Collection", "Container", "Generator", "Hashable", "Iterable", "Iterator",
        "Mapping", "MutableMapping", "MutableSequence", "MutableSet", "Reversible",
        "Sequence", "Sized",
    }
)  # fmt: skip
#: What no argument or result can be: a value that arrives as a ref, or a callable.
_NOT_A_VALUE: Final = frozenset(
    {
        "AsyncGenerator", "AsyncIterable", "AsyncIterator", "Awaitable", "Callable",
        "Generator", "Iterator",
    }
)  # fmt: skip
#: Forms an argument may be but a result may not (it comes back as a list or a ref).
_ARGUMENT_ONLY: Final = frozenset({"Iterable", "Collection", "Container", "Reversible"})
_ITEM_OF: Final = frozenset(
    {"Iterator", "Iterable", "Generator", "AsyncIterator", "AsyncIterable", "AsyncGenerator"}
)


#: What a generic written bare stands for (mypy --strict wants its parameters).
_BARE: Final = {
    "list": "Any", "set": "Any", "frozenset": "Any", "tuple": "Any, ...", "dict": "Any, Any",
    "Sequence": "Any", "MutableSequence": "Any", "Iterable": "Any", "Collection": "Any",
    "Container": "Any", "Reversible": "Any", "MutableSet": "Any",
    "Mapping": "Any, Any", "MutableMapping": "Any, Any",
}  # fmt: skip


class _Unresolved(Exception):
    pass


@dataclass
class Imports:
    """Names the generated module must import, by module (and the lint it waives)."""

    typing: set[str] = field(default_factory=set)
    abc: set[str] = field(default_factory=set)
    builtins: bool = False
    noqa: set[str] = field(default_factory=set)  # ruff codes the file must waive


@dataclass(frozen=True, slots=True)
class Scope:
    """What names mean in one generated module: its classes, and the names its members
    take (which shadow builtins of the same name)."""

    module: str
    classes: frozenset[str]
    shadowed: frozenset[str]


class _Rewriter:
    def __init__(self, scope: Scope, *, result: bool) -> None:
        self.scope = scope
        self.result = result
        self.typing: set[str] = set()
        self.abc: set[str] = set()
        self.builtins = False
        self.local = False  # names a class of the generated module
        self.depth = 0

    def name(self, dotted: str) -> str:
        scope = self.scope
        prefix = scope.module + "."
        if dotted.startswith(prefix) and dotted[len(prefix) :] in scope.classes:
            dotted = dotted[len(prefix) :]
        for module in ("typing.", "typing_extensions.", "collections.abc.", "builtins."):
            if dotted.startswith(module):
                dotted = dotted[len(module) :]
        if dotted in scope.classes:
            self.local = True
            return dotted
        dotted = _TYPING_BUILTIN.get(dotted, dotted)
        if dotted == "NoneType":
            return "None"
        if dotted in BUILTIN_TYPES:
            if dotted in scope.shadowed:
                self.builtins = True
                return f"builtins.{dotted}"
            return dotted
        if dotted == "Any":
            self.typing.add("Any")
            return "Any"
        if dotted in _ABC:
            if dotted in _NOT_A_VALUE or (self.result and dotted in _ARGUMENT_ONLY):
                raise _Unresolved
            self.abc.add(dotted)
            return dotted
        raise _Unresolved

    def node(self, node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            if node.value is None:
                return "None"
            if isinstance(node.value, str):
                return self.node(_parse(node.value))  # a forward reference
            raise _Unresolved
        if isinstance(node, ast.Name | ast.Attribute):
            return self.bare(self.name(_dotted(node)))
        if _union_base(node):
            return _union(self.members(node))
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        raise _Unresolved

    def members(self, node: ast.expr) -> list[str]:
        """The members of a union (``A | B``, ``Optional[A]``, ``Union[A, B]``), flat."""
        kind = _union_base(node)
        if kind == "|":
            assert isinstance(node, ast.BinOp)
            return self.members(node.left) + self.members(node.right)
        if kind:
            assert isinstance(node, ast.Subscript)
            args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
            if kind == "Optional" and len(args) != 1:
                raise _Unresolved
            extra = ["None"] if kind == "Optional" else []
            return [m for a in args for m in self.members(a)] + extra
        return [self.node(node)]

    def bare(self, name: str) -> str:
        """A generic written without parameters, with ``Any`` ones."""
        params = _BARE.get(name.removeprefix("builtins."))
        if params is None:
            return name
        self.typing.add("Any")
        return f"{name}[{params}]"

    def subscript(self, node: ast.Subscript) -> str:
        base = _dotted(node.value) if isinstance(node.value, ast.Name | ast.Attribute) else ""
        for module in ("typing.", "typing_extensions."):
            base = base.removeprefix(module)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        self.depth += 1
        try:
            if base == "Literal":
                if not all(
                    isinstance(a, ast.Constant) and type(a.value) in (str, int, bool) for a in args
                ):
                    raise _Unresolved
                self.typing.add("Literal")
                values = [_literal_value(a.value) for a in args]  # type: ignore[attr-defined]
                return f"Literal[{', '.join(values)}]"
            head = self.name(base) if base else ""
            if not head or head == "object" or head in self.scope.classes:
                raise _Unresolved
            parts = [
                "..." if isinstance(a, ast.Constant) and a.value is Ellipsis else self.node(a)
                for a in args
            ]
            return f"{head}[{', '.join(parts)}]"
        finally:
            self.depth -= 1


def _union_base(node: ast.expr) -> str:
    """``"|"``, ``"Optional"`` or ``"Union"`` when ``node`` is a union, else ""."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return "|"
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name | ast.Attribute):
        try:
            base = _dotted(node.value)
        except _Unresolved:
            return ""
        base = base.removeprefix("typing.").removeprefix("typing_extensions.")
        return base if base in ("Optional", "Union") else ""
    return ""


def _union(members: list[str]) -> str:
    """``A | B | None``: each member once, ``None`` last (ruff RUF036)."""
    unique = list(dict.fromkeys(m for m in members if m != "None"))
    return " | ".join(unique + (["None"] if "None" in members else []))


def _literal_value(value: str | int | bool) -> str:
    return literal(value) if isinstance(value, str) else repr(value)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise _Unresolved


def _parse(text: str) -> ast.expr:
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _Unresolved from None


def resolve(text: str | None, scope: Scope, imports: Imports, *, result: bool = False) -> str:
    """``text`` as a type for the generated module, or ``"Any"``; what it needs imported
    is added to ``imports``. ``result``: the type of a value coming back (stricter)."""
    if text is None or len(text) > 1000:
        imports.typing.add("Any")
        return "Any"
    rewriter = _Rewriter(scope, result=result)
    try:
        resolved = rewriter.node(_parse(text))
    except _Unresolved:
        imports.typing.add("Any")
        return "Any"
    if len(resolved) > MAX_TYPE:
        # One parameter per line must fit in 100 columns: a long type (a Literal of 37
        # strings) would need a layout of its own.
        imports.typing.add("Any")
        return "Any"
    if result and rewriter.local and resolved not in scope.classes:
        # Only a bare class is retyped on arrival; inside a container it is a plain Ref.
        imports.typing.add("Any")
        return "Any"
    imports.typing |= rewriter.typing
    imports.abc |= rewriter.abc
    imports.builtins |= rewriter.builtins
    return resolved


def item_type(text: str | None, scope: Scope, imports: Imports) -> str:
    """The item type of a generator's return annotation (``Iterator[int]`` -> ``int``)."""
    if text is not None:
        try:
            node = _parse(text)
        except _Unresolved:
            node = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name | ast.Attribute):
            try:
                base = _dotted(node.value).rpartition(".")[2]
            except _Unresolved:
                base = ""
            if base in _ITEM_OF:
                first = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) else node.slice
                return resolve(ast.unparse(first), scope, imports, result=True)
    imports.typing.add("Any")
    return "Any"


def constant_type(type_name: str, scope: Scope, imports: Imports) -> str:
    """The type of a module constant of type ``type_name``: its builtin type when it
    travels by value, else ``Any``."""
    if type_name == "NoneType":
        return "None"
    if type_name not in BUILTIN_TYPES or type_name == "object":
        imports.typing.add("Any")
        return "Any"
    rewriter = _Rewriter(scope, result=True)
    resolved = rewriter.bare(rewriter.name(type_name))
    imports.typing |= rewriter.typing
    imports.builtins |= rewriter.builtins
    return resolved


def shadows_builtin(names: Collection[str]) -> frozenset[str]:
    """The names among ``names`` that are builtins (a member that shadows one)."""
    return frozenset(n for n in names if hasattr(builtins, n))
