"""Server configuration: one frozen, validated ``ServerConfig`` holding one frozen
``PoolConfig`` per named pool.

Every setting has one name, used alike as the TOML key, the CLI flag (``--call-timeout``)
and the ``SNAKEBRIDGE_<NAME>`` environment variable; ``cli.build_config`` layers those
sources. Validation names the offending key (and pool) and the reason.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Final

from snakebridge._codec import DEFAULT_LIMITS

from .refids import POOL_NAME_RE
from .sandbox.policy import LEVELS as SANDBOX_LEVELS
from .worker_helpers import is_helper_file

DEFAULT_POOL: Final = "default"
MAX_POOLS: Final = 32
MAX_WORKERS_TOTAL: Final = 1024
_MODULE_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the reason."""


def _fail(key: str, reason: str) -> None:
    raise ConfigError(f"invalid config {key}: {reason}")


def _positive_finite(value: float) -> bool:
    return value > 0 and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """One named pool of worker processes. Each field but ``name`` is also a top-level
    setting, which is the default of every pool (see ``cli.build_config``)."""

    name: str = DEFAULT_POOL
    workers: int = os.cpu_count() or 1
    python: str = sys.executable
    env: tuple[tuple[str, str], ...] = ()  # extra worker environment, after the allowlist
    preload: tuple[str, ...] = ()  # modules each worker imports before it reports READY
    helpers: tuple[str, ...] = ()
    helper_allow: tuple[str, ...] = ()  # when set, the only helper names exposed
    max_queued: int = 4096
    call_timeout: float = 300.0
    max_call_timeout: float = 3600.0
    # -- sandbox (docs/sandbox.md) --
    sandbox: str = "standard"
    min_sandbox: str = "none"
    sandbox_read_paths: tuple[str, ...] = ()
    sandbox_write_paths: tuple[str, ...] = ()
    sandbox_allow_modules: tuple[str, ...] = ()
    sandbox_deny_modules: tuple[str, ...] = ()
    max_memory: int = 2 * 1024 * 1024 * 1024  # address space per worker; 0: unlimited
    max_call_cpu: float = 600.0  # CPU seconds per call; 0: unlimited
    max_open_files: int = 1024
    max_file_size: int = 1024 * 1024 * 1024
    max_threads: int = 256  # RLIMIT_NPROC, only with a dedicated uid
    # -- supervision --
    crash_loop_max: int = 5
    crash_loop_window: float = 60.0
    crash_loop_cooldown: float = 30.0
    recycle_calls: int = 0  # 0: never
    recycle_rss: int = 0  # bytes; 0: never
    recycle_jitter: float = 0.1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        # The default pool's errors read as before pools existed: its keys are the flags.
        where = "" if self.name == DEFAULT_POOL else f" (pool {self.name!r})"

        def fail(key: str, reason: str) -> None:
            _fail(key + where, reason)

        if not POOL_NAME_RE.match(self.name):
            _fail("pools", f"pool name {self.name!r} must match {POOL_NAME_RE.pattern}")
        if not 1 <= self.workers <= 256:
            fail("workers", f"{self.workers} is not in 1..256")
        if not self.python:
            fail("python", "must not be empty")
        for name, value in self.env:
            if not _ENV_NAME_RE.match(name):
                fail("env", f"{name!r} is not a valid environment variable name")
            if "\0" in value:
                fail("env", f"the value of {name} contains a NUL byte")
        if len(self.env) != len(dict(self.env)):
            fail("env", "a variable is set twice")
        for key in ("preload", "sandbox_allow_modules", "sandbox_deny_modules"):
            for name in getattr(self, key):
                if not _MODULE_RE.match(name):
                    fail(key, f"{name!r} is not a dotted module name")
        for entry in self.helpers:
            if self.helpers.count(entry) > 1:
                fail("helpers", f"{entry!r} is listed more than once")
            if not is_helper_file(entry):
                if not _MODULE_RE.match(entry):
                    fail("helpers", f"{entry!r} is not a dotted module name or a .py path")
            elif not os.path.isabs(entry):
                fail("helpers", f"{entry!r}: a helper file must be given as an absolute path")
            elif not entry.endswith(".py"):
                fail("helpers", f"{entry!r}: a helper file must end with .py")
            elif not os.path.isfile(entry):
                fail("helpers", f"{entry!r}: no such file")
        for name in self.helper_allow:
            if not name.isidentifier() or name.startswith("_"):
                fail("helper_allow", f"{name!r} is not a public function name")
            if self.helper_allow.count(name) > 1:
                fail("helper_allow", f"{name!r} is listed more than once")
        if self.helper_allow and not self.helpers:
            fail("helper_allow", "names helpers, but no helper source is given (--helpers)")
        if self.max_queued < 1:
            fail("max_queued", "must be >= 1")
        for key in ("call_timeout", "max_call_timeout"):
            if not _positive_finite(getattr(self, key)):
                fail(key, "must be a finite number > 0")
        if self.call_timeout > self.max_call_timeout:
            fail("call_timeout", "must not exceed max_call_timeout")
        for key in ("sandbox", "min_sandbox"):
            if getattr(self, key) not in SANDBOX_LEVELS:
                fail(key, f"{getattr(self, key)!r} is not one of {' | '.join(SANDBOX_LEVELS)}")
        if SANDBOX_LEVELS.index(self.sandbox) < SANDBOX_LEVELS.index(self.min_sandbox):
            fail("sandbox", f"{self.sandbox!r} is weaker than min_sandbox {self.min_sandbox!r}")
        for key in ("sandbox_read_paths", "sandbox_write_paths"):
            for path in getattr(self, key):
                if not os.path.isabs(path):
                    fail(key, f"{path!r} must be an absolute path")
        for key in ("max_memory", "max_file_size"):
            if getattr(self, key) < 0:
                fail(key, "must be >= 0 (0: unlimited)")
        if 0 < self.max_memory < 256 * 1024 * 1024:
            fail("max_memory", "must be 0 (unlimited) or at least 256 MiB")
        if not (self.max_call_cpu >= 0 and math.isfinite(self.max_call_cpu)):
            fail("max_call_cpu", "must be a finite number >= 0 (0: unlimited)")
        if not 16 <= self.max_open_files <= 1 << 20:
            fail("max_open_files", "must be in 16..1048576")
        if not 16 <= self.max_threads <= 1 << 20:
            fail("max_threads", "must be in 16..1048576")
        if self.crash_loop_max < 1:
            fail("crash_loop_max", "must be >= 1")
        for key in ("crash_loop_window", "crash_loop_cooldown"):
            if not _positive_finite(getattr(self, key)):
                fail(key, "must be a finite number > 0")
        for key in ("recycle_calls", "recycle_rss"):
            if getattr(self, key) < 0:
                fail(key, "must be >= 0 (0: never)")
        if not 0 <= self.recycle_jitter <= 0.5:  # NaN fails too
            fail("recycle_jitter", "must be in [0, 0.5]")


