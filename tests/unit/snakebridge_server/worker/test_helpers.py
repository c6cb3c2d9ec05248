"""Helper sources: config validation and the worker's loading rules (no server, no loop)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from snakebridge_server.cli import build_config
from snakebridge_server.config import ConfigError
from snakebridge_server.helper_sources import file_module_name
from snakebridge_server.worker.helpers import (
    MAX_DOC,
    HelperLoadError,
    describe_helpers,
    load_helpers,
)

TOOLS = '''
"""Helpers from a file."""
from typing import Any  # imported, so not a helper

LIMIT = 3  # not callable


def scale(values: list, *, factor: float = 2.0) -> list:
    """Multiply each value by factor."""
    return [v * factor for v in values]


def _private() -> None:
    pass


class Box:
    """A helper class."""
'''


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_file_source_exposes_the_public_callables_it_defines(tmp_path: Path) -> None:
    helpers = load_helpers([write(tmp_path, "tools.py", TOOLS)])
    assert sorted(helpers) == ["Box", "scale"]
    assert helpers["scale"]([1, 2], factor=3) == [3, 6]
    assert helpers["scale"].__module__ in sys.modules  # registered, as an import would be


def test_a_module_source_with_all_exposes_exactly_those_names() -> None:
    helpers = load_helpers(["json"])  # json.__all__: dump, dumps, load, loads, ...
    assert "dumps" in helpers and "JSONDecodeError" in helpers
    assert "codecs" not in helpers and "scanner" not in helpers


def test_allowlist_keeps_only_the_listed_names(tmp_path: Path) -> None:
    helpers = load_helpers([write(tmp_path, "tools.py", TOOLS), "json"], ["scale", "dumps"])
    assert sorted(helpers) == ["dumps", "scale"]


def test_allowlisted_name_that_no_source_provides_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "tools.py", TOOLS)
    with pytest.raises(HelperLoadError, match=r"--helper-allow names 'nope', which no helper"):
        load_helpers([path], ["scale", "nope"])


def test_duplicate_names_across_sources_name_both_sources(tmp_path: Path) -> None:
    first = write(tmp_path, "a.py", TOOLS)
    (tmp_path / "b").mkdir()
    second = write(tmp_path, "b/a.py", TOOLS)  # same base name, other directory
    assert file_module_name(first) != file_module_name(second)
    with pytest.raises(
        HelperLoadError, match="helper 'scale' is defined by more than one source"
    ) as info:
        load_helpers([first, second])
    assert first in str(info.value) and second in str(info.value)
    # Only exposed names must be unique: an allowlist can leave a clash out.
    assert sorted(load_helpers([first, "json"], ["scale"])) == ["scale"]


def test_a_source_that_fails_to_import_is_named_with_its_error(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.py", "raise RuntimeError('boom at import')\n")
    with pytest.raises(HelperLoadError, match="failed to load: RuntimeError: boom at import"):
        load_helpers([broken])
    assert file_module_name(broken) not in sys.modules
    with pytest.raises(HelperLoadError, match="'no_such_mod_x' failed to load: ModuleNotFound"):
        load_helpers(["no_such_mod_x"])


def test_describe_gives_signature_and_bounded_doc(tmp_path: Path) -> None:
    long_doc = "x" * (MAX_DOC * 2)
    source = TOOLS + f"\n\ndef long() -> None:\n    {long_doc!r}\n\n\nclass Odd:\n"
    source += "    __signature__ = 'not a signature'\n\n    def __call__(self) -> None: ...\n"
    source += "\n\nodd = Odd()\n__all__ = ['scale', 'long', 'odd']\n"
    rows = describe_helpers(load_helpers([write(tmp_path, "t.py", source)]))
    by_name = {name: (sig, doc) for name, sig, doc in rows}
    assert [name for name, _, _ in rows] == ["long", "odd", "scale"]  # sorted
    assert by_name["scale"] == (
        "(values: list, *, factor: float = 2.0) -> list",
        "Multiply each value by factor.",
    )
    assert by_name["odd"][0] == ""  # not introspectable
    assert len(by_name["long"][1]) == MAX_DOC and by_name["long"][1].endswith("...")


def test_helper_settings_parse_and_validate(tmp_path: Path) -> None:
    path = write(tmp_path, "tools.py", TOOLS)
    cfg = build_config(["--helpers", f"json, {path}", "--helper-allow", "scale,dumps"], {})
    pool = cfg.pool_config("default")
    assert pool.helpers == ("json", path)
    assert pool.helper_allow == ("scale", "dumps")
    env = {"SNAKEBRIDGE_HELPER_ALLOW": "dumps", "SNAKEBRIDGE_HELPERS": "json"}
    assert build_config([], env).pool_config("default").helper_allow == ("dumps",)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["--helpers", "tools.py"],
            "helpers: 'tools.py': a helper file must be given as an absolute",
        ),
        (["--helpers", "sub/tools.py"], "must be given as an absolute path"),
        (["--helpers", "/etc/hostname"], "must end with .py"),
        (["--helpers", "/no/such/dir/tools.py"], "'/no/such/dir/tools.py': no such file"),
        (["--helpers", "bad-name"], "'bad-name' is not a dotted module name or a .py path"),
        (["--helpers", "json,json"], "'json' is listed more than once"),
        (["--helpers", "json", "--helper-allow", "os.system"], "helper_allow: 'os.system' is not"),
        (["--helpers", "json", "--helper-allow", "_x"], "'_x' is not a public function name"),
        (["--helper-allow", "dumps"], "no helper source is given"),
    ],
)
def test_bad_helper_settings_are_refused(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(argv, {})
    assert str(info.value).startswith("invalid config helper")
    assert needle in str(info.value)
