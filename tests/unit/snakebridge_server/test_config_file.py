"""The TOML config file, named pools and the precedence of flags, variables and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from snakebridge_server.cli import build_config
from snakebridge_server.config import ConfigError, PoolConfig, ServerConfig


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return str(path)


TWO_POOLS = """
listen = "127.0.0.1:7000"
workers = 3
call_timeout = 20
sandbox = "standard"

[pools.default]
workers = 2

[pools.torch]
python = "/opt/torch/bin/python"
workers = 1
preload = ["json", "decimal"]
env = { OMP_NUM_THREADS = "4", MODE = 7 }
call_timeout = 60
max_call_timeout = 600
sandbox = "strict"
recycle_calls = 1000
helpers = ["mylib.helpers"]
"""


def test_a_file_defines_named_pools_with_their_own_settings(tmp_path: Path) -> None:
    cfg = build_config(["--config", write(tmp_path, TWO_POOLS)], {})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 7000)
    assert [p.name for p in cfg.pools] == ["default", "torch"]
    default, torch = cfg.pool_config("default"), cfg.pool_config("torch")
    assert (default.workers, default.call_timeout, default.sandbox) == (2, 20.0, "standard")
    assert torch.python == "/opt/torch/bin/python"
    assert torch.workers == 1
    assert torch.preload == ("json", "decimal")
    assert torch.env == (("OMP_NUM_THREADS", "4"), ("MODE", "7"))
    assert (torch.call_timeout, torch.max_call_timeout) == (60.0, 600.0)
    assert (torch.sandbox, torch.recycle_calls, torch.helpers) == (
        "strict",
        1000,
        ("mylib.helpers",),
    )


def test_flags_beat_variables_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:7000"\nsession_ttl = 5\nmax_sessions = 9\n')
    env = {"SNAKEBRIDGE_SESSION_TTL": "6", "SNAKEBRIDGE_CONFIG": path}
    cfg = build_config(["--session-ttl", "7"], env)
    assert (cfg.port, cfg.session_ttl, cfg.max_sessions) == (7000, 7.0, 9)
    assert build_config([], env).session_ttl == 6.0
    assert build_config(["--config", path], {}).session_ttl == 5.0


def test_pool_flags_set_the_default_pool_over_its_table_and_default_the_others(
    tmp_path: Path,
) -> None:
    cfg = build_config(
        ["--config", write(tmp_path, TWO_POOLS), "--workers", "4", "--sandbox", "none"], {}
    )
    # The default pool: the flag wins over its own table.
    assert (cfg.pool_config("default").workers, cfg.pool_config("default").sandbox) == (4, "none")
    # Another pool: its table wins over the flag.
    assert (cfg.pool_config("torch").workers, cfg.pool_config("torch").sandbox) == (1, "strict")
    # A setting its table leaves out comes from the flag, over the file's top level.
    cfg = build_config(["--config", write(tmp_path, TWO_POOLS), "--max-queued", "7"], {})
    assert cfg.pool_config("torch").max_queued == 7


def test_without_pool_tables_there_is_one_pool_named_by_pool(tmp_path: Path) -> None:
    cfg = build_config(["--config", write(tmp_path, 'pool = "main"\nworkers = 2\n')], {})
    assert [(p.name, p.workers) for p in cfg.pools] == [("main", 2)]
    assert cfg.pool == "main"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("wrkers = 2\n", "unknown key 'wrkers'"),
        ('workers = "two"\n', "workers: 'two' is not an integer"),
        ("workers = true\n", "is not an integer"),
        ("call_timeout = 'x'\n", "call_timeout: 'x' is not a number"),
        ("preload = [1]\n", "preload: \\[1\\] is not a list of strings"),
        ("[pools.a]\nsession_ttl = 1\n", "pools.a.session_ttl: not a pool setting"),
        ("[pools.a]\nworkrs = 1\n", "pools.a.workrs: unknown key"),
        ("[pools.a]\nworkers = 0\n", "workers \\(pool 'a'\\): 0 is not in 1..256"),
        ("[pools.default]\n[pools.x]\nsandbox = 'max'\n", "sandbox \\(pool 'x'\\)"),
        ("[pools.a]\nworkers = 1\n", "default pool 'default' is not among the pools"),
        ('[pools."bad name"]\n', "pool name 'bad name'"),
        ("[pools.default]\nenv = { '1X' = 'y' }\n", "'1X' is not a valid environment"),
        ("[pools.default]\nenv = ['x']\n", "env: \\['x'\\] is not a table"),
        ("[pools.default]\npreload = ['a b']\n", "preload: 'a b' is not a dotted module"),
        ("[pools.default]\ncall_timeout = 9\nmax_call_timeout = 5\n", "call_timeout"),
        ("listen = 'nowhere'\n", "listen"),
        ("workers = [\n", "not valid TOML"),
        ("pools = 3\n", "use \\[pools.NAME\\] tables"),
    ],
)
def test_invalid_files_name_the_key_and_the_reason(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_config(["--config", write(tmp_path, text)], {})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(["--config", str(tmp_path / "nope.toml")], {})


def test_pool_names_are_unique_and_the_default_pool_exists() -> None:
    with pytest.raises(ConfigError, match="same name"):
        ServerConfig(pools=(PoolConfig(name="a"), PoolConfig(name="a")), pool="a")
    with pytest.raises(ConfigError, match="not among the pools"):
        ServerConfig(pools=(PoolConfig(name="a"),))


def test_new_flags_preload_and_env_file_insecure(tmp_path: Path) -> None:
    cfg = build_config(["--preload", "json, decimal"], {})
    assert cfg.pool_config("default").preload == ("json", "decimal")
    path = write(tmp_path, 'listen = "0.0.0.0:1"\ninsecure = true\n')
    assert build_config(["--config", path], {}).insecure
    with pytest.raises(ConfigError, match="insecure: 'yes' is not true or false"):
        build_config(["--config", write(tmp_path, "insecure = 'yes'\n")], {})
