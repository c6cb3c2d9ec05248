"""The settings table: each setting declared once, its flag, variable, TOML key, help and
checks derived from that declaration, and docs/configuration.md documenting it."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from snakebridge_server.cli import _parser, build_config
from snakebridge_server.config import POOL_SETTINGS, SERVER_SETTINGS, PoolConfig, ServerConfig
from snakebridge_server.settings import ConfigError, Setting, at_least, bind, check_fields, setting
from snakebridge_server.supervisor.pool import SupervisionPolicy

SETTINGS = (*SERVER_SETTINGS, *POOL_SETTINGS)
NAMED = [s for s in SETTINGS if s.key]
DOCS = Path(__file__).parents[3] / "docs" / "configuration.md"


def doc_rows() -> dict[str, list[str]]:
    """The rows of the docs' settings tables (flag | variable | key | default | meaning),
    by the key cell's name."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and (cells[0].startswith("`--") or cells[0] == "(file only)"):
            key = re.match(r"`(\w+)`", cells[2])
            if key:
                rows[key.group(1)] = cells
    return rows


@pytest.mark.parametrize("s", NAMED, ids=lambda s: s.key)
def test_the_docs_document_every_setting_with_its_flag_variable_key_and_scope(s: Setting) -> None:
    rows = doc_rows()
    assert s.key in rows, f"docs/configuration.md has no row for {s.key}"
    flag, env, key, _default, meaning = rows[s.key][:5]
    if s.texts:
        assert re.match(rf"`{s.flag}[ `]", flag), flag
        assert env == f"`{s.env}`"
    else:
        assert (flag, env) == ("(file only)", "")
    assert ("**pool**" in key) == (s.scope == "pool"), f"{s.key}: scope {s.scope}"
    assert meaning


def test_every_documented_setting_exists() -> None:
    assert set(doc_rows()) == {s.key for s in NAMED}


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: s.field)
def test_every_setting_has_help_shown_by_its_flag(s: Setting) -> None:
    assert s.help.strip()
    if s.texts:
        flag = next(a for a in _parser()._actions if s.flag in a.option_strings)
        assert flag.help == s.help


def test_every_pool_field_but_its_name_is_a_pool_setting() -> None:
    assert {s.field for s in POOL_SETTINGS} == {f.name for f in fields(PoolConfig)} - {"name"}
    assert all(s.scope == "pool" for s in POOL_SETTINGS)
    assert {s.field for s in SERVER_SETTINGS} == {f.name for f in fields(ServerConfig)} - {"pools"}
    assert all(s.scope == "server" for s in SERVER_SETTINGS)


def test_names_derive_from_the_field() -> None:
    by_field = {s.field: s for s in SETTINGS}
    assert (by_field["max_call_timeout"].flag, by_field["max_call_timeout"].env) == (
        "--max-call-timeout",
        "SNAKEBRIDGE_MAX_CALL_TIMEOUT",
    )
    assert (by_field["host"].key, by_field["host"].flag) == ("listen", "--listen")
    assert not by_field["port"].texts and not by_field["port"].key  # set through listen
    assert not by_field["env"].texts and by_field["env"].key == "env"  # file only


# (setting, text given, value in the config): one or more of each kind of value.
SAMPLES: list[tuple[str, str, Any]] = [
    ("workers", "3", 3),
    ("max_connections", "17", 17),
    ("call_timeout", "12.5", 12.5),
    ("session_ttl", "9", 9.0),
    ("log_level", "debug", "debug"),
    ("sandbox", "none", "none"),
    ("uds", "/tmp/b.sock", "/tmp/b.sock"),
    ("preload", "json, decimal", ("json", "decimal")),
    ("sandbox_read_paths", "/a,/b", ("/a", "/b")),
]


def value_of(config: ServerConfig, key: str) -> Any:
    scope = next(s.scope for s in SETTINGS if s.key == key)
    return getattr(config.pool_config("default") if scope == "pool" else config, key)


