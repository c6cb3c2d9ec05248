"""Server configuration: one frozen, validated object.

Every setting has a CLI flag and a ``SNAKEBRIDGE_<NAME>`` environment variable (the flag
wins). ``ServerConfig.validate`` names the offending key and the reason.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Final

from snakebridge._codec import DEFAULT_LIMITS

from .refids import POOL_NAME_RE
from .sandbox.policy import LEVELS as SANDBOX_LEVELS

DEFAULT_POOL: Final = "default"
_MODULE_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the reason."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    uds: str | None = None
    workers: int = os.cpu_count() or 1
    pool: str = DEFAULT_POOL
    python: str = sys.executable
    helpers: tuple[str, ...] = ()
    max_queued: int = 4096
    max_message_size: int = 64 * 1024 * 1024
    call_timeout_default: float = 300.0
    call_timeout_max: float = 3600.0
    cancel_grace: float = 2.0
    session_ttl: float = 1800.0
    max_sessions: int = 10_000
    max_refs_per_session: int = 100_000
    max_refs_total: int = 1_000_000
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
    # -- sandbox (docs/sandbox.md) --
    sandbox: str = "standard"
    min_sandbox: str = "none"
    sandbox_uid: int = -1  # -1: auto (61000 + slot when run as root), 0: never switch uid
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
        def fail(key: str, reason: str) -> None:
            raise ConfigError(f"invalid config {key}: {reason}")

        if not 0 <= self.port <= 65535:
            fail("port", f"{self.port} is not in 0..65535")
        if not self.host:
            fail("host", "must not be empty")
        if self.uds is not None and not os.path.isabs(self.uds):
            fail("uds", f"{self.uds!r} must be an absolute path")
        if not 1 <= self.workers <= 256:
            fail("workers", f"{self.workers} is not in 1..256")
        if not POOL_NAME_RE.match(self.pool):
            fail("pool", f"{self.pool!r} must match {POOL_NAME_RE.pattern}")
        for key in (
            "max_queued",
            "max_message_size",
            "max_sessions",
            "max_refs_per_session",
            "max_refs_total",
        ):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        for key in (
            "call_timeout_default",
            "call_timeout_max",
            "cancel_grace",
            "session_ttl",
            "drain_grace",
        ):
            if not (getattr(self, key) > 0 and math.isfinite(getattr(self, key))):
                fail(key, "must be a finite number > 0")
        for key in ("stream_batch_items", "stream_batch_bytes"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        if not 0 < self.stream_linger <= 10:  # NaN fails too
            fail("stream_linger", "must be in (0, 10] seconds")
        if not (self.worker_start_timeout > 0 and math.isfinite(self.worker_start_timeout)):
            fail("worker_start_timeout", "must be a finite number > 0")
        if self.max_message_size > DEFAULT_LIMITS.max_size:
            fail(
                "max_message_size",
                f"must be at most {DEFAULT_LIMITS.max_size} (the value codec's decode limit)",
            )
        for key in ("sandbox", "min_sandbox"):
            if getattr(self, key) not in SANDBOX_LEVELS:
                fail(key, f"{getattr(self, key)!r} is not one of {' | '.join(SANDBOX_LEVELS)}")
        if SANDBOX_LEVELS.index(self.sandbox) < SANDBOX_LEVELS.index(self.min_sandbox):
            fail("sandbox", f"{self.sandbox!r} is weaker than min_sandbox {self.min_sandbox!r}")
        if not (self.sandbox_uid == -1 or 0 <= self.sandbox_uid <= 2**31 - 257):
            fail("sandbox_uid", "must be -1 (auto), 0 (never switch) or a uid")
        for key in ("sandbox_read_paths", "sandbox_write_paths"):
            for path in getattr(self, key):
                if not os.path.isabs(path):
                    fail(key, f"{path!r} must be an absolute path")
        for key in ("sandbox_allow_modules", "sandbox_deny_modules"):
            for name in getattr(self, key):
                if not _MODULE_RE.match(name):
                    fail(key, f"{name!r} is not a dotted module name")
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
            if not (getattr(self, key) > 0 and math.isfinite(getattr(self, key))):
                fail(key, "must be a finite number > 0")
        for key in ("recycle_calls", "recycle_rss"):
            if getattr(self, key) < 0:
                fail(key, "must be >= 0 (0: never)")
        if not 0 <= self.recycle_jitter <= 0.5:  # NaN fails too
            fail("recycle_jitter", "must be in [0, 0.5]")
        if self.call_timeout_default > self.call_timeout_max:
            fail("call_timeout_default", "must not exceed call_timeout_max")
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
        if self.uds is None and not _is_loopback(self.host) and not self.token_file:
            if not self.insecure:
                # Anyone who can reach the port can run Python here: not without a token
                # (TLS is not built yet) unless the operator says so explicitly.
                fail(
                    "host",
                    f"{self.host!r} is not a loopback address; give --token-file, "
                    "or --insecure to serve it without authentication",
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
