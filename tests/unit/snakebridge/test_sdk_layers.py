"""The SDK's layering: its modules import each other without a cycle, only ``_transport``
speaks grpclib, and a ``Call`` is described by named fields that reach the wire unmixed."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

import snakebridge
from snakebridge._client import Client, Invocation
from snakebridge.wire.constants import KIND_METHOD, PROTOCOL_VERSION

ROOT = pathlib.Path(snakebridge.__file__).parent
#: The packages under the transport: what only ``_transport`` may import.
TRANSPORT_PACKAGES = ("grpclib", "h2", "hpack", "hyperframe")


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    """Every module of the SDK: dotted name -> (path, is a package)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(path: pathlib.Path, name: str, is_package: bool, known: set[str]) -> set[str]:
    """What ``name`` imports, absolute: every import statement, including those under
    ``if TYPE_CHECKING:`` and inside functions (a cycle there is a cycle in the design).
    ``from pkg import x`` is an import of ``pkg.x`` when that is a module in ``known``, and
    of ``pkg`` itself (its body runs) for any other name."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in known else module)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: {t for t in _imports(path, name, is_package, known) if t in known and t != name}
        for name, (path, is_package) in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, path)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_the_sdk_module_graph_has_no_cycle() -> None:
    graph = _graph()
    assert {"snakebridge._client", "snakebridge._refs", "snakebridge._transport"} <= graph.keys()
    assert "snakebridge._transport" in graph["snakebridge._client"]  # the graph sees edges
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_only_the_transport_imports_grpclib_and_h2() -> None:
    """The layers below grpclib stay behind one module; ``wire`` (shared with the server)
    and the generated stubs are the contract, not the SDK's transport."""
    speakers = set()
    for name, (path, is_package) in _modules().items():
        if name.startswith(("snakebridge.wire", "snakebridge._generated")):
            continue
        for target in _imports(path, name, is_package, set()):
            if target.split(".")[0] in TRANSPORT_PACKAGES:
                speakers.add(name)
    assert speakers == {"snakebridge._transport"}


# -- a Call, described by name ----------------------------------------------------------


def test_an_invocation_takes_its_fields_by_keyword_only() -> None:
    with pytest.raises(TypeError):
        Invocation(KIND_METHOD, "", "m", "s", [], None)  # type: ignore[call-arg]  # positional on purpose: refused
    invocation = Invocation(
        kind=KIND_METHOD, module="", name="m", session_id="s", args=[], kwargs=None
    )
    assert [f.name for f in dataclasses.fields(invocation) if f.kw_only] == [
        "kind", "module", "name", "session_id", "args", "kwargs",
        "target_ref", "pool", "timeout", "idempotent", "affinity",
    ]  # fmt: skip
    with pytest.raises(AttributeError):  # slots: a misspelt field fails, not a new attribute
        invocation.target = "x"  # type: ignore[attr-defined]


def test_every_invocation_field_reaches_its_own_wire_field() -> None:
    # Distinct values everywhere, so any two fields that traded places would show.
    client = Client("127.0.0.1:1")
    request = client._request(
        Invocation(
            kind=KIND_METHOD,
            module="the.module",
            name="the_name",
            session_id="the-session",
            args=[1, "two"],
            kwargs={"k": 3.0},
            target_ref="the-ref",
            pool="the-pool",
            timeout=7.5,
            idempotent=True,
            affinity="strict",
        )
    )
    assert request.protocol_version == PROTOCOL_VERSION
    assert (request.kind, request.module, request.name) == (KIND_METHOD, "the.module", "the_name")
    assert (request.session_id, request.target_ref) == ("the-session", "the-ref")
    assert (request.pool, request.timeout, request.idempotent) == ("the-pool", 7.5, True)
    assert request.affinity == "strict"
    assert client._decode(request.args) == [[1, "two"], {"k": 3.0}]


def test_an_invocation_without_arguments_sends_none() -> None:
    client = Client("127.0.0.1:1", timeout=2.0)
    request = client._request(
        Invocation(kind=KIND_METHOD, module="m", name="pi", session_id="s", args=None, kwargs=None)
    )
    assert request.args == b"" and request.arg_refs == []
    assert (request.pool, request.affinity, request.timeout) == ("", "", 2.0)
