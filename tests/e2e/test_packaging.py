"""``make dist`` builds a wheel and an sdist; the wheel, installed into a fresh venv,
serves (its own ``bridge-server``) and runs the README's examples unchanged but for the
address. Offline: the venv borrows the project venv's dependencies through a ``.pth``
line (a plain path, so the project's own editable install is not picked up), and the
wheel is installed with ``--no-deps --no-index``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import conftest
from .conftest import ServerProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_PRINTED = re.compile(r"^\s*print\(.*#\s*(.+?)\s*$")


def readme_examples() -> list[str]:
    """The README's runnable examples: the ``python`` blocks that connect to the default
    address and say what they print (a fragment, such as the typed-bindings one, prints
    nothing)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return [b for b in blocks if '"127.0.0.1:50051"' in b and "print(" in b]


def expected_output(example: str) -> list[str]:
    """What the example prints: the comment after each ``print(...)`` line."""
    return [m.group(1) for line in example.splitlines() if (m := _PRINTED.match(line))]


def run(
    *argv: str | Path, cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=180, check=False,
        cwd=cwd, env=env,
    )  # fmt: skip
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # -o: the venv stamp counts as up to date (this test runs inside that venv).
    run("make", "-s", "-o", ".venv/.installed", "dist", f"DIST={out}", cwd=ROOT)
    return out


@pytest.fixture(scope="module")
def wheel_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the built wheel installed (its dependencies borrowed)."""
    venv = tmp_path_factory.mktemp("app") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    (wheel,) = dist.glob("snakebridge-*-py3-none-any.whl")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q",
        "--no-deps", "--no-index", wheel)  # fmt: skip
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    deps = sysconfig.get_path("purelib")  # this venv's: grpclib, msgpack, numpy, ...
    (Path(site.stdout.strip()) / "borrowed_deps.pth").write_text(deps + "\n")
    return venv


@pytest.fixture(scope="module")
def wheel_server(wheel_venv: Path) -> Iterator[ServerProcess]:
    """``bridge-server`` of the wheel venv (workers run its interpreter)."""
    saved = conftest.BRIDGE_SERVER
    conftest.BRIDGE_SERVER = str(wheel_venv / "bin" / "bridge-server")
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        srv = ServerProcess("--workers", "1", env=env)
        srv.env.pop("PYTHONPATH")  # nothing of the checkout on the path
        srv.start()
    finally:
        conftest.BRIDGE_SERVER = saved
    yield srv
    assert srv.stop() == 0


def test_make_dist_builds_a_wheel_and_an_sdist(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert names == ["snakebridge-0.1.0-py3-none-any.whl", "snakebridge-0.1.0.tar.gz"]
    with tarfile.open(dist / "snakebridge-0.1.0.tar.gz") as sdist:
        members = set(sdist.getnames())
    for path in ("pyproject.toml", "protos/snakebridge/v1/bridge.proto",
                 "sdk/snakebridge/_sync.py", "examples/fastapi_app.py", "README.md"):  # fmt: skip
        assert f"snakebridge-0.1.0/{path}" in members, path


def test_the_wheel_venv_imports_the_installed_copy_not_the_checkout(wheel_venv: Path) -> None:
    where = run(
        wheel_venv / "bin" / "python", "-c",
        "import snakebridge, snakebridge_server; "
        "print(snakebridge.__file__); print(snakebridge_server.__file__)",
        cwd="/", env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout.split()  # fmt: skip
    assert len(where) == 2
    assert all(p.startswith(str(wheel_venv)) for p in where), where


def test_the_wheel_serves_with_its_own_interpreter(
    wheel_venv: Path, wheel_server: ServerProcess
) -> None:
    for pid in [wheel_server.pid, *wheel_server.worker_pids]:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[0].decode().startswith(str(wheel_venv)), argv


@pytest.mark.parametrize("index", range(2), ids=["async", "sync"])
def test_the_readme_examples_run_from_the_installed_wheel(
    index: int, wheel_venv: Path, wheel_server: ServerProcess, tmp_path: Path
) -> None:
    examples = readme_examples()
    assert len(examples) == 2, "README: the async example and the SyncClient one"
    example = examples[index]
    script = tmp_path / "example.py"
    script.write_text(example.replace('"127.0.0.1:50051"', repr(wheel_server.address)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = run(wheel_venv / "bin" / "python", script, cwd=tmp_path, env=env).stdout
    assert out.splitlines() == expected_output(example)
    assert expected_output(example)  # the README says what it prints
