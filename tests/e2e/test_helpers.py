"""Operator helpers (``--helpers``, ``--helper-allow``) through a real server and the SDK."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

import snakebridge
from snakebridge import HelperInfo, errors

from .conftest import BRIDGE_SERVER, run_bridge_server
from .test_auth import token_file

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TOOLS = '''
"""Helpers the operator keeps in a file outside any package."""
from pathlib import Path  # imported, so not a helper


def scale(values: list, *, factor: float = 2.0) -> list:
    """Multiply each value by factor."""
    return [v * factor for v in values]


def read_text(path: str) -> str:
    return Path(path).read_text()
'''


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A helper file in pytest's temp dir, which the default sandbox does not let workers
    read; next to it, a file the helper will try to read."""
    (tmp_path / "secret.txt").write_text("not for workers")
    path = tmp_path / "tools.py"
    path.write_text(TOOLS)
    return path


def start_failure(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bridge_server("--workers", "1", "--listen", "127.0.0.1:0", *args)


async def test_helpers_from_a_module_and_a_file_run_in_the_default_sandbox(
    make_server: Any, tools: Path
) -> None:
    srv = make_server(
        "--workers", "1", "--helpers", f"remote_helpers,{tools}",
        env={"SNAKEBRIDGE_SANDBOX_WRITE_PATHS": ""},  # conftest opens the temp dir otherwise
    )  # fmt: skip
    async with snakebridge.Client(srv.address) as client:
        assert (await client.describe()).pools[0].sandbox_level == "standard"
        assert await client.call_helper("add", [2, 3]) == 5
        assert await client.call_helper("scale", [[1, 2]], {"factor": 3}) == [3, 6]
        assert await client.call_helper("greet", ["ann"], {"punctuation": "?"}) == "hello ann?"
        assert [h.name for h in await client.helpers()] == ["add", "greet", "read_text", "scale"]
        # The helper file itself was made readable, not the directory it lives in.
        with pytest.raises(PermissionError):
            await client.call_helper("read_text", [str(tools.parent / "secret.txt")])
        with pytest.raises(errors.HelperNotFound, match="'Path'"):
            await client.call_helper("Path", ["/"])  # imported by the file, not defined there


async def test_allowlist_hides_the_other_helpers_and_lists_the_allowed_ones(
    make_server: Any, tools: Path
) -> None:
    srv = make_server(
        "--workers", "1", "--helpers", f"remote_helpers,{tools}", "--helper-allow", "scale,add"
    )
    async with snakebridge.Client(srv.address) as client:
        add_doc = "Add two numbers (a registered helper)."
        scale_sig = "(values: list, *, factor: float = 2.0) -> list"
        assert await client.helpers() == [
            HelperInfo("add", "(a: 'int', b: 'int') -> 'int'", add_doc),
            HelperInfo("scale", scale_sig, "Multiply each value by factor."),
        ]
        assert await client.helpers(pool="default") == await client.helpers()
        assert await client.call_helper("scale", [[0.5]]) == [1.0]
        for hidden in ("greet", "read_text"):
            with pytest.raises(errors.HelperNotFound, match=repr(hidden)):
                await client.call_helper(hidden, ["x"])
        with pytest.raises(errors.PoolUnavailable, match="no pool named 'elsewhere'"):
            await client.helpers(pool="elsewhere")


async def test_helpers_run_at_sandbox_level_strict(make_server: Any, tools: Path) -> None:
    srv = make_server(
        "--workers", "1", "--sandbox", "strict", "--helpers", f"remote_helpers,{tools}"
    )
    async with snakebridge.Client(srv.address) as client:
        assert (await client.describe()).pools[0].sandbox_level == "strict"
        assert await client.call_helper("scale", [[2]], {"factor": 0.5}) == [1.0]
        assert await client.call_helper("add", [1, 1]) == 2
        # The helper module is callable by path too at strict, as before.
        assert await client.call("remote_helpers", "greet", ["bo"]) == "hello bo!"


async def test_strict_allowlist_leaves_hidden_helpers_unreachable_by_path(
    make_server: Any,
) -> None:
    srv = make_server(
        "--workers", "1", "--sandbox", "strict",
        "--helpers", "remote_helpers", "--helper-allow", "add",
    )  # fmt: skip
    async with snakebridge.Client(srv.address) as client:
        assert await client.call_helper("add", [1, 2]) == 3
        with pytest.raises(errors.PolicyError, match="allowlist"):
            await client.call("remote_helpers", "greet", ["bo"])


def test_duplicate_helper_names_fail_startup_naming_both_sources(tools: Path) -> None:
    twin = tools.parent / "twin"
    twin.mkdir()
    (twin / "tools.py").write_text(TOOLS)
    done = start_failure("--helpers", f"{tools},{twin / 'tools.py'}")
    assert done.returncode == 1
    assert "helper 'scale' is defined by more than one source" in done.stderr
    assert str(tools) in done.stderr and str(twin / "tools.py") in done.stderr


def test_allowlisted_name_that_no_source_provides_fails_startup(tools: Path) -> None:
    done = start_failure("--helpers", str(tools), "--helper-allow", "scale,launch")
    assert done.returncode == 1
    assert "--helper-allow names 'launch', which no helper source provides" in done.stderr


@pytest.mark.parametrize("checking", [False, True], ids=["serve", "check"])
def test_helper_file_that_fails_to_load_fails_startup_naming_it(
    tmp_path: Path, checking: bool
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import json\n\nVALUE = json.loads('{not json')\n")
    argv = [BRIDGE_SERVER, *(["check"] if checking else []), "--workers", "1"]
    done = subprocess.run(
        [*argv, "--helpers", str(broken)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert f"helper source {str(broken)!r} failed to load: JSONDecodeError" in done.stderr


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("no_such_helpers_pkg.tools", "'no_such_helpers_pkg.tools' failed to load"),
        ("/no/such/dir/tools.py", "'/no/such/dir/tools.py': no such file"),
        ("tools.py", "a helper file must be given as an absolute path"),
        ("/etc/hostname", "a helper file must end with .py"),
    ],
)
def test_missing_or_malformed_helper_sources_fail_startup(entry: str, needle: str) -> None:
    done = start_failure("--helpers", entry)
    assert done.returncode == (1 if "failed to load" in needle else 2)
    assert needle in done.stderr


async def test_listing_helpers_needs_the_token(make_server: Any, tmp_path: Path) -> None:
    srv = make_server(
        "--workers", "1", "--helpers", "remote_helpers",
        "--token-file", str(token_file(tmp_path)),
    )  # fmt: skip
    anonymous = snakebridge.Client(srv.address)  # no token; helpers() is its first RPC
    try:
        with pytest.raises(errors.Unauthenticated):
            await anonymous.helpers()
    finally:
        await anonymous.close()
    async with snakebridge.Client(srv.address, token="s3cret-token") as client:
        assert [h.name for h in await client.helpers()] == ["add", "greet"]
