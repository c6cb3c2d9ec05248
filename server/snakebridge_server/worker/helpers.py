"""Operator helpers: the callables ``call_helper`` reaches, loaded by each worker at start.

Runs in the worker child process.

A helper source (``--helpers``) is a dotted module name, imported as usual, or an absolute
path to a ``.py`` file, loaded under a synthetic module name (``file_module_name``). A
source contributes the names in its ``__all__`` that are callable, or else every public
callable it defines itself (imports such as ``from typing import Any`` are not helpers).
Helpers are named by their bare name; two sources exposing the same name, or an
allowlisted name (``--helper-allow``) that no source provides, fail the worker's start with
a ``HelperLoadError`` naming the sources.

The client only ever sends a helper's name: paths and code come from the operator's
configuration alone. Kept import-light (stdlib only), like the worker.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Final

from ..helper_sources import file_module_name, is_helper_file

MAX_DOC: Final = 2048  # characters of a helper's docstring that ListHelpers carries


class HelperLoadError(Exception):
    """A helper source did not load, or the helpers it yields are ambiguous or incomplete.

    Raised in the worker before it reports READY, so the server does not start; the
    operator fixes ``--helpers`` / ``--helper-allow`` or the helper source it names."""


def _load_file(path: str) -> ModuleType:
    name = file_module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: dataclasses and typing look it up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _exposed(module: ModuleType) -> dict[str, Callable[..., Any]]:
    names = getattr(module, "__all__", None)
    if names is not None:
        found = {n: getattr(module, n, None) for n in names}
        return {n: fn for n, fn in found.items() if callable(fn)}
    return {
        n: v
        for n, v in vars(module).items()
        if not n.startswith("_")
        and callable(v)
        and getattr(v, "__module__", None) == module.__name__
    }


def load_helpers(sources: Sequence[str], allow: Sequence[str] = ()) -> dict[str, Any]:
    """Import every source and return the exposed helpers by name.

    ``allow``, when not empty, is the exact set of names exposed. Raises
    ``HelperLoadError``; the caller has applied the sandbox already (helpers are user
    code)."""
    providers: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
    for entry in sources:
        try:
            module = _load_file(entry) if is_helper_file(entry) else importlib.import_module(entry)
        except BaseException as exc:  # SystemExit from a helper's top level included
            raise HelperLoadError(
                f"helper source {entry!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        for name, fn in _exposed(module).items():
            providers.setdefault(name, []).append((entry, fn))
    if allow:
        missing = [name for name in allow if name not in providers]
        if missing:
            raise HelperLoadError(
                f"--helper-allow names {', '.join(map(repr, missing))}, which no helper "
                f"source provides (sources: {', '.join(map(repr, sources)) or 'none'})"
            )
        providers = {name: providers[name] for name in allow}
    helpers: dict[str, Any] = {}
    for name, found in providers.items():
        if len(found) > 1:
            raise HelperLoadError(
                f"helper {name!r} is defined by more than one source "
                f"({', '.join(repr(src) for src, _ in found)}); rename one of them, or "
                "leave it out of --helper-allow"
            )
        helpers[name] = found[0][1]
    return helpers


def describe_helpers(helpers: dict[str, Any]) -> list[list[str]]:
    """``[name, signature, doc]`` per helper, sorted by name, for the READY message."""
    rows = []
    for name in sorted(helpers):
        fn = helpers[name]
        try:
            signature = str(inspect.signature(fn))
        except (TypeError, ValueError):  # some builtins and C callables have none
            signature = ""
        doc = inspect.getdoc(fn) or ""
        if len(doc) > MAX_DOC:
            doc = doc[: MAX_DOC - 3] + "..."
        rows.append([name, signature, doc])
    return rows
