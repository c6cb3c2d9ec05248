"""``bridge-server`` command line. Each flag can also be set as ``SNAKEBRIDGE_<NAME>`` or
in the ``--config`` TOML file (``cli.build_config`` layers them). The flags, variables and
keys all derive from the settings declared in ``config`` (see ``settings``)."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from typing import Any, Final

from .config import DEFAULT_POOL, POOL_SETTINGS, SERVER_SETTINGS, PoolConfig, ServerConfig
from .settings import ENV_PREFIX, ConfigError, Setting

# Every setting, server-level first; by the name its flag, variable and TOML key share.
_SETTINGS: Final = (*SERVER_SETTINGS, *POOL_SETTINGS)
_BY_KEY: Final = {s.key: s for s in _SETTINGS if s.key}
_TEXT_SETTINGS: Final = tuple(s for s in _SETTINGS if s.texts)
POOL_KEYS: Final = frozenset(s.key for s in POOL_SETTINGS)

# Layers, lowest precedence first: built-in defaults, the TOML file, SNAKEBRIDGE_*
# variables, flags. One dict per source, keyed by setting name, values already converted.
Settings = dict[str, Any]


def _text_layer(ns: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """The settings given as variables, and flags over them."""
    layer: Settings = {}
    for s in _TEXT_SETTINGS:
        if s.env in environ:
            layer[s.key] = s.from_text(environ[s.env], s.env)
    for s in _TEXT_SETTINGS:
        given = getattr(ns, s.key)
        if given is None:
            continue
        if s.repeatable:  # one list from every occurrence of the flag
            layer[s.key] = tuple(v for raw in given for v in s.from_text(raw, s.flag))
        else:
            layer[s.key] = s.from_text(given, s.flag)
    # A switch's variable turns it on or leaves it be ("0" does not undo the file's true).
    return {k: v for k, v in layer.items() if not (_BY_KEY[k].kind.switch and not v)}


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"invalid config config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid config config: {path} is not valid TOML: {exc}") from None


def _pool_table(path: str, name: str, table: dict[str, Any]) -> Settings:
    settings: Settings = {}
    for key, value in table.items():
        where = f"{path}: pools.{name}.{key}"
        s = _BY_KEY.get(key)
        if s is None or s.scope != "pool":
            reason = "unknown key" if s is None else "not a pool setting"
            raise ConfigError(f"invalid config {where}: {reason}")
        settings[key] = s.from_toml(value, where)
    return settings


def load_toml(path: str) -> tuple[Settings, dict[str, Settings]]:
    """The file's top-level settings and its ``[pools.NAME]`` tables."""
    top: Settings = {}
    pools: dict[str, Settings] = {}
    for key, value in _read_toml(path).items():
        if key == "pools":
            if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
                raise ConfigError(f"invalid config {path}: pools: use [pools.NAME] tables")
            pools = {name: _pool_table(path, name, table) for name, table in value.items()}
        elif (s := _BY_KEY.get(key)) is not None:
            top[key] = s.from_toml(value, f"{path}: {key}")
        else:
            raise ConfigError(f"invalid config {path}: unknown key {key!r}")
    return top, pools


def _fields(*layers: Settings) -> dict[str, Any]:
    """The config fields the settings of ``layers`` set, later layers winning."""
    merged: Settings = {}
    for layer in layers:
        merged.update(layer)
    return {f: v for key, value in merged.items() for f, v in _BY_KEY[key].fields_of(value).items()}


def _pool_settings(settings: Settings) -> Settings:
    return {k: v for k, v in settings.items() if k in POOL_KEYS}


def _add_flag(group: argparse._ArgumentGroup, s: Setting) -> None:
    if s.kind.switch:
        group.add_argument(s.flag, dest=s.key, action="store_const", const="1", help=s.help)
    elif s.repeatable:
        group.add_argument(s.flag, dest=s.key, action="append", help=s.help)
    else:
        group.add_argument(s.flag, dest=s.key, help=s.help)


