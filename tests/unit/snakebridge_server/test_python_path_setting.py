"""``python_path``: a repeatable flag, a comma-list variable, a TOML list; each entry an
existing absolute directory; handed to the worker and to its sandbox's read allowlist."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from snakebridge_server.bridge import Bridge
from snakebridge_server.cli import build_config
from snakebridge_server.refids import WorkerKey
from snakebridge_server.settings import ConfigError
from snakebridge_server.supervisor.spawn import worker_argv
from snakebridge_server.worker.main import WorkerArgs


def test_the_flag_is_repeatable_and_each_occurrence_may_be_a_comma_list(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    config = build_config(["--python-path", str(a), "--python-path", f"{b},{c}"], environ={})
    assert config.pools[0].python_path == (str(a), str(b), str(c))


def test_the_variable_is_a_comma_list_and_the_flag_wins(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    env = {"SNAKEBRIDGE_PYTHON_PATH": f"{a},{b}"}
    assert build_config([], environ=env).pools[0].python_path == (str(a), str(b))
    assert build_config(["--python-path", str(b)], environ=env).pools[0].python_path == (str(b),)


def test_a_pool_table_takes_a_list(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    toml = tmp_path / "bridge.toml"
    toml.write_text(f'[pools.default]\n[pools.ml]\npython_path = ["{code}"]\n')
    config = build_config(["--config", str(toml)], environ={})
    assert config.pool_config("ml").python_path == (str(code),)
    assert config.pool_config("default").python_path == ()


@pytest.mark.parametrize(
    ("entry", "reason"),
    [("relative/dir", "must be an absolute path"), ("/no/such/dir/x", "no such directory")],
)
def test_an_entry_must_be_an_existing_absolute_directory(entry: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"python_path: .*{reason}"):
        build_config(["--python-path", entry], environ={})


def test_a_directory_listed_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="listed more than once"):
        build_config(["--python-path", f"{tmp_path},{tmp_path}"], environ={})


def test_the_worker_gets_it_on_its_command_line_and_in_its_read_allowlist(
    tmp_path: Path,
) -> None:
    argv = ["--python-path", str(tmp_path), "--workers", "1", "--sandbox", "none"]
    config = build_config(argv, environ={})  # none: no scratch dir to clean up
    bridge = Bridge(config)
    pool = bridge.pools["default"]
    assert str(tmp_path) in pool.spec.sandbox.read_paths
    argv = worker_argv(pool.spec, WorkerKey("default", 0, 1), pool.spec.sandbox, fd=3, ctrl_fd=4)
    assert WorkerArgs.parse(argv[3:]).python_path == (str(tmp_path),)


@pytest.mark.skipif(os.geteuid() != 0, reason="workers get their own uid only under root")
def test_a_python_path_the_worker_uid_cannot_read_keeps_the_servers_uid_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snakebridge_server.sandbox import SandboxSpec
    from snakebridge_server.supervisor import handle
    from snakebridge_server.supervisor.spawn import WorkerSpec

    async def readable_runtime(python: str, env: dict[str, str]) -> list[str]:
        return ["/usr/lib"]  # as if the interpreter were installed outside /root

    monkeypatch.setattr(handle, "check_runtime", readable_runtime)
    private = tmp_path / "code"
    private.mkdir(mode=0o700)
    spec = WorkerSpec(
        python="/usr/bin/python3", boot="b", max_refs=1, max_frame=1, max_result=1,
        start_timeout=1, cancel_grace=1, python_path=(str(private),),
        sandbox=SandboxSpec(level="standard"), sandbox_uid=-1, scratch_root=str(tmp_path),
    )  # fmt: skip
    worker = handle.WorkerHandle(WorkerKey("default", 0, 1), spec, lambda w: None)
    sandbox, uid = asyncio.run(worker._prepare_sandbox({}))
    assert uid == 0
    (note,) = sandbox.notes
    assert note.startswith("uid: not switched, uid 61000 cannot read --python-path: /")
    assert note.endswith("is mode 0700 (not searchable by others)")
    worker._remove_scratch()


@pytest.mark.parametrize("writable", ["code", "code/sub", "."])
def test_a_python_path_workers_may_write_is_refused(tmp_path: Path, writable: str) -> None:
    # The attack it stops: a client writes code/evil.py, and every later call that
    # imports `evil` (another client's, a new worker's preload) runs it.
    code = tmp_path / "code"
    (code / "sub").mkdir(parents=True)
    argv = ["--python-path", str(code), "--sandbox-write-paths", str(tmp_path / writable)]
    with pytest.raises(ConfigError, match=r"python_path: .* overlaps sandbox_write_paths"):
        build_config(argv, environ={})


def test_a_python_path_beside_a_write_path_is_fine(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code-out").mkdir()
    argv = ["--python-path", str(tmp_path / "code"), "--sandbox-write-paths"]
    config = build_config([*argv, str(tmp_path / "code-out")], environ={})
    assert config.pools[0].python_path == (str(tmp_path / "code"),)
