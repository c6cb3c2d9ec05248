"""Server configuration: one frozen, validated ``ServerConfig`` holding one frozen
``PoolConfig`` per named pool.

Each field declared with ``setting()`` is a setting (``settings.py`` says what derives
from that one declaration): its name is the TOML key, the CLI flag (``--call-timeout``)
and the ``SNAKEBRIDGE_<NAME>`` environment variable; ``cli.build_config`` layers those
sources. ``PoolConfig`` fields are pool-level (a top-level value is every pool's default),
``ServerConfig`` fields server-level. Validation names the offending key (and pool) and
the reason: each setting's own checks, then the rules that relate settings.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from snakebridge.wire.codec import DEFAULT_LIMITS

from .helper_sources import is_helper_file
from .refids import POOL_NAME_RE
from .sandbox.policy import LEVELS as SANDBOX_LEVELS
from .settings import (
    MODULE_RE,
    ConfigError,
    Setting,
    absolute_path,
    at_least,
    bind,
    check_fields,
    dotted_module,
    each,
    fail,
    given_not_empty,
    in_range,
    matches,
    non_negative,
    not_empty,
    one_of,
    positive_seconds,
    seconds_or_zero,
    setting,
    unique,
    within,
)

__all__ = [
    "DEFAULT_POOL",
    "POOL_SETTINGS",
    "SERVER_SETTINGS",
    "ConfigError",
    "PoolConfig",
    "ServerConfig",
    "parse_listen",
]

DEFAULT_POOL: Final = "default"
MAX_POOLS: Final = 32
MAX_WORKERS_TOTAL: Final = 1024
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LEVELS: Final = "one of " + " | ".join(SANDBOX_LEVELS)
_UNLIMITED: Final = "0: unlimited"

Problem = tuple[str, str] | None  # (key, reason) from a rule relating settings


# -- checks of one pool setting --


def _env(env: tuple[tuple[str, str], ...]) -> str | None:
    for name, value in env:
        if not _ENV_NAME_RE.match(name):
            return f"{name!r} is not a valid environment variable name"
        if "\0" in value:
            return f"the value of {name} contains a NUL byte"
    return "a variable is set twice" if len(env) != len(dict(env)) else None


def _helper_source(entry: str) -> str | None:
    if not is_helper_file(entry):
        ok = MODULE_RE.match(entry)
        return None if ok else f"{entry!r} is not a dotted module name or a .py path"
    if not os.path.isabs(entry):
        return f"{entry!r}: a helper file must be given as an absolute path"
    if not entry.endswith(".py"):
        return f"{entry!r}: a helper file must end with .py"
    return None if os.path.isfile(entry) else f"{entry!r}: no such file"


def _public_name(name: str) -> str | None:
    ok = name.isidentifier() and not name.startswith("_")
    return None if ok else f"{name!r} is not a public function name"


def _max_memory(value: int) -> str | None:
    ok = value == 0 or value >= 256 * 1024 * 1024
    return None if ok else "must be 0 (unlimited) or at least 256 MiB"


def _jitter(value: float) -> str | None:
    return None if 0 <= value <= 0.5 else "must be in [0, 0.5]"  # NaN fails too


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One named pool of worker processes. Each field but ``name`` is a pool-level
    setting; at the top level it is the default of every pool (see ``cli.build_config``)."""

    name: str = DEFAULT_POOL
    workers: int = setting(
        os.cpu_count() or 1,
        "worker processes in the default pool (default: CPU count)",
        in_range(1, 256),
    )
    python: str = setting(
        sys.executable, "interpreter the workers run (default: this one)", not_empty
    )
    env: tuple[tuple[str, str], ...] = setting(
        (), "extra worker environment, after the sandbox's allowlist (file only)", _env
    )
    preload: tuple[str, ...] = setting(
        (), "comma-separated modules each worker imports at start", each(dotted_module)
    )
    helpers: tuple[str, ...] = setting(
        (),
        "helper sources: modules or absolute .py paths (comma list)",
        unique,
        each(_helper_source),
    )
    helper_allow: tuple[str, ...] = setting(
        (), "expose only these helper names (comma list)", each(_public_name), unique
    )
    max_queued: int = setting(4096, "calls queued per pool before PoolSaturated", at_least(1))
    concurrency: int = setting(
        1, "calls one worker runs at once (coroutines; sync ones with threads)", in_range(1, 1024)
    )
    threads: bool = setting(
        False, "with concurrency > 1, run sync functions in a thread pool of that size"
    )
    call_timeout: float = setting(300.0, "default per-call timeout, seconds", positive_seconds)
    max_call_timeout: float = setting(3600.0, "largest per-call timeout, seconds", positive_seconds)
    # -- sandbox (docs/sandbox.md) --
    sandbox: str = setting(
        "standard",
        "worker sandbox level: none | standard | strict",
        one_of(SANDBOX_LEVELS, _LEVELS),
    )
    min_sandbox: str = setting(
        "none", "refuse to start below this sandbox level", one_of(SANDBOX_LEVELS, _LEVELS)
    )
    sandbox_read_paths: tuple[str, ...] = setting(
        (), "extra read-only paths (comma list)", each(absolute_path)
    )
    sandbox_write_paths: tuple[str, ...] = setting(
        (), "extra read-write paths (comma list)", each(absolute_path)
    )
    sandbox_allow_modules: tuple[str, ...] = setting(
        (), "strict: callable modules", each(dotted_module)
    )
    sandbox_deny_modules: tuple[str, ...] = setting(
        (), "extra modules calls may not use", each(dotted_module)
    )
    max_memory: int = setting(
        2 * 1024 * 1024 * 1024,
        "worker address space limit, bytes (0: none)",
        non_negative(_UNLIMITED),
        _max_memory,
    )
    max_call_cpu: float = setting(
        600.0, "CPU seconds one call may use (0: no limit)", seconds_or_zero(_UNLIMITED)
    )
    max_open_files: int = setting(1024, "open files per worker", within(16, 1 << 20))
    max_file_size: int = setting(
        1024 * 1024 * 1024, "largest file a worker may write, bytes", non_negative(_UNLIMITED)
    )
    max_threads: int = setting(  # RLIMIT_NPROC, only with a dedicated uid
        256, "threads per worker uid (with a dedicated uid)", within(16, 1 << 20)
    )
    # -- supervision --
    crash_loop_max: int = setting(5, "crashes within the window that trip a pool", at_least(1))
    crash_loop_window: float = setting(60.0, "crash-loop window, seconds", positive_seconds)
    crash_loop_cooldown: float = setting(30.0, "seconds a tripped pool waits", positive_seconds)
    recycle_calls: int = setting(
        0, "replace a worker after this many calls", non_negative("0: never")
    )
    recycle_rss: int = setting(
        0, "replace a worker above this RSS, bytes", non_negative("0: never")
    )
    recycle_jitter: float = setting(0.1, "random fraction off recycle limits", _jitter)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not POOL_NAME_RE.match(self.name):
            fail("pools", f"pool name {self.name!r} must match {POOL_NAME_RE.pattern}")
        # The default pool's errors read as before pools existed: its keys are the flags.
        where = "" if self.name == DEFAULT_POOL else f" (pool {self.name!r})"
        check_fields(self, POOL_SETTINGS, where)
        for rule in POOL_RULES:
            if problem := rule(self):
                fail(problem[0] + where, problem[1])


