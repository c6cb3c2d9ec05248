"""``bridge-server`` command line. Each flag can also be set as ``SNAKEBRIDGE_<NAME>``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import ConfigError, ServerConfig, parse_listen

ENV_PREFIX = "SNAKEBRIDGE_"

# flag, config field (or "listen"), parser, help
_FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--listen", "listen", str, "HOST:PORT to serve on (default 127.0.0.1:50051)"),
    ("--uds", "uds", str, "serve on this unix socket path (mode 0600) instead of TCP"),
    ("--workers", "workers", int, "worker processes in the default pool (default: CPU count)"),
    ("--pool", "pool", str, "name of the default pool (default: default)"),
    ("--python", "python", str, "interpreter the workers run (default: this one)"),
    ("--helpers", "helpers", str, "comma-separated modules whose functions are helpers"),
    ("--max-queued", "max_queued", int, "calls queued per pool before PoolSaturated"),
    ("--call-timeout", "call_timeout_default", float, "default per-call timeout, seconds"),
    ("--max-call-timeout", "call_timeout_max", float, "largest per-call timeout, seconds"),
    ("--cancel-grace", "cancel_grace", float, "seconds a cancelled call may take to stop"),
    ("--session-ttl", "session_ttl", float, "idle seconds before a session is released"),
    ("--max-sessions", "max_sessions", int, "live sessions at most"),
    ("--max-refs-per-session", "max_refs_per_session", int, "refs one session may hold"),
    ("--max-refs", "max_refs_total", int, "refs all sessions together may hold"),
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
    # -- observability (docs/observability.md) --
    ("--log-format", "log_format", str, "console | json (one JSON object per line)"),
    ("--metrics", "metrics", str, "serve Prometheus /metrics on HOST:PORT (off by default)"),
    ("--worker-output-rate", "worker_output_rate", int, "worker output lines/s logged (0: all)"),
]

_LISTS = {
    "helpers",
    "sandbox_read_paths",
    "sandbox_write_paths",
    "sandbox_allow_modules",
    "sandbox_deny_modules",
}


def build_config(argv: Sequence[str], environ: dict[str, str] | None = None) -> ServerConfig:
    """CLI flags over ``SNAKEBRIDGE_*`` environment variables over defaults."""
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(
        prog="bridge-server",
        description="Serve Python interpreter worker processes over gRPC.",
        epilog="Every flag can also be set as SNAKEBRIDGE_<FLAG> (e.g. SNAKEBRIDGE_WORKERS=4). "
        "'bridge-server check [FLAGS]' starts every pool once, prints the sandbox level each "
        "reached and exits non-zero on any problem.",
    )
    for flag, _, _, help_text in _FLAGS:
        parser.add_argument(flag, help=help_text)
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --listen without --token-file (no authentication!)",
    )
    ns = parser.parse_args(list(argv))
    values: dict[str, Any] = {}
    insecure = ns.insecure or environ.get(ENV_PREFIX + "INSECURE", "").lower() in (
        "1",
        "true",
        "yes",
    )
    if insecure:
        values["insecure"] = True
    for flag, key, convert, _ in _FLAGS:
        attr = flag[2:].replace("-", "_")
        env_name = ENV_PREFIX + attr.upper()
        raw = getattr(ns, attr)
        source = flag
        if raw is None and env_name in environ:
            raw, source = environ[env_name], env_name
        if raw is None:
            continue
        try:
            value = convert(raw)
        except ValueError:
            raise ConfigError(f"invalid config {source}: {raw!r} is not a valid {key}") from None
        if key == "listen":
            values["host"], values["port"] = parse_listen(value)
        elif key in _LISTS:
            values[key] = tuple(m.strip() for m in value.split(",") if m.strip())
        else:
            values[key] = value
    return ServerConfig(**values)


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
    except ConfigError as exc:
        print(f"bridge-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(check(config) if checking else run(config))