def toml_literal(text: str, value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f'"{text}"' if isinstance(value, str) else text


@pytest.mark.parametrize(("key", "text", "value"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_a_setting_reads_the_same_from_its_flag_variable_and_toml_key(
    tmp_path: Path, key: str, text: str, value: Any
) -> None:
    s = next(s for s in SETTINGS if s.key == key)
    assert value != s.default  # else the test could not tell
    path = tmp_path / "bridge.toml"
    path.write_text(f"{key} = {toml_literal(text, value)}\n")
    assert value_of(build_config([s.flag, text], {}), key) == value
    assert value_of(build_config([], {s.env: text}), key) == value
    assert value_of(build_config(["--config", str(path)], {}), key) == value
    assert value_of(build_config([], {}), key) == s.default


def test_listen_sets_host_and_port_from_each_source(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('listen = "[::1]:7001"\n')
    assert build_config(["--config", str(path)], {}).port == 7001
    config = build_config([], {"SNAKEBRIDGE_LISTEN": "127.0.0.2:7002"})
    assert (config.host, config.port) == ("127.0.0.2", 7002)
    config = build_config(["--listen", "[::1]:7003"], {"SNAKEBRIDGE_LISTEN": "127.0.0.2:7002"})
    assert (config.host, config.port) == ("::1", 7003)


def test_a_switch_variable_turns_it_on_and_never_off(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('listen = "0.0.0.0:1"\ninsecure = true\n')
    for off in ("0", "", "no"):
        env = {"SNAKEBRIDGE_INSECURE": off, "SNAKEBRIDGE_CONFIG": str(path)}
        assert build_config([], env).insecure
        assert not build_config([], {"SNAKEBRIDGE_INSECURE": off}).insecure
    assert build_config([], {"SNAKEBRIDGE_INSECURE": "Yes"}).insecure
    assert build_config(["--insecure"], {}).insecure


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--max-queued", "1.5"], {}, "--max-queued: '1.5' is not a valid max_queued"),
        ([], {"SNAKEBRIDGE_CALL_TIMEOUT": "soon"}, "SNAKEBRIDGE_CALL_TIMEOUT: 'soon' is not"),
        ([], {"SNAKEBRIDGE_WORKERS": ""}, "SNAKEBRIDGE_WORKERS: '' is not a valid workers"),
        # a bad variable fails even when a flag overrides it
        (["--workers", "2"], {"SNAKEBRIDGE_WORKERS": "x"}, "SNAKEBRIDGE_WORKERS"),
    ],
)
def test_text_that_does_not_parse_names_its_flag_or_variable(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(argv, env)


def test_empty_list_variables_are_empty_lists() -> None:
    config = build_config([], {"SNAKEBRIDGE_PRELOAD": "", "SNAKEBRIDGE_HELPER_ALLOW": ""})
    assert config.pool_config("default").preload == ()


def test_the_help_groups_server_and_pool_settings() -> None:
    text = _parser().format_help()
    server, pool = text.index("\nserver settings:"), text.index("\npool settings:")
    listed = text.index("\n  --max-sessions"), text.index("\n  --recycle-jitter")
    assert server < listed[0] < pool < listed[1]
    assert "SNAKEBRIDGE_<FLAG>" in text


def test_supervision_defaults_are_the_pool_settings_defaults() -> None:
    assert SupervisionPolicy() == SupervisionPolicy.of(PoolConfig())
    policy = SupervisionPolicy.of(PoolConfig(recycle_calls=7, max_call_timeout=900))
    assert (policy.recycle_calls, policy.retire_timeout) == (7, 900.0)


def test_a_new_setting_is_one_declaration() -> None:
    @dataclass(frozen=True, slots=True)
    class Toy:
        max_widgets: int = setting(8, "widgets at most", at_least(1))
        widget_paths: tuple[str, ...] = setting((), "where widgets live (comma list)")

    max_widgets, widget_paths = bind(Toy, "server")
    assert (max_widgets.flag, max_widgets.env, max_widgets.default) == (
        "--max-widgets",
        "SNAKEBRIDGE_MAX_WIDGETS",
        8,
    )
    assert max_widgets.from_text("3", "--max-widgets") == 3
    assert max_widgets.from_toml(3, "f.toml: max_widgets") == 3
    assert widget_paths.from_text("/a, /b", "x") == ("/a", "/b")
    with pytest.raises(ConfigError, match="max_widgets: must be >= 1"):
        check_fields(Toy(max_widgets=0), (max_widgets, widget_paths))


def test_a_setting_of_a_type_without_a_kind_is_refused_at_import() -> None:
    @dataclass(frozen=True)
    class Odd:
        ratio: complex = setting(1j, "no kind reads a complex number")

    with pytest.raises(TypeError, match="setting ratio: no kind for the type complex"):
        bind(Odd, "pool")


def test_errors_keep_their_key_and_pool() -> None:
    with pytest.raises(ConfigError, match=r"^invalid config max_memory \(pool 'a'\): must be 0"):
        PoolConfig(name="a", max_memory=5)
    with pytest.raises(ConfigError, match=r"^invalid config sandbox \(pool 'a'\): 'standard' is"):
        PoolConfig(name="a", sandbox="standard", min_sandbox="strict")
    with pytest.raises(ConfigError, match=r"^invalid config port: 70000 is not in 0..65535"):
        ServerConfig(port=70000)
