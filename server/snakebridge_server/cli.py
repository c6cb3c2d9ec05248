"""``bridge-server`` command line. Each flag can also be set as ``SNAKEBRIDGE_<NAME>`` or
in the ``--config`` TOML file (``cli.build_config`` layers them)."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

from .config import (
    DEFAULT_POOL,
    POOL_KEYS,
    ConfigError,
    PoolConfig,
    ServerConfig,
    parse_listen,
)

ENV_PREFIX = "SNAKEBRIDGE_"

# flag, config field (or "listen"), parser, help
_FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--listen", "listen", str, "HOST:PORT to serve on (default 127.0.0.1:50051)"),
    ("--uds", "uds", str, "serve on this unix socket path (mode 0600) instead of TCP"),
    ("--workers", "workers", int, "worker processes in the default pool (default: CPU count)"),
    ("--pool", "pool", str, "name of the default pool (default: default)"),
    ("--python", "python", str, "interpreter the workers run (default: this one)"),
    ("--preload", "preload", str, "comma-separated modules each worker imports at start"),
    ("--helpers", "helpers", str, "helper sources: modules or absolute .py paths (comma list)"),
    ("--max-queued", "max_queued", int, "calls queued per pool before PoolSaturated"),
    ("--call-timeout", "call_timeout", float, "default per-call timeout, seconds"),
    ("--max-call-timeout", "max_call_timeout", float, "largest per-call timeout, seconds"),
    ("--cancel-grace", "cancel_grace", float, "seconds a cancelled call may take to stop"),
    ("--session-ttl", "session_ttl", float, "idle seconds before a session is released"),
    ("--max-sessions", "max_sessions", int, "live sessions at most"),
    ("--max-refs-per-session", "max_refs_per_session", int, "refs one session may hold"),
    ("--max-refs", "max_refs", int, "refs all sessions together may hold"),
    ("--max-message-size", "max_message_size", int, "largest argument/result, bytes"),
    ("--worker-start-timeout", "worker_start_timeout", float, "seconds for a worker's READY"),
    ("--stream-batch-items", "stream_batch_items", int, "most items in one stream message"),
    ("--stream-batch-bytes", "stream_batch_bytes", int, "most bytes in one stream message"),
    ("--stream-linger", "stream_linger", float, "seconds a stream batch waits to fill up"),
    ("--log-level", "log_level", str, "debug | info | warning | error"),
    ("--token-file", "token_file", str, "require 'authorization: Bearer <token in file>'"),
    ("--drain-grace", "drain_grace", float, "seconds running calls get on SIGTERM"),
    ("--sandbox", "sandbox", str, "worker sandbox level: none | standard | strict"),
    ("--min-sandbox", "min_sandbox", str, "refuse to start below this sandbox level"),
    ("--sandbox-uid", "sandbox_uid", int, "uid for workers when root (-1 auto, 0 keep root)"),
    ("--sandbox-read-paths", "sandbox_read_paths", str, "extra read-only paths (comma list)"),
    ("--sandbox-write-paths", "sandbox_write_paths", str, "extra read-write paths (comma list)"),
    ("--sandbox-allow-modules", "sandbox_allow_modules", str, "strict: callable modules"),
    ("--sandbox-deny-modules", "sandbox_deny_modules", str, "extra modules calls may not use"),
    ("--max-memory", "max_memory", int, "worker address space limit, bytes (0: none)"),
    ("--max-call-cpu", "max_call_cpu", float, "CPU seconds one call may use (0: no limit)"),
    ("--max-open-files", "max_open_files", int, "open files per worker"),
    ("--max-file-size", "max_file_size", int, "largest file a worker may write, bytes"),
    ("--max-threads", "max_threads", int, "threads per worker uid (with a dedicated uid)"),
    ("--crash-loop-max", "crash_loop_max", int, "crashes within the window that trip a pool"),
    ("--crash-loop-window", "crash_loop_window", float, "crash-loop window, seconds"),
    ("--crash-loop-cooldown", "crash_loop_cooldown", float, "seconds a tripped pool waits"),
    ("--recycle-calls", "recycle_calls", int, "replace a worker after this many calls"),
    ("--recycle-rss", "recycle_rss", int, "replace a worker above this RSS, bytes"),
    ("--recycle-jitter", "recycle_jitter", float, "random fraction off recycle limits"),
    ("--helper-allow", "helper_allow", str, "expose only these helper names (comma list)"),
    # -- network: TLS and connection limits --
    ("--tls-cert", "tls_cert", str, "serve TLS with this PEM certificate chain"),
    ("--tls-key", "tls_key", str, "PEM private key of --tls-cert"),
    ("--tls-client-ca", "tls_client_ca", str, "PEM CA bundle; require client certs (mTLS)"),
    ("--max-connections", "max_connections", int, "open connections at most; more refused"),
    ("--max-streams-per-connection", "max_streams_per_connection", int, "concurrent streams"),
    ("--idle-timeout", "idle_timeout", float, "close connections idle this long (0: never)"),
    ("--handshake-timeout", "handshake_timeout", float, "seconds for a client's HTTP/2 preface"),
    ("--max-health-watches", "max_health_watches", int, "open health Watch streams at most"),
    ("--keepalive-time", "keepalive_time", float, "ping interval with streams open (0: off)"),
    ("--keepalive-timeout", "keepalive_timeout", float, "seconds for a ping's answer"),
    # -- observability (docs/observability.md) --
    ("--log-format", "log_format", str, "console | json (one JSON object per line)"),
    ("--metrics", "metrics", str, "serve Prometheus /metrics on HOST:PORT (off by default)"),
    ("--worker-output-rate", "worker_output_rate", int, "worker output lines/s logged (0: all)"),
]

_LISTS = {
    "preload",
    "helpers",
    "helper_allow",
    "sandbox_read_paths",
    "sandbox_write_paths",
    "sandbox_allow_modules",
    "sandbox_deny_modules",
}
_CONVERT: dict[str, Callable[[str], Any]] = {key: convert for _, key, convert, _ in _FLAGS}
_TRUE = ("1", "true", "yes")

# Layers, lowest precedence first: built-in defaults, the TOML file, SNAKEBRIDGE_*
# variables, flags. One dict per source, keyed by setting name (the flag without "--",
# dashes as underscores), values already converted.
Settings = dict[str, Any]


def _from_text(key: str, raw: str, source: str) -> Any:
    """A flag's or variable's text as the setting's value."""
    if key in _LISTS:
        return tuple(m.strip() for m in raw.split(",") if m.strip())
    try:
        return _CONVERT[key](raw)
    except ValueError:
        raise ConfigError(f"invalid config {source}: {raw!r} is not a valid {key}") from None


