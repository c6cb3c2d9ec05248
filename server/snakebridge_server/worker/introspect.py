"""What a module offers, described for code generation (``OP_INTROSPECT``).

Runs in the worker child process, inside its sandbox, when the server forwards an
``Introspect`` RPC. ``describe`` imports the module (its top level is user code, like a
call's) and returns a plain description made of lists, dicts, strings, bools and None,
which the worker encodes with the value codec; docs/wire.md, Introspect gives its shape and
``snakebridge.codegen.model`` reads it on the client. Everything is bounded: the number of
members, methods, parameters and submodules, and the length of every text, so a huge
library (numpy) gives a large but finite answer marked ``truncated``.

Attributes are read on modules and classes only (``inspect.getattr_static`` for class
members: a property's code does not run). ``allowed`` (the worker's call policy) filters
members: what no call could reach is not described either. Stdlib only, import-light.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import platform
import re
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

MAX_MEMBERS: Final = 2000  # functions + classes + constants of one module
MAX_METHODS: Final = 300  # methods + properties of one class
MAX_PARAMS: Final = 255
MAX_SUBMODULES: Final = 64
MAX_NAMES: Final = 2000  # names a request may ask for
MAX_DOC: Final = 8192  # characters of a docstring
MAX_TEXT: Final = 2048  # characters of a signature, an annotation or a default's repr
MAX_DEFAULT: Final = 200
#: Characters of text (docstrings, signatures) in one description, all members together:
#: the counts above alone would allow gigabytes (2000 classes of 300 documented methods).
MAX_TOTAL_TEXT: Final = 16 * 1024 * 1024

_KINDS: Final = {
    inspect.Parameter.POSITIONAL_ONLY: "positional_only",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional_or_keyword",
    inspect.Parameter.VAR_POSITIONAL: "var_positional",
    inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}
# Imported into a module for its annotations, not part of what it offers (when it has no
# ``__all__`` to say so itself).
_ANNOTATION_MODULES: Final = frozenset(
    {"typing", "typing_extensions", "__future__", "collections.abc", "abc"}
)

Allowed = Callable[[Any], bool]


class _Budget:
    """What is left of ``MAX_TOTAL_TEXT`` while one description is built."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_TOTAL_TEXT

    def spend(self, described: dict[str, Any]) -> None:
        self.left -= len(described.get("doc", "")) + len(described.get("signature", "")) + 64


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ADDRESS: Final = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable(text: str) -> str:
    """``text`` without object addresses (``<object object at 0x7f...>``): the same
    library gives the same description in every process."""
    return _ADDRESS.sub("", text)


def _doc(obj: Any) -> str:
    try:
        doc = inspect.getdoc(obj)
    except Exception:  # a broken __doc__ descriptor must not break the description
        return ""
    return _clip(_stable(doc), MAX_DOC) if isinstance(doc, str) else ""


def _annotation(ann: Any) -> str | None:
    if ann is inspect.Parameter.empty:
        return None
    text = ann if isinstance(ann, str) else inspect.formatannotation(ann)
    return _clip(text, MAX_TEXT)