#: The subcommands, each with its own ``--help``; none given means ``serve``.
COMMANDS: Final = {
    "serve": "serve on --listen until SIGINT or SIGTERM (the default)",
    "check": "check the settings, the listen address and every pool's sandbox, then exit",
}
_DESCRIPTIONS: Final = {
    "serve": "Serve Python interpreter worker processes over gRPC on --listen (or --uds) "
    "until SIGINT or SIGTERM, then drain.",
    "check": "Validate the settings, check that the listen address is free, start every "
    "pool once, print the sandbox level each reached (with a WARNING for workers left "
    "running as root), and exit non-zero on any problem.",
}
_SETTINGS_EPILOG: Final = (
    "Every flag can also be set as SNAKEBRIDGE_<FLAG> (e.g. SNAKEBRIDGE_WORKERS=4) or as a "
    "key of the --config TOML file; flags win over variables, variables over the file. "
    "See docs/configuration.md."
)


def _version() -> str:
    from snakebridge import __version__

    return f"bridge-server {__version__}"


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``bridge-server [FLAGS]`` (``command`` None), which lists the
    subcommands, or of ``bridge-server COMMAND [FLAGS]``."""
    if command is None:
        commands = "\n".join(f"  {name:<7} {text}" for name, text in COMMANDS.items())
        parser = argparse.ArgumentParser(
            prog="bridge-server",
            usage="bridge-server [serve|check] [FLAGS]",
            description="Serve Python interpreter worker processes over gRPC.\n\n"
            f"commands:\n{commands}\n\n"
            "'bridge-server COMMAND --help' shows a command's own help.",
            epilog=_SETTINGS_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    else:
        parser = argparse.ArgumentParser(
            prog=f"bridge-server {command}",
            description=_DESCRIPTIONS[command],
            epilog=_SETTINGS_EPILOG,
        )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--config", help="TOML file of settings and [pools.NAME] tables")
    groups = {
        "server": parser.add_argument_group("server settings"),
        "pool": parser.add_argument_group(
            "pool settings",
            "These configure the default pool, and are the default of the other pools "
            "of the --config file, whose [pools.NAME] tables may override them.",
        ),
    }
    for s in _TEXT_SETTINGS:
        _add_flag(groups[s.scope], s)
    return parser


def split_command(args: Sequence[str]) -> tuple[str, list[str]]:
    """``(command, its flags)`` of a command line: the first word when it names a
    command, else ``serve``."""
    if args and args[0] in COMMANDS:
        return args[0], list(args[1:])
    return "serve", list(args)


def build_config(
    argv: Sequence[str], environ: dict[str, str] | None = None, command: str | None = None
) -> ServerConfig:
    """Flags over ``SNAKEBRIDGE_*`` variables over the ``--config`` file over defaults.

    Pool settings at the top level are the defaults of every pool; a ``[pools.NAME]``
    table overrides them for its pool. A pool setting given as a flag or variable
    configures the default pool even over its table (``--sandbox strict`` always applies
    to it), and is a default the other pools' tables may override.
    """
    environ = dict(os.environ if environ is None else environ)
    ns = _parser(command).parse_args(list(argv))
    flagged = _text_layer(ns, environ)
    path = ns.config or environ.get(ENV_PREFIX + "CONFIG") or None
    file_top, file_pools = load_toml(path) if path else ({}, {})
    server = _fields({k: v for k, v in {**file_top, **flagged}.items() if k not in POOL_KEYS})
    default_pool = server.get("pool", DEFAULT_POOL)
    flagged_pool, file_defaults = _pool_settings(flagged), _pool_settings(file_top)
    pools = []
    for name in file_pools or [default_pool]:
        own = file_pools.get(name, {})
        if name == default_pool:
            settings = _fields(file_defaults, own, flagged_pool)
        else:
            settings = _fields(file_defaults, flagged_pool, own)
        pools.append(PoolConfig(name=name, **settings))
    return ServerConfig(pools=tuple(pools), **server)


def main(argv: Sequence[str] | None = None) -> None:
    """``bridge-server [serve] [FLAGS]`` serves; ``bridge-server check [FLAGS]`` validates
    the config, checks the listen address, starts every pool once, prints the sandbox
    level each reached and exits non-zero on any problem (``COMMANDS``)."""
    from .app import check, run

    args = list(sys.argv[1:] if argv is None else argv)
    explicit = bool(args) and args[0] in COMMANDS
    command, flags = split_command(args)
    checking = command == "check"
    try:
        config = build_config(flags, command=command if explicit else None)
        if config.token_file:
            from .auth import read_token

            read_token(config.token_file)  # fail now, naming the key, not after start-up
        if config.tls_cert:
            from .tls import server_ssl_context

            server_ssl_context(config)  # the files must exist and load: fail now, too
    except ConfigError as exc:
        print(f"bridge-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(check(config) if checking else run(config))
