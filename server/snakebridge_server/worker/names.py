"""Name resolution and what names reach, in the worker child.

Runs in the worker child process. ``resolve`` turns a request's module and dotted name
into an object (importing submodules on the way); the rest tells the sandbox policy what
an object is (``qualified_name``), whether it formats with attribute access
(``is_formatter``, ``format_strings``) and whether every caller shares it
(``shared_by_every_caller``). Only class-level attributes of routines and types are
read: reading attributes of an arbitrary object could run its code.
"""

from __future__ import annotations

import importlib
import inspect
import string
from types import (
    BuiltinFunctionType,
    ClassMethodDescriptorType,
    CodeType,
    FunctionType,
    MethodDescriptorType,
    MethodType,
    MethodWrapperType,
    ModuleType,
    WrapperDescriptorType,
)
from typing import Any, Final

from snakebridge.errors import BadRequest


def walk(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not part:
            raise BadRequest(f"malformed name {dotted!r}")
        obj = getattr(obj, part)
    return obj


def resolve(module: str, name: str) -> Any:
    """``module`` imported, then ``name`` walked attribute by attribute; submodules that
    the parent does not import itself are imported on the way (``xml`` + ``etree.ElementTree``).
    With an empty ``module`` the longest importable prefix of ``name`` is the module."""
    if not module:
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                mod = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            return resolve(mod.__name__, ".".join(parts[cut:]))
        raise BadRequest(f"no importable module in {name!r}")
    obj: Any = importlib.import_module(module)
    path = module
    for part in name.split(".") if name else ():
        if not part:
            raise BadRequest(f"malformed name {name!r}")
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if not inspect.ismodule(obj):
                raise
            try:
                obj = importlib.import_module(f"{path}.{part}")
            except ModuleNotFoundError:
                raise AttributeError(f"module {path!r} has no attribute {part!r}") from None
        path = f"{path}.{part}"
    return obj


def qualified_name(obj: Any) -> str:
    """``module.qualname`` of a module, class or routine, or else of the object's type
    (``os.environ`` is an ``os._Environ``). Only class-level attributes are read: reading
    attributes of an arbitrary object could run its code."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    if not (isinstance(obj, type) or inspect.isroutine(obj)):
        obj = type(obj)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return ""


# Routines whose attributes (``__name__``, ``__self__``, ``__func__``) are plain data: read
# on these types only, never on an arbitrary object (which could run its own code).
ROUTINE_TYPES: Final = (
    FunctionType,
    MethodType,
    BuiltinFunctionType,
    MethodDescriptorType,
    WrapperDescriptorType,
    MethodWrapperType,
    ClassMethodDescriptorType,
)
_STR_FORMATTERS: Final = frozenset({"format", "format_map"})
# string.Formatter's methods that take a format string (or a field name: get_field).
_FORMATTER_METHODS: Final = {
    string.Formatter.format: "format_string",
    string.Formatter.vformat: "format_string",
    string.Formatter.get_field: "field_name",
}


def is_formatter(fn: Any) -> bool:
    """Whether ``fn`` (one of ``ROUTINE_TYPES``) is ``str.format``/``format_map``,
    bound or not, or a ``string.Formatter`` method that walks format fields."""
    if fn is str.format or fn is str.format_map:
        return True
    if type(fn) is BuiltinFunctionType:
        return isinstance(fn.__self__, str) and fn.__name__ in _STR_FORMATTERS
    return (fn.__func__ if type(fn) is MethodType else fn) in _FORMATTER_METHODS


def format_strings(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> list[tuple[str, bool]]:
    """The format strings (flag False) and field names (True) a call of ``fn`` would
    walk, when ``fn`` is a formatter; [] otherwise."""
    if not isinstance(fn, ROUTINE_TYPES) or not is_formatter(fn):
        return []
    if type(fn) is BuiltinFunctionType:  # "...".format: the string is the receiver
        text: Any = fn.__self__
    elif fn is str.format or fn is str.format_map:
        text = args[0] if args else None
    else:
        func = fn.__func__ if type(fn) is MethodType else fn
        keyword = _FORMATTER_METHODS[func]
        at = 0 if type(fn) is MethodType else 1  # unbound: the Formatter comes first
        text = args[at] if len(args) > at else kwargs.get(keyword)
        if keyword == "field_name":
            return [(text, True)] if isinstance(text, str) else []
    return [(text, False)] if isinstance(text, str) else []


def shared_by_every_caller(obj: Any) -> bool:
    """Whether ``obj`` is a module, class, function or code: state that every caller of
    the worker shares, as opposed to an instance a client made."""
    return isinstance(
        obj, (ModuleType, type, CodeType, property, classmethod, staticmethod, *ROUTINE_TYPES)
    )