# Settings of a pool (every PoolConfig field but its name).
POOL_KEYS: Final = frozenset(f.name for f in fields(PoolConfig)) - {"name"}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    uds: str | None = None
    pool: str = DEFAULT_POOL  # the pool of calls that name none
    pools: tuple[PoolConfig, ...] = field(default=(PoolConfig(),))
    max_message_size: int = 64 * 1024 * 1024
    cancel_grace: float = 2.0
    session_ttl: float = 1800.0
    max_sessions: int = 10_000
    max_refs_per_session: int = 100_000
    max_refs: int = 1_000_000
    worker_start_timeout: float = 30.0
    stream_batch_items: int = 8192
    stream_batch_bytes: int = 1024 * 1024
    stream_linger: float = 0.005
    log_level: str = "info"
    # -- observability (docs/observability.md) --
    log_format: str = "console"  # console | json (one object per line)
    metrics: str = ""  # HOST:PORT of the Prometheus /metrics endpoint; "": off
    worker_output_rate: int = 1000  # worker output lines logged per second per worker; 0: all
    drain_grace: float = 10.0
    token_file: str | None = None
    insecure: bool = False
    # -- network: TLS and connection limits (tls.py, connections.py) --
    tls_cert: str | None = None  # PEM certificate chain; with tls_key the server serves TLS
    tls_key: str | None = None  # PEM private key of tls_cert
    tls_client_ca: str | None = None  # PEM CA bundle: client certificates required (mTLS)
    max_connections: int = 4096  # open client connections; more are refused
    max_streams_per_connection: int = 100  # SETTINGS_MAX_CONCURRENT_STREAMS (h2 default)
    idle_timeout: float = 300.0  # seconds a connection with no open stream is kept; 0: forever
    handshake_timeout: float = 10.0  # seconds for the client's HTTP/2 preface
    max_health_watches: int = 100  # concurrent grpc.health.v1 Watch streams; 0: none
    keepalive_time: float = 7200.0  # seconds between pings while streams are open; 0: none
    keepalive_timeout: float = 20.0  # seconds a ping may go unanswered before closing
    sandbox_uid: int = -1  # -1: auto (61000 + worker index when root), 0: never switch uid

    def __post_init__(self) -> None:
        self.validate()

    def pool_config(self, name: str) -> PoolConfig:
        return next(p for p in self.pools if p.name == name)

    def validate(self) -> None:
        fail = _fail
        if not 0 <= self.port <= 65535:
            fail("port", f"{self.port} is not in 0..65535")
        if not self.host:
            fail("host", "must not be empty")
        if self.uds is not None and not os.path.isabs(self.uds):
            fail("uds", f"{self.uds!r} must be an absolute path")
        if not POOL_NAME_RE.match(self.pool):
            fail("pool", f"{self.pool!r} must match {POOL_NAME_RE.pattern}")
        names = [p.name for p in self.pools]
        if not 1 <= len(names) <= MAX_POOLS:
            fail("pools", f"{len(names)} pools; there must be 1 to {MAX_POOLS}")
        if len(set(names)) != len(names):
            fail("pools", "two pools have the same name")
        if self.pool not in names:
            fail("pool", f"the default pool {self.pool!r} is not among the pools ({names})")
        if sum(p.workers for p in self.pools) > MAX_WORKERS_TOTAL:
            fail("workers", f"more than {MAX_WORKERS_TOTAL} workers in all pools together")
        for key in ("max_message_size", "max_sessions", "max_refs_per_session", "max_refs"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        for key in ("cancel_grace", "session_ttl", "drain_grace", "worker_start_timeout"):
            if not _positive_finite(getattr(self, key)):
                fail(key, "must be a finite number > 0")
        for key in ("stream_batch_items", "stream_batch_bytes"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        if not 0 < self.stream_linger <= 10:  # NaN fails too
            fail("stream_linger", "must be in (0, 10] seconds")
        if self.max_message_size > DEFAULT_LIMITS.max_size:
            fail(
                "max_message_size",
                f"must be at most {DEFAULT_LIMITS.max_size} (the value codec's decode limit)",
            )
        if not (self.sandbox_uid == -1 or 0 <= self.sandbox_uid <= 2**31 - 1 - 4096):
            fail("sandbox_uid", "must be -1 (auto), 0 (never switch) or a uid")
        if self.log_level not in ("debug", "info", "warning", "error"):
            fail("log_level", f"{self.log_level!r} is not debug|info|warning|error")
        # -- observability --
        if self.log_format not in ("console", "json"):
            fail("log_format", f"{self.log_format!r} is not console|json")
        if self.metrics:
            try:
                metrics_host, metrics_port = parse_listen(self.metrics)
            except ConfigError:
                metrics_host, metrics_port = "", -1
            if not metrics_host or not 0 <= metrics_port <= 65535:
                fail("metrics", f"{self.metrics!r} is not HOST:PORT")
            if not _is_loopback(metrics_host) and not self.insecure:
                # Metrics name pools, call rates and error classes: not for the network
                # unless the operator says so (the endpoint has no authentication).
                fail(
                    "metrics",
                    f"{metrics_host!r} is not a loopback address; give --insecure to serve "
                    "metrics on it without authentication",
                )
        if not 0 <= self.worker_output_rate <= 1_000_000:
            fail("worker_output_rate", "must be in 0..1000000 (0: no limit)")
        if self.token_file is not None and not self.token_file:
            fail("token_file", "must not be empty (omit it to serve without a token)")
        # -- network: TLS and connection limits --
        for key in ("tls_cert", "tls_key", "tls_client_ca"):
            if getattr(self, key) is not None and not getattr(self, key):
                fail(key, "must not be empty (omit it to serve without TLS)")
        if self.tls_cert and not self.tls_key:
            fail("tls_key", "is required with tls_cert")
        if self.tls_key and not self.tls_cert:
            fail("tls_cert", "is required with tls_key")
        if self.tls_client_ca and not self.tls_cert:
            fail("tls_client_ca", "needs tls_cert and tls_key (mTLS is TLS plus client certs)")
        if self.tls_cert and self.uds is not None:
            fail("tls_cert", "TLS is for TCP listeners; a --uds socket is guarded by its mode")
        if self.max_connections < 1:
            fail("max_connections", "must be >= 1")
        if not 1 <= self.max_streams_per_connection <= 2**31 - 1:
            fail("max_streams_per_connection", "must be in 1..2147483647")
        if not 0 <= self.max_health_watches <= 1_000_000:
            fail("max_health_watches", "must be in 0..1000000 (0: Watch refused)")
        for key in ("idle_timeout", "keepalive_time"):
            if not (getattr(self, key) >= 0 and math.isfinite(getattr(self, key))):
                fail(key, "must be a finite number >= 0 (0: never)")
        for key in ("handshake_timeout", "keepalive_timeout"):
            if not (getattr(self, key) > 0 and math.isfinite(getattr(self, key))):
                fail(key, "must be a finite number > 0")
        if self.uds is None and not _is_loopback(self.host) and not self.token_file:
            if not self.insecure and not self.tls_cert:
                # Anyone who can reach the port can run Python here: not without a token
                # or TLS unless the operator says so explicitly.
                fail(
                    "listen",
                    f"{self.host!r} is not a loopback address; give --token-file or "
                    "--tls-cert, or --insecure to serve it without authentication",
                )


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
