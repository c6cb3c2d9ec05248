"""Named pools from a TOML config file, against a real server: two pools with two
different interpreters (a second venv made here), pool-specific environment, preloads and
time limits, refs that remember their pool, and start-up failures that say what to fix."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

import snakebridge
import snakebridge_server
from snakebridge import errors

from .conftest import HERE, ServerProcess, run_bridge_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

R = "remote_helpers"
REPO = Path(snakebridge_server.__file__).resolve().parents[2]


def make_venv(path: Path, *, with_runtime: bool) -> str:
    """A second virtual environment, ``--without-pip`` (no network needed). With the
    runtime, it gets this checkout's ``sdk``/``server`` on a ``.pth`` and msgpack, the
    worker runtime's only dependency; without, it is a bare interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if with_runtime:
        site = Path(purelib)
        (site / "snakebridge_checkout.pth").write_text(f"{REPO / 'sdk'}\n{REPO / 'server'}\n")
        (site / "msgpack").symlink_to(Path(msgpack.__file__).parent, target_is_directory=True)
    return str(python)


def toml(path: Path, text: str) -> str:
    file = path / "bridge.toml"
    file.write_text(text)
    return str(file)


@pytest.fixture(scope="module")
def second_venv(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_venv(tmp_path_factory.mktemp("venv") / "alt", with_runtime=True)


@pytest.fixture(scope="module")
def two_pools(
    second_venv: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = toml(
        tmp_path_factory.mktemp("cfg"),
        f"""
workers = 1
helpers = ["{R}"]

[pools.default]
env = {{ SNAKEBRIDGE_TEST_POOL = "default" }}

[pools.alt]
python = "{second_venv}"
env = {{ SNAKEBRIDGE_TEST_POOL = "alt", OMP_NUM_THREADS = "3" }}
preload = ["preloaded_marker"]
call_timeout = 0.5
""",
    )
    srv = ServerProcess("--config", config).start()
    yield srv
    assert srv.stop() == 0


async def test_each_pool_runs_its_own_interpreter(
    two_pools: ServerProcess, second_venv: str
) -> None:
    async with snakebridge.Client(two_pools.address) as client:
        default_prefix, _ = await client.call(R, "interpreter")
        alt_prefix, alt_executable = await client.call(R, "interpreter", pool="alt")
    assert default_prefix == sys.prefix  # the server's own venv
    assert alt_prefix == str(Path(second_venv).parent.parent)
    assert alt_executable == second_venv
    assert alt_prefix != default_prefix


async def test_pools_get_their_own_env_and_thread_limits(two_pools: ServerProcess) -> None:
    async with snakebridge.Client(two_pools.address) as client:
        assert await client.call(R, "env_value", ["SNAKEBRIDGE_TEST_POOL"]) == "default"
        assert await client.call(R, "env_value", ["SNAKEBRIDGE_TEST_POOL"], pool="alt") == "alt"
        # Thread-limit variables default to 1 per worker; a pool's env overrides them.
        assert await client.call(R, "env_value", ["OMP_NUM_THREADS"]) == "1"
        assert await client.call(R, "env_value", ["OMP_NUM_THREADS"], pool="alt") == "3"


async def test_a_pool_preloads_its_modules_and_only_its_own(two_pools: ServerProcess) -> None:
    async with snakebridge.Client(two_pools.address) as client:
        assert await client.call(R, "imported", ["preloaded_marker"], pool="alt") is True
        assert await client.call(R, "imported", ["preloaded_marker"]) is False


async def test_refs_remember_their_pool(two_pools: ServerProcess, second_venv: str) -> None:
    async with snakebridge.Client(two_pools.address) as client:
        probe = await client.call_class(R, "PrefixProbe", pool="alt")
        assert ".alt." in probe.id  # the pool is part of the ref id
        # No pool= here: the ref decides where the call runs.
        assert await client.call_method(probe, "prefix") == str(Path(second_venv).parent.parent)


async def test_each_pool_has_its_own_time_limit(two_pools: ServerProcess) -> None:
    async with snakebridge.Client(two_pools.address) as client:
        with pytest.raises(errors.CallTimeout, match=r"0\.5s"):
            await client.call("time", "sleep", [3], pool="alt")
        assert await client.call("time", "sleep", [0.8]) is None  # default pool: 300 s


async def test_describe_lists_every_pool_and_an_unknown_pool_is_refused(
    two_pools: ServerProcess,
) -> None:
    async with snakebridge.Client(two_pools.address) as client:
        info = await client.describe()
        assert sorted(p.name for p in info.pools) == ["alt", "default"]
        assert all(p.sandbox_level == "standard" for p in info.pools)
        with pytest.raises(errors.PoolUnavailable, match="no pool named 'nope'"):
            await client.call("math", "sqrt", [4], pool="nope")


def bridge_server(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bridge_server(*args, env={**os.environ, "PYTHONPATH": str(HERE)})


def test_a_pool_whose_interpreter_lacks_the_runtime_fails_start_saying_what_to_install(
    tmp_path: Path,
) -> None:
    bare = make_venv(tmp_path / "bare", with_runtime=False)
    config = toml(tmp_path, f'[pools.default]\nworkers = 1\n[pools.bare]\npython = "{bare}"\n')
    done = bridge_server("--listen", "127.0.0.1:0", "--config", config)
    assert done.returncode == 1, done.stderr
    assert "pool bare: the interpreter" in done.stderr, done.stderr
    assert "cannot import the worker runtime" in done.stderr
    assert f"install snakebridge {snakebridge.__version__} into that environment" in done.stderr
    assert f"{bare} -m pip install" in done.stderr


def test_check_reports_every_pool_and_fails_on_a_broken_one(
    tmp_path: Path, second_venv: str
) -> None:
    config = toml(
        tmp_path, f'workers = 1\n[pools.default]\n[pools.alt]\npython = "{second_venv}"\n'
    )
    done = bridge_server("check", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "pool default: 1/1 workers started" in done.stdout
    assert "pool alt: 1/1 workers started" in done.stdout
    assert "pool alt: sandbox level standard" in done.stdout
    bad = toml(tmp_path, '[pools.default]\nworkers = 1\npython = "/nonexistent/python"\n')
    done = bridge_server("check", "--config", bad)
    assert done.returncode == 1
    assert "cannot run the interpreter '/nonexistent/python'" in done.stderr, done.stderr


def test_a_preload_that_fails_to_import_fails_start_with_its_error(tmp_path: Path) -> None:
    config = toml(tmp_path, '[pools.default]\nworkers = 1\npreload = ["preload_fails"]\n')
    done = bridge_server("--listen", "127.0.0.1:0", "--config", config)
    assert done.returncode == 1, done.stderr
    assert "preload_fails refuses to import" in done.stderr, done.stderr


def test_an_invalid_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    done = bridge_server(
        "--listen", "127.0.0.1:0", "--config", toml(tmp_path, "[pools.default]\nworkers = 'many'\n")
    )
    assert done.returncode == 2
    assert "pools.default.workers: 'many' is not an integer" in done.stderr, done.stderr