def _from_toml(key: str, value: Any, where: str) -> Any:
    """A TOML value as the setting's value; ``where`` names it in errors."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"invalid config {where}: {value!r} is not {expected}")

    if key == "env":
        if not isinstance(value, dict):
            raise wrong('a table of NAME = "value"')
        env = []
        for name, item in value.items():
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ConfigError(f"invalid config {where}.{name}: {item!r} is not a string")
            env.append((name, str(item)))
        return tuple(env)
    if key == "insecure":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if key in _LISTS:
        if isinstance(value, str):
            return _from_text(key, value, where)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return tuple(value)
    convert = _CONVERT.get(key)
    if convert is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
    elif convert is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        return float(value)
    elif not isinstance(value, str):
        raise wrong("a string")
    return value


def load_toml(path: str) -> tuple[Settings, dict[str, Settings]]:
    """The file's top-level settings and its ``[pools.NAME]`` tables."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"invalid config config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid config config: {path} is not valid TOML: {exc}") from None
    top: Settings = {}
    pools: dict[str, Settings] = {}
    for key, value in raw.items():
        if key == "pools":
            if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
                raise ConfigError(f"invalid config {path}: pools: use [pools.NAME] tables")
            for name, table in value.items():
                pools[name] = {}
                for pkey, pvalue in table.items():
                    where = f"{path}: pools.{name}.{pkey}"
                    if pkey not in POOL_KEYS:
                        reason = "not a pool setting" if pkey in _KNOWN else "unknown key"
                        raise ConfigError(f"invalid config {where}: {reason}")
                    pools[name][pkey] = _from_toml(pkey, pvalue, where)
        elif key in _KNOWN and key != "config":
            top[key] = _from_toml(key, value, f"{path}: {key}")
        else:
            raise ConfigError(f"invalid config {path}: unknown key {key!r}")
    return top, pools