def _helper_allow_needs_helpers(pc: PoolConfig) -> Problem:
    if pc.helper_allow and not pc.helpers:
        return "helper_allow", "names helpers, but no helper source is given (--helpers)"
    return None


def _call_timeout_within_max(pc: PoolConfig) -> Problem:
    if pc.call_timeout > pc.max_call_timeout:
        return "call_timeout", "must not exceed max_call_timeout"
    return None


def _sandbox_not_below_min(pc: PoolConfig) -> Problem:
    if SANDBOX_LEVELS.index(pc.sandbox) < SANDBOX_LEVELS.index(pc.min_sandbox):
        return "sandbox", f"{pc.sandbox!r} is weaker than min_sandbox {pc.min_sandbox!r}"
    return None


def _threads_within_max_threads(pc: PoolConfig) -> Problem:
    # A worker's own threads (main, streams) need room beside the pool of ``concurrency``.
    if pc.threads and pc.concurrency > 1 and pc.concurrency + 8 > pc.max_threads:
        return "concurrency", (
            f"{pc.concurrency} threads (threads = true) do not fit max_threads "
            f"{pc.max_threads}: raise max_threads to at least {pc.concurrency + 8}"
        )
    return None


POOL_SETTINGS: Final = bind(PoolConfig, "pool")
POOL_RULES: Final[tuple[Callable[[PoolConfig], Problem], ...]] = (
    _helper_allow_needs_helpers,
    _call_timeout_within_max,
    _sandbox_not_below_min,
    _threads_within_max_threads,
)


