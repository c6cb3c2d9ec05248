"""What a worker says a module offers (``worker.introspect.describe``), in this process:
kinds, signatures, classes, constants, the policy filter, stable text and the bounds."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snakebridge.codegen.model import module_info
from snakebridge_server.worker import introspect

SOURCE = '''
"""A library."""
from __future__ import annotations
import os
import functools
from contextlib import contextmanager
from typing import Any, Iterator

__version__ = "2.0"
LIMIT = 10
_hidden = 1
shell = os.system
marker = object()


def gen(n: int) -> Iterator[int]:
    """Counts."""
    yield from range(n)


async def agen():
    yield 1


async def coro(x, /, *, y=marker) -> int:
    return x


@contextmanager
def managed():
    yield


class Thing:
    """A thing."""

    size: int = 3

    def __init__(self, a: int, b: str = "b") -> None:
        self.a = a

    @property
    def double(self) -> int:
        """Twice a."""
        return 2 * self.a

    @functools.cached_property
    def triple(self) -> int:
        """Three times a."""
        return 3 * self.a

    def method(self, k: int = 1) -> int:
        return k

    @classmethod
    def build(cls, a: int) -> Thing:
        return cls(a)

    @staticmethod
    def helper(x: int) -> int:
        return x

    def _private(self) -> None:
        pass

    def __iter__(self) -> Iterator[int]:
        return iter([self.a])
'''


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "sb_introspect_demo.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "sb_introspect_demo"
    sys.modules.pop("sb_introspect_demo", None)


def no_os_system(obj: Any) -> bool:
    return getattr(obj, "__name__", "") != "system"


def test_functions_classes_and_constants_are_described(library: str) -> None:
    raw = introspect.describe(library, no_os_system)
    info = module_info(raw)  # the client's reader accepts it
    assert (info.module, info.version, info.doc) == (library, f"{library} 2.0", "A library.")
    kinds = {f.name: f.kind for f in info.functions}
    assert kinds == {
        "agen": "async_generator", "coro": "coroutine", "gen": "generator", "managed": "function",
    }  # fmt: skip
    coro = next(f for f in info.functions if f.name == "coro")
    assert [(p.name, p.kind, p.default) for p in coro.params or ()] == [
        ("x", "positional_only", None),
        ("y", "keyword_only", "<object object>"),  # no address: the same in every process
    ]
    assert coro.signature == "(x, /, *, y=<object object>) -> 'int'"
    assert [(c.name, c.type_name) for c in info.constants] == [
        ("LIMIT", "int"),
        ("marker", "object"),
    ]
    (thing,) = info.classes
    assert thing.iterable and thing.doc == "A thing."
    assert [p.name for p in thing.init.params or ()] == ["a", "b"]
    methods = {m.name: m.binding for m in thing.methods}
    assert methods == {"build": "class", "helper": "static", "method": "instance"}
    build = next(m for m in thing.methods if m.name == "build")
    assert [p.name for p in build.params or ()] == ["a"]  # cls dropped
    assert [(p.name, p.annotation, p.doc) for p in thing.properties] == [
        ("double", "int", "Twice a."),
        ("triple", "int", "Three times a."),
    ]


def test_imports_are_left_out_of_a_module_without_all(library: str) -> None:
    raw = introspect.describe(library, lambda obj: True)
    names = {f["name"] for f in raw["functions"]} | {c[0] for c in raw["constants"]}
    assert not names & {"contextmanager", "shell", "os", "Any", "Iterator", "annotations"}


def test_what_the_policy_denies_is_left_out(library: str) -> None:
    def functions(allowed: Any) -> list[str]:
        raw = introspect.describe(library, allowed, names=["shell", "gen"])
        return [f["name"] for f in raw["functions"]]

    assert functions(lambda obj: True) == ["gen", "shell"]
    assert functions(no_os_system) == ["gen"]


def test_names_and_submodules_and_version_only(library: str) -> None:
    only = introspect.describe(library, no_os_system, names=["gen", "LIMIT"])
    assert [f["name"] for f in only["functions"]] == ["gen"]
    assert only["constants"] == [["LIMIT", "int"]]
    with pytest.raises(AttributeError, match="'nope'"):
        introspect.describe(library, no_os_system, names=["nope"])
    assert introspect.describe(library, no_os_system, version_only=True) == {
        "module": library, "version": f"{library} 2.0",
    }  # fmt: skip
    json_info = introspect.describe("json", no_os_system, submodules=["decoder"])
    assert json_info["submodules"][0]["module"] == "json.decoder"
    with pytest.raises(ModuleNotFoundError):
        introspect.describe("sb_no_such_module", no_os_system)


def test_the_description_is_bounded(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(introspect, "MAX_MEMBERS", 2)
    monkeypatch.setattr(introspect, "MAX_METHODS", 1)
    monkeypatch.setattr(introspect, "MAX_DOC", 5)
    raw = introspect.describe(library, no_os_system)
    assert raw["truncated"] is True
    assert len(raw["functions"]) + len(raw["classes"]) + len(raw["constants"]) == 2
    assert raw["doc"] == "A ..."
    big = introspect.describe(library, no_os_system, names=["Thing"])
    (thing,) = big["classes"]
    assert len(thing["methods"]) + len(thing["properties"]) == 1 and thing["truncated"]


def test_the_text_of_a_description_is_bounded_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    # Counts alone would allow 2000 classes of 300 documented methods: text is bounded too.
    whole = introspect.describe("json", no_os_system)
    assert whole["truncated"] is False
    monkeypatch.setattr(introspect, "MAX_TOTAL_TEXT", 200)
    cut = introspect.describe("json", no_os_system)
    assert cut["truncated"] is True
    assert len(cut["functions"]) + len(cut["classes"]) < len(whole["functions"]) + len(
        whole["classes"]
    )


def test_the_standard_library_reports_the_python_version() -> None:
    assert introspect.describe("math", no_os_system, version_only=True)["version"].startswith(
        "python 3."
    )