_KNOWN = {key for _, key, _, _ in _FLAGS} | {"insecure", "env"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge-server",
        description="Serve Python interpreter worker processes over gRPC.",
        epilog="Every flag can also be set as SNAKEBRIDGE_<FLAG> (e.g. SNAKEBRIDGE_WORKERS=4) "
        "or as a key of the --config TOML file; flags win over variables, variables over "
        "the file. 'bridge-server check [FLAGS]' starts every pool once, prints the sandbox "
        "level each reached and exits non-zero on any problem. See docs/configuration.md.",
    )
    parser.add_argument("--config", help="TOML file of settings and [pools.NAME] tables")
    for flag, _, _, help_text in _FLAGS:
        parser.add_argument(flag, help=help_text)
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --listen without --token-file (no authentication!)",
    )
    return parser


def build_config(argv: Sequence[str], environ: dict[str, str] | None = None) -> ServerConfig:
    """Flags over ``SNAKEBRIDGE_*`` variables over the ``--config`` file over defaults.

    Pool settings at the top level are the defaults of every pool; a ``[pools.NAME]``
    table overrides them for its pool. A pool setting given as a flag or variable
    configures the default pool even over its table (``--sandbox strict`` always applies
    to it), and is a default the other pools' tables may override.
    """
    environ = dict(os.environ if environ is None else environ)
    ns = _parser().parse_args(list(argv))
    flagged: Settings = {}  # from variables, then flags over them
    for source in ("env", "cli"):
        for flag, key, _, _ in _FLAGS:
            attr = flag[2:].replace("-", "_")
            env_name = ENV_PREFIX + attr.upper()
            if source == "cli" and getattr(ns, attr) is not None:
                flagged[key] = _from_text(key, getattr(ns, attr), flag)
            elif source == "env" and env_name in environ:
                flagged[key] = _from_text(key, environ[env_name], env_name)
    if ns.insecure or environ.get(ENV_PREFIX + "INSECURE", "").lower() in _TRUE:
        flagged["insecure"] = True
    path = ns.config or environ.get(ENV_PREFIX + "CONFIG") or None
    file_top, file_pools = load_toml(path) if path else ({}, {})
    top = {**file_top, **flagged}
    values = {k: v for k, v in top.items() if k not in POOL_KEYS}
    if "listen" in values:
        values["host"], values["port"] = parse_listen(values.pop("listen"))
    default_pool = values.get("pool", DEFAULT_POOL)
    flagged_pool = {k: v for k, v in flagged.items() if k in POOL_KEYS}
    file_defaults = {k: v for k, v in file_top.items() if k in POOL_KEYS}
    pools = []
    for name in file_pools or [default_pool]:
        own = file_pools.get(name, {})
        if name == default_pool:
            settings = {**file_defaults, **own, **flagged_pool}
        else:
            settings = {**file_defaults, **flagged_pool, **own}
        pools.append(PoolConfig(name=name, **settings))
    return ServerConfig(pools=tuple(pools), **values)


def main(argv: Sequence[str] | None = None) -> None:
    """``bridge-server [FLAGS]`` serves; ``bridge-server check [FLAGS]`` validates the
    config, starts every pool once, prints the sandbox level each reached and exits
    non-zero on any problem."""
    from .app import check, run

    args = list(sys.argv[1:] if argv is None else argv)
    checking = bool(args) and args[0] == "check"
    try:
        config = build_config(args[1:] if checking else args)
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
