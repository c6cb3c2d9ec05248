"""The unit test tree mirrors the source tree: ``tests/unit/snakebridge/wire/test_codec.py``
tests ``sdk/snakebridge/wire/``. Each test file sits in the directory of the package it
tests and imports from that package; this file, which checks the tree itself, is the one
test file at the top."""

from __future__ import annotations

import ast
import pathlib

import snakebridge
import snakebridge_server

UNIT = pathlib.Path(__file__).parent
THIS = pathlib.Path(__file__)
SOURCE_ROOTS = [
    pathlib.Path(p).parent.parent for p in (snakebridge.__file__, snakebridge_server.__file__) if p
]


def _package_of(test_file: pathlib.Path) -> str:
    return ".".join(test_file.parent.relative_to(UNIT).parts)


def _is_source_package(dotted: str) -> bool:
    rel = pathlib.Path(*dotted.split(".")) if dotted else None
    return rel is not None and any((root / rel / "__init__.py").is_file() for root in SOURCE_ROOTS)


def _imported_modules(test_file: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(test_file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _unit_files() -> list[pathlib.Path]:
    return sorted(p for p in UNIT.rglob("test_*.py") if p != THIS)


def test_the_tree_has_unit_tests_to_check() -> None:
    assert len(_unit_files()) >= 20


def test_only_test_files_and_conftests_live_in_the_unit_tree() -> None:
    others = [
        str(p.relative_to(UNIT))
        for p in UNIT.rglob("*.py")
        if not p.name.startswith("test_") and p.name != "conftest.py"
    ]
    assert others == []


def test_every_unit_test_file_sits_in_the_directory_of_a_source_package() -> None:
    misplaced = [
        str(p.relative_to(UNIT)) for p in _unit_files() if not _is_source_package(_package_of(p))
    ]
    assert misplaced == [], (
        "move these under tests/unit/<package path>/ (e.g. snakebridge/wire/test_codec.py "
        f"for sdk/snakebridge/wire/codec.py): {misplaced}"
    )


def test_every_unit_test_file_imports_from_the_package_its_directory_names() -> None:
    strays = []
    for p in _unit_files():
        package = _package_of(p)
        imported = _imported_modules(p)
        if not any(m == package or m.startswith(package + ".") for m in imported):
            strays.append(f"{p.relative_to(UNIT)} imports nothing from {package}")
    assert strays == []


def test_unit_test_file_names_are_unique() -> None:
    # rootdir-relative imports ("prepend" mode, no __init__.py here): pytest imports each
    # unit test file by its base name, so two files with one name cannot both load.
    names = [p.name for p in _unit_files()]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_no_init_file_makes_a_test_directory_shadow_its_package() -> None:
    # tests/unit/snakebridge/__init__.py would make "snakebridge" resolve to the test dir.
    assert [str(p.relative_to(UNIT)) for p in UNIT.rglob("__init__.py")] == []
