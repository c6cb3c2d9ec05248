"""``.ci/ensure-venv`` never runs a package manager behind the user's back: with no
Python 3.11 it prints the command and fails, unless ``SNAKEBRIDGE_ALLOW_APT=1`` opts in.
A fake ``python3`` (too old) and a fake ``apt-get`` (which records that it ran) stand in
for the system."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the real script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "ensure-venv"


def fake_system(tmp_path: Path) -> tuple[Path, Path]:
    """A bin dir with a Python 3.8 and an apt-get that only leaves a trace."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trace = tmp_path / "apt-ran"
    old_python = bin_dir / "python3"
    old_python.write_text("#!/bin/sh\nexit 1\n")  # fails `assert sys.version_info >= (3, 11)`
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$@" >> {trace}\nexit 0\n')
    for exe in (old_python, apt):
        exe.chmod(0o755)
    return bin_dir, trace


def ensure_venv(tmp_path: Path, bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "python3", str(tmp_path / "venv")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **env},
    )


def test_an_old_python_prints_the_command_and_fails_without_running_apt(tmp_path: Path) -> None:
    bin_dir, trace = fake_system(tmp_path)
    done = ensure_venv(tmp_path, bin_dir)
    assert done.returncode == 1
    assert "need Python >= 3.11" in done.stderr
    assert "sudo apt-get update && apt-get install -y python3 python3-venv" in done.stderr
    assert "SNAKEBRIDGE_ALLOW_APT=1" in done.stderr
    assert not trace.exists(), "apt-get ran without being allowed"
    assert not (tmp_path / "venv").exists()


def test_ci_may_opt_in_to_running_apt(tmp_path: Path) -> None:
    bin_dir, trace = fake_system(tmp_path)
    done = ensure_venv(tmp_path, bin_dir, SNAKEBRIDGE_ALLOW_APT="1")
    assert trace.read_text().splitlines()[-1].endswith("python3 python3-venv python3-dev")
    # The fake apt installed nothing, so the python3 is still too old: it says so.
    assert done.returncode == 1
    assert "older than 3.11" in done.stderr


def test_ci_run_does_not_opt_in() -> None:
    # CI machines have Python 3.11: nothing to install, and nothing may be installed.
    assert "SNAKEBRIDGE_ALLOW_APT" not in (ROOT / ".ci" / "run").read_text()