# -- checks of one server setting --


def _listen(value: str) -> dict[str, Any]:
    host, port = parse_listen(value)
    return {"host": host, "port": port}


def _within_codec_limit(value: int) -> str | None:
    limit = DEFAULT_LIMITS.max_size
    return None if value <= limit else f"must be at most {limit} (the value codec's decode limit)"


def _stream_linger(value: float) -> str | None:
    return None if 0 < value <= 10 else "must be in (0, 10] seconds"  # NaN fails too


def _sandbox_uid(value: int) -> str | None:
    ok = value == -1 or 0 <= value <= 2**31 - 1 - 4096
    return None if ok else "must be -1 (auto), 0 (never switch) or a uid"


def _host_port(value: str) -> str | None:
    if not value:
        return None
    try:
        host, port = parse_listen(value)
    except ConfigError:
        host, port = "", -1
    return None if host and 0 <= port <= 65535 else f"{value!r} is not HOST:PORT"


_NO_TLS: Final = given_not_empty("omit it to serve without TLS")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The server's settings and its pools (``PoolConfig``); validated when made."""

    host: str = setting(
        "127.0.0.1",
        "HOST:PORT to serve on (default 127.0.0.1:50051)",
        not_empty,
        name="listen",
        unpack=_listen,
    )
    port: int = setting(50051, "TCP port to serve on (set by listen)", in_range(0, 65535), name="")
    uds: str | None = setting(
        None, "serve on this unix socket path (mode 0600) instead of TCP", absolute_path
    )
    pool: str = setting(
        DEFAULT_POOL, "name of the default pool (default: default)", matches(POOL_NAME_RE)
    )
    pools: tuple[PoolConfig, ...] = field(default=(PoolConfig(),))
    max_message_size: int = setting(
        64 * 1024 * 1024, "largest argument/result, bytes", at_least(1), _within_codec_limit
    )
    cancel_grace: float = setting(
        2.0, "seconds a cancelled call may take to stop", positive_seconds
    )
    session_ttl: float = setting(
        1800.0, "idle seconds before a session is released", positive_seconds
    )
    max_sessions: int = setting(10_000, "live sessions at most", at_least(1))
    max_refs_per_session: int = setting(100_000, "refs one session may hold", at_least(1))
    max_refs: int = setting(1_000_000, "refs all sessions together may hold", at_least(1))
    worker_start_timeout: float = setting(30.0, "seconds for a worker's READY", positive_seconds)
    stream_batch_items: int = setting(8192, "most items in one stream message", at_least(1))
    stream_batch_bytes: int = setting(1024 * 1024, "most bytes in one stream message", at_least(1))
    stream_linger: float = setting(0.005, "seconds a stream batch waits to fill up", _stream_linger)
    log_level: str = setting(
        "info",
        "debug | info | warning | error",
        one_of(("debug", "info", "warning", "error"), "debug|info|warning|error"),
    )
    # -- observability (docs/observability.md) --
    log_format: str = setting(
        "console",
        "console | json (one JSON object per line)",
        one_of(("console", "json"), "console|json"),
    )
    metrics: str = setting(
        "", "serve Prometheus /metrics on HOST:PORT (off by default)", _host_port
    )
    worker_output_rate: int = setting(
        1000, "worker output lines/s logged (0: all)", within(0, 1_000_000, " (0: no limit)")
    )
    drain_grace: float = setting(10.0, "seconds running calls get on SIGTERM", positive_seconds)
    token_file: str | None = setting(
        None,
        "require 'authorization: Bearer <token in file>'",
        given_not_empty("omit it to serve without a token"),
    )
    insecure: bool = setting(
        False, "allow a non-loopback --listen without --token-file (no authentication!)"
    )
    # -- network: TLS and connection limits (tls.py, connections.py) --
    tls_cert: str | None = setting(None, "serve TLS with this PEM certificate chain", _NO_TLS)
    tls_key: str | None = setting(None, "PEM private key of --tls-cert", _NO_TLS)
    tls_client_ca: str | None = setting(None, "PEM CA bundle; require client certs (mTLS)", _NO_TLS)
    max_connections: int = setting(4096, "open connections at most; more refused", at_least(1))
    max_streams_per_connection: int = setting(  # SETTINGS_MAX_CONCURRENT_STREAMS
        100, "concurrent streams", within(1, 2**31 - 1)
    )
    idle_timeout: float = setting(
        300.0, "close connections idle this long (0: never)", seconds_or_zero("0: never")
    )
    handshake_timeout: float = setting(
        10.0,
        "seconds for a client's HTTP/2 preface and a token-free request's message",
        positive_seconds,
    )
    max_health_watches: int = setting(  # concurrent grpc.health.v1 Watch streams
        100, "open health Watch streams at most", within(0, 1_000_000, " (0: Watch refused)")
    )
    keepalive_time: float = setting(
        7200.0, "ping interval with streams open (0: off)", seconds_or_zero("0: never")
    )
    keepalive_timeout: float = setting(20.0, "seconds for a ping's answer", positive_seconds)
    sandbox_uid: int = setting(-1, "uid for workers when root (-1 auto, 0 keep root)", _sandbox_uid)

    def __post_init__(self) -> None:
        self.validate()

    def pool_config(self, name: str) -> PoolConfig:
        return next(p for p in self.pools if p.name == name)

    def validate(self) -> None:
        check_fields(self, SERVER_SETTINGS)
        for rule in SERVER_RULES:
            if problem := rule(self):
                fail(*problem)


