"""Calling your own code: ``--python-path`` puts a directory of the operator's modules on
the workers' ``sys.path`` and on the sandbox's read allowlist (README, "Calling your own
code"). Real server, default sandbox level ``standard``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import snakebridge
from snakebridge import errors

from .conftest import run_bridge_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

MYLIB = '''
"""The user's own module, outside any installed package."""
from pathlib import Path


def greet(name: str) -> str:
    return f"hello {name}"


def shipped_data() -> str:
    # A file next to the module: the whole directory is readable in the sandbox.
    return (Path(__file__).parent / "table.txt").read_text()


def read(path: str) -> str:
    return Path(path).read_text()
'''

# Without it, conftest lets workers write (and so read) the whole pytest temp dir.
_CLOSED = {"SNAKEBRIDGE_SANDBOX_WRITE_PATHS": ""}


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory of the user's code: a module, a package and a data file."""
    code = tmp_path / "app"
    (code / "mypkg").mkdir(parents=True)
    (code / "mylib_e2e.py").write_text(MYLIB)
    (code / "table.txt").write_text("a,b\n1,2\n")
    (code / "mypkg" / "__init__.py").write_text("def answer() -> int:\n    return 42\n")
    return code


async def _standard(client: snakebridge.Client) -> None:
    level = (await client.describe()).pools[0].sandbox_level
    if level != "standard":
        pytest.skip(f"this host reaches sandbox level {level!r}, not 'standard'")


async def test_a_module_in_python_path_is_callable_at_standard(
    make_server: Any, app_dir: Path
) -> None:
    srv = make_server("--workers", "1", "--python-path", str(app_dir), env=_CLOSED)
    async with snakebridge.Client(srv.address) as client:
        await _standard(client)
        assert await client.call("mylib_e2e", "greet", ["ann"]) == "hello ann"
        assert await client.call("mypkg", "answer") == 42
        assert await client.call("mylib_e2e", "shipped_data") == "a,b\n1,2\n"


async def test_without_python_path_the_same_module_is_not_found(
    make_server: Any, app_dir: Path
) -> None:
    srv = make_server("--workers", "1", env=_CLOSED)
    async with snakebridge.Client(srv.address) as client:
        await _standard(client)
        with pytest.raises(ModuleNotFoundError):
            await client.call("mylib_e2e", "greet", ["ann"])


async def test_python_path_is_repeatable_and_preloadable(
    make_server: Any, app_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "second_e2e.py").write_text("VALUE = 'second'\n")
    srv = make_server(
        "--workers", "1",
        "--python-path", str(app_dir), "--python-path", str(other),
        "--preload", "mylib_e2e",
        env=_CLOSED,
    )  # fmt: skip
    async with snakebridge.Client(srv.address) as client:
        await _standard(client)
        assert await client.get_module_attr("second_e2e", "VALUE") == "second"
        assert await client.call("mylib_e2e", "greet", ["bo"]) == "hello bo"


async def test_python_path_does_not_open_the_rest_of_the_file_system(
    make_server: Any, app_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_text("not for workers")
    srv = make_server("--workers", "1", "--python-path", str(app_dir), env=_CLOSED)
    async with snakebridge.Client(srv.address) as client:
        await _standard(client)
        with pytest.raises(errors.RemoteError) as info:
            await client.call("mylib_e2e", "read", [str(tmp_path / "secret.txt")])
        assert isinstance(info.value, PermissionError)


def test_a_python_path_that_is_not_a_directory_stops_the_start(tmp_path: Path) -> None:
    result = run_bridge_server("--workers", "1", "--python-path", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "python_path" in result.stderr and "no such directory" in result.stderr
    result = run_bridge_server("--workers", "1", "--python-path", "relative/dir")
    assert result.returncode == 2
    assert "must be an absolute path" in result.stderr


async def test_at_strict_own_code_is_callable_once_allowlisted(
    make_server: Any, app_dir: Path
) -> None:
    srv = make_server(
        "--workers", "1", "--sandbox", "strict", "--python-path", str(app_dir),
        "--sandbox-allow-modules", "mylib_e2e",
        env=_CLOSED,
    )  # fmt: skip
    async with snakebridge.Client(srv.address) as client:
        level = (await client.describe()).pools[0].sandbox_level
        if level != "strict":
            pytest.skip(f"this host reaches sandbox level {level!r}, not 'strict'")
        assert await client.call("mylib_e2e", "greet", ["cy"]) == "hello cy"
        with pytest.raises(errors.PolicyError):
            await client.call("mypkg", "answer")  # on the path, but not allowlisted
