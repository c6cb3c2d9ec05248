"""The worker's side of the call policy (issue #10), without a worker process: format
strings that walk attributes, formatters and dunder functions handed over as refs, what
set_attr may change, and the scratch dir kept off the import path."""

from __future__ import annotations

import importlib
import os
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from snakebridge.errors import PolicyError
from snakebridge_server.sandbox.policy import CallPolicy
from snakebridge_server.worker import main as worker_main
from snakebridge_server.worker import names

STANDARD = CallPolicy.build("standard")
NONE = CallPolicy.build("none")


@pytest.mark.parametrize(
    "text",
    ["{0.__globals__}", "{0.os}", "a {x.y} b", "{0:{1.__class__}}", "{0[k].attr}", "{0:{1:{2.a}}}"],
)
def test_format_strings_that_walk_attributes_are_refused(text: str) -> None:
    with pytest.raises(PolicyError, match="walks an attribute"):
        STANDARD.check_format(text)
    NONE.check_format(text)  # level none: no policy


@pytest.mark.parametrize(
    "text", ["{}", "{0} and {1!r:>10}", "{0[key]}", "{0[a.b]}", "{{0.x}}", "{"]
)
def test_format_strings_that_only_index_pass(text: str) -> None:
    STANDARD.check_format(text)


def test_field_names_for_get_field_are_checked_as_field_names() -> None:
    with pytest.raises(PolicyError, match="walks an attribute"):
        STANDARD.check_format("0.__globals__[os]", field_name=True)
    STANDARD.check_format("0[a.b]", field_name=True)
    STANDARD.check_format("plain . text")  # a format string without fields


def test_dunder_functions_are_refused_as_refs() -> None:
    with pytest.raises(PolicyError, match="private or dunder function"):
        STANDARD.check_routine("builtins.type.__subclasses__", "__subclasses__")
    STANDARD.check_routine("math.sqrt", "sqrt")


def _vetted(obj: Any, policy: CallPolicy = STANDARD, *, callee: bool = False) -> Any:
    fake = SimpleNamespace(policy=policy if policy.enforced else None)
    return worker_main.Worker._vetted(fake, obj, callee=callee)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "obj",
    [
        str.format,
        str.format_map,
        "{0.x}".format,
        string.Formatter.vformat,
        string.Formatter().get_field,
        object.__subclasses__,
        int.__add__,
        (1).__add__,
    ],
    ids=repr,
)
def test_formatters_and_dunder_methods_are_not_handed_over(obj: Any) -> None:
    with pytest.raises(PolicyError):
        _vetted(obj)
    assert _vetted(obj, NONE) is obj


def test_a_callee_named_by_the_request_may_be_a_formatter() -> None:
    assert _vetted(str.format, callee=True) is str.format


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "found"),
    [
        (str.format, ["{0.a}", 1], {}, [("{0.a}", False)]),
        ("{0.a}".format, [1], {}, [("{0.a}", False)]),
        (str.format_map, ["{a.b}", {}], {}, [("{a.b}", False)]),
        (string.Formatter.vformat, [string.Formatter(), "{0.a}", [], {}], {}, [("{0.a}", False)]),
        (string.Formatter().format, ["{0.a}"], {}, [("{0.a}", False)]),
        (string.Formatter().get_field, ["0.a", [], {}], {}, [("0.a", True)]),
        (string.Formatter().get_field, [], {"field_name": "0.a"}, [("0.a", True)]),
        (len, ["{0.a}"], {}, []),
    ],
)
def test_the_format_strings_a_call_would_walk(
    fn: Any, args: list[Any], kwargs: dict[str, Any], found: list[tuple[str, bool]]
) -> None:
    assert names.format_strings(fn, args, kwargs) == found


@pytest.mark.parametrize(
    ("owner", "shared"),
    [
        (os, True),
        (string.Formatter, True),
        (CallPolicy, True),
        (os.path.join, True),
        (str.upper, True),
        ("x".upper, True),
        (string.Formatter(), False),
        (SimpleNamespace(), False),
    ],
    ids=repr,
)
def test_set_attr_may_change_instances_only(owner: Any, shared: bool) -> None:
    assert names.shared_by_every_caller(owner) is shared


@pytest.fixture
def import_state() -> Iterator[None]:
    path, hooks = list(sys.path), list(sys.path_hooks)
    cache = dict(sys.path_importer_cache)
    yield
    sys.path[:], sys.path_hooks[:] = path, hooks
    sys.path_importer_cache.clear()
    sys.path_importer_cache.update(cache)


@pytest.mark.usefixtures("import_state")
def test_the_scratch_dir_stays_off_the_import_path(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "sub").mkdir(parents=True)
    for directory, name in ((scratch, "sb_unit_top"), (scratch / "sub", "sb_unit_sub")):
        (directory / f"{name}.py").write_text("VALUE = 1\n")
    sys.path[:0] = [str(scratch), "", "relative-entry"]
    worker_main.keep_off_import_path(str(scratch))
    assert str(scratch) not in sys.path and "" not in sys.path
    assert all(os.path.isabs(p) for p in sys.path)
    # Put back by code that runs later (unittest discovery, site.addsitedir do that).
    sys.path[:0] = [str(scratch), str(scratch / "sub")]
    for name in ("sb_unit_top", "sb_unit_sub"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)
    # Elsewhere imports work as before.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sb_unit_ok.py").write_text("VALUE = 2\n")
    sys.path.insert(0, str(elsewhere))
    assert importlib.import_module("sb_unit_ok").VALUE == 2
    del sys.modules["sb_unit_ok"]
