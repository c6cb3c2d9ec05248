"""The ``bridge-server`` command line (issue #19, finding 5), run as the installed script:
``--version``, subcommands listed in ``--help`` with their own ``--help``, ``check``
failing on a taken listen address, and workers left running as root: a WARNING, a
``check`` line, and a refusal under ``--min-sandbox standard``."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import snakebridge
from snakebridge_server.sandbox.spawn import unreadable_by_others

from .conftest import ServerProcess, run_bridge_server

pytestmark = [pytest.mark.e2e]

# Whether this machine's workers run as root: a root server whose interpreter or
# worker runtime a dedicated uid cannot read (a pyenv under /root, for one).
_RUNTIME = [snakebridge.__file__, os.path.dirname(os.__file__), os.path.realpath(sys.executable)]
WORKERS_RUN_AS_ROOT = os.geteuid() == 0 and unreadable_by_others(_RUNTIME) is not None
root_only = pytest.mark.skipif(
    not WORKERS_RUN_AS_ROOT,
    reason="workers get a uid of their own here (not root, or a runtime others can read)",
)


def test_version_is_printed_by_every_command() -> None:
    for argv in (["--version"], ["check", "--version"], ["serve", "--version"]):
        done = run_bridge_server(*argv)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"bridge-server {snakebridge.__version__}"


def test_help_lists_the_commands_and_each_has_its_own_help() -> None:
    main = run_bridge_server("--help")
    assert main.returncode == 0
    assert "usage: bridge-server [serve|check] [FLAGS]" in main.stdout
    assert "\n  serve " in main.stdout and "\n  check " in main.stdout
    for command in ("serve", "check"):
        own = run_bridge_server(command, "--help")
        assert own.returncode == 0, own.stderr
        assert own.stdout.startswith(f"usage: bridge-server {command} ")
        assert "--max-memory" in own.stdout and "commands:" not in own.stdout


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_check_fails_when_the_listen_address_is_taken(taken_port: int) -> None:
    done = run_bridge_server("check", "--workers", "1", "--listen", f"127.0.0.1:{taken_port}")
    assert done.returncode == 1
    assert f"FAILED: --listen 127.0.0.1:{taken_port}: Address already in use" in done.stderr


def test_check_fails_when_the_unix_socket_is_served(tmp_path: Path) -> None:
    path = str(tmp_path / "taken.sock")
    with socket.socket(socket.AF_UNIX) as holder:
        holder.bind(path)
        holder.listen()
        done = run_bridge_server("check", "--workers", "1", "--uds", path)
    assert done.returncode == 1
    assert "a server is already listening there" in done.stderr


def test_check_passes_on_a_free_address() -> None:
    done = run_bridge_server("check", "--workers", "1", "--listen", "127.0.0.1:0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("bridge-server check: OK")


@root_only
def test_workers_left_as_root_are_a_warning_and_a_check_line() -> None:
    done = run_bridge_server("check", "--workers", "1", "--listen", "127.0.0.1:0")
    assert done.returncode == 0, done.stderr
    assert "pool default: WARNING: 1 sandboxed worker(s) run as root (uid 0)" in done.stdout
    srv = ServerProcess("--workers", "1").start()
    try:
        line = srv.wait_for_log(r"run as root \(uid 0\)")
        assert "WARNING" in line
    finally:
        assert srv.stop() == 0


@root_only
def test_min_sandbox_standard_refuses_workers_left_as_root() -> None:
    done = run_bridge_server(
        "check", "--workers", "1", "--listen", "127.0.0.1:0", "--min-sandbox", "standard"
    )
    assert done.returncode == 1
    assert "runs as root (uid 0), which min_sandbox 'standard' does not accept" in done.stderr
    started = run_bridge_server(
        "--workers", "1", "--listen", "127.0.0.1:0", "--min-sandbox", "standard"
    )
    assert started.returncode == 1
    assert "does not accept" in started.stderr


def test_min_sandbox_standard_accepts_workers_with_a_uid_of_their_own() -> None:
    """The other side of the rule: a root server whose runtime others can read gives
    each worker its own uid, and --min-sandbox standard starts it without a warning."""
    from .test_sandbox_escapes import DEBIAN_PYTHON, _debian_worker_env  # skips if unusable

    env = {**os.environ, **_debian_worker_env()}
    done = run_bridge_server(
        "check", "--workers", "1", "--listen", "127.0.0.1:0", "--python", DEBIAN_PYTHON,
        "--min-sandbox", "standard",
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stdout and "uid: 61000" in done.stdout