def _pools(config: ServerConfig) -> Problem:
    names = [p.name for p in config.pools]
    if not 1 <= len(names) <= MAX_POOLS:
        return "pools", f"{len(names)} pools; there must be 1 to {MAX_POOLS}"
    if len(set(names)) != len(names):
        return "pools", "two pools have the same name"
    if config.pool not in names:
        return "pool", f"the default pool {config.pool!r} is not among the pools ({names})"
    if sum(p.workers for p in config.pools) > MAX_WORKERS_TOTAL:
        return "workers", f"more than {MAX_WORKERS_TOTAL} workers in all pools together"
    return None


def _metrics_on_loopback(config: ServerConfig) -> Problem:
    # Metrics name pools, call rates and error classes: not for the network unless the
    # operator says so (the endpoint has no authentication).
    if not config.metrics or config.insecure:
        return None
    host = parse_listen(config.metrics)[0]
    if _is_loopback(host):
        return None
    return "metrics", (
        f"{host!r} is not a loopback address; give --insecure to serve "
        "metrics on it without authentication"
    )


def _tls_pairs(config: ServerConfig) -> Problem:
    if config.tls_cert and not config.tls_key:
        return "tls_key", "is required with tls_cert"
    if config.tls_key and not config.tls_cert:
        return "tls_cert", "is required with tls_key"
    if config.tls_client_ca and not config.tls_cert:
        return "tls_client_ca", "needs tls_cert and tls_key (mTLS is TLS plus client certs)"
    if config.tls_cert and config.uds is not None:
        return "tls_cert", "TLS is for TCP listeners; a --uds socket is guarded by its mode"
    return None


def _network_needs_auth(config: ServerConfig) -> Problem:
    # Anyone who can reach the port can run Python here: not without a token or TLS
    # unless the operator says so explicitly.
    if config.uds is not None or _is_loopback(config.host):
        return None
    if config.token_file or config.insecure or config.tls_cert:
        return None
    return "listen", (
        f"{config.host!r} is not a loopback address; give --token-file or "
        "--tls-cert, or --insecure to serve it without authentication"
    )


SERVER_SETTINGS: Final = bind(ServerConfig, "server")
SERVER_RULES: Final[tuple[Callable[[ServerConfig], Problem], ...]] = (
    _pools,
    _metrics_on_loopback,
    _tls_pairs,
    _network_needs_auth,
)


def default_of(cls: type[PoolConfig] | type[ServerConfig], key: str) -> Any:
    """The declared default of a setting, for code that mirrors it (``SupervisionPolicy``)."""
    settings: tuple[Setting, ...] = POOL_SETTINGS if cls is PoolConfig else SERVER_SETTINGS
    return next(s.default for s in settings if s.field == key)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"invalid config listen: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