def _default(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return _clip(_stable(text), MAX_DEFAULT)


def _signature(obj: Any, *, drop_first: bool = False) -> tuple[str, list[list[Any]] | None, Any]:
    """``(text, params, returns)``; ``("", None, None)`` when ``obj`` has no signature
    that ``inspect`` can read (many C functions, numpy's ufuncs)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "", None, None
    params = list(sig.parameters.values())
    if drop_first and params and params[0].kind in _POSITIONAL:
        params = params[1:]
        sig = sig.replace(parameters=params)
    if len(params) > MAX_PARAMS:
        return "", None, None
    rows = [
        [
            p.name,
            _KINDS[p.kind],
            None if p.default is inspect.Parameter.empty else _default(p.default),
            _annotation(p.annotation),
        ]
        for p in params
    ]
    try:
        text = _stable(str(sig))
    except Exception:
        text = ""
    return _clip(text, MAX_TEXT), rows, _annotation(sig.return_annotation)


_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _call_kind(fn: Any) -> str:
    # Not unwrapped: a decorator decides what its result is (@contextmanager wraps a
    # generator function but returns a context manager).
    target = fn
    if inspect.isasyncgenfunction(target):
        return "async_generator"
    if inspect.isgeneratorfunction(target):
        return "generator"
    if inspect.iscoroutinefunction(target):
        return "coroutine"
    return "function"


def _function(name: str, fn: Any, *, drop_first: bool = False) -> dict[str, Any]:
    text, params, returns = _signature(fn, drop_first=drop_first)
    return {
        "name": name,
        "signature": text,
        "params": params,
        "returns": returns,
        "doc": _doc(fn),
        "kind": _call_kind(fn),
    }


def _class_members(cls: type) -> list[tuple[str, Any]]:
    """Public names of ``cls`` and its bases (but not ``object``'s), each with the first
    static value found along the MRO."""
    seen: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and name not in seen:
                seen[name] = value
    return sorted(seen.items())


_PROPERTY_TYPES: Final = (
    property,
    functools.cached_property,
    type(type.__dict__["__name__"]),  # getset_descriptor
    type(complex.real),  # member_descriptor (__slots__)
)


def _class(name: str, cls: type, allowed: Allowed, budget: _Budget) -> dict[str, Any]:
    methods: list[dict[str, Any]] = []
    properties: list[list[Any]] = []
    truncated = False
    for attr, raw in _class_members(cls):
        if len(methods) + len(properties) >= MAX_METHODS or budget.left <= 0:
            truncated = True
            break
        if isinstance(raw, _PROPERTY_TYPES):
            fget = getattr(raw, "fget", None) or getattr(raw, "func", None)
            returns = _signature(fget)[2] if fget is not None else None
            properties.append([attr, returns, _doc(raw)])
            budget.left -= len(properties[-1][2]) + 64
            continue
        if isinstance(raw, staticmethod | classmethod):
            binding = "static" if isinstance(raw, staticmethod) else "class"
            fn = raw.__func__
            described = _function(attr, fn, drop_first=binding == "class")
        elif callable(raw) and not isinstance(raw, type):
            binding = "instance"
            described = _function(attr, raw, drop_first=True)
        else:
            continue  # class-level data: not described
        if not allowed(raw if binding == "instance" else fn):
            continue
        described["binding"] = binding
        budget.spend(described)
        methods.append(described)
    init = _function(name, cls)
    init["kind"] = "function"
    budget.spend(init)
    return {
        "name": name,
        "doc": _doc(cls),
        "init": init,
        "methods": methods,
        "properties": properties,
        "iterable": _has_special(cls, "__iter__") or _has_special(cls, "__aiter__"),
        "truncated": truncated,
    }


def _has_special(cls: type, name: str) -> bool:
    return any(name in vars(k) for k in cls.__mro__ if k is not object)


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _defined_in(value: Any, *modules: str) -> bool:
    """For a module without ``__all__``: whether ``value`` belongs to it. A function or
    class must come from the module or a submodule of it (not an import such as
    ``contextmanager``); a value of a ``typing`` kind (``from __future__ import
    annotations`` too) is for annotations."""
    if callable(value):
        origin = getattr(value, "__module__", None)
        if not isinstance(origin, str):
            return True  # a callable instance of a C type (numpy's ufuncs) says nothing
        return any(origin == m or origin.startswith(m + ".") for m in modules)
    return type(value).__module__ not in _ANNOTATION_MODULES


def _public_names(module: ModuleType) -> tuple[list[str], bool]:
    """The names ``module`` offers and whether it said so itself (``__all__``)."""
    names = getattr(module, "__all__", None)
    if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        return sorted({n for n in names if not n.startswith("_")}), True
    return sorted(n for n in vars(module) if not n.startswith("_")), False


def library_version(module: ModuleType) -> str:
    """``"<distribution> <version>"`` of the code ``module`` belongs to; ``"python X.Y.Z"``
    for the standard library; "" when nothing says."""
    top = module.__name__.partition(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        return f"python {platform.python_version()}"
    version = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(version, str):
        return _clip(f"{top} {version}", MAX_TEXT)
    try:
        return _clip(f"{top} {importlib.metadata.version(top)}", MAX_TEXT)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return ""


def describe(
    name: str,
    allowed: Allowed,
    *,
    names: list[str] | None = None,
    submodules: list[str] | None = None,
    version_only: bool = False,
    budget: _Budget | None = None,
) -> dict[str, Any]:
    """The description of module ``name``. Raises what importing it raises
    (``ModuleNotFoundError``), and ``AttributeError`` for a name in ``names`` it lacks."""
    module = importlib.import_module(name)
    # The name asked for, not ``__name__``: ``os.path`` is ``posixpath``.
    head: dict[str, Any] = {"module": name, "version": library_version(module)}
    if version_only:
        return head
    if names:
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            raise AttributeError(f"module {name!r} has no attribute {missing[0]!r}")
        wanted, listed = sorted(set(names)), True
    else:
        wanted, listed = _public_names(module)
    budget = budget or _Budget()
    functions: list[dict[str, Any]] = []
    classes: list[dict[str, Any]] = []
    constants: list[list[str]] = []
    truncated = False
    for attr in wanted:
        if len(functions) + len(classes) + len(constants) >= MAX_MEMBERS or budget.left <= 0:
            truncated = True
            break
        value = getattr(module, attr, None)
        if isinstance(value, ModuleType):
            continue  # a submodule: asked for by name, in ``submodules``
        if not listed and not _defined_in(value, module.__name__, name):
            continue
        if not allowed(value):
            continue
        if isinstance(value, type):
            classes.append(_class(attr, value, allowed, budget))
        elif callable(value):
            functions.append(_function(attr, value))
            budget.spend(functions[-1])
        else:
            constants.append([attr, _clip(_type_name(value), MAX_TEXT)])
    doc = _doc(module)
    budget.left -= len(doc)
    described: dict[str, Any] = {
        **head,
        "doc": doc,
        "functions": functions,
        "classes": classes,
        "constants": constants,
        "submodules": [describe(f"{name}.{sub}", allowed) for sub in (submodules or [])],
        "truncated": truncated or any(c["truncated"] for c in classes),
    }
    return described
