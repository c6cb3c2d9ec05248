"""Connection limits that grpclib lacks: what they are and the decisions. Runs in the server.

grpclib 0.4.9 accepts any number of connections and keeps each one until its peer leaves
(1500 idle connections held 1500 fds), never times out a client that connects and says
nothing, and answers every PING a client sends. ``grpc_server.GrpcServer`` applies these
limits to each connection (the grpclib mechanics are there); this module decides, without
I/O:

- a place under ``--max-connections`` (``ConnectionGuard``): one more is sent a GOAWAY and
  closed;
- ``SETTINGS_MAX_CONCURRENT_STREAMS`` = ``--max-streams-per-connection``;
- a deadline for the client's HTTP/2 preface (``--handshake-timeout``);
- an idle timer (``--idle-timeout``), running while the connection has no open stream,
  that ends it with GOAWAY ``NO_ERROR``;
- ping-abuse protection (``PingStrikes``): a client that sends PINGs less than
  ``PING_MIN_INTERVAL`` apart more than ``PING_STRIKES`` times with nothing sent by the
  server in between is sent GOAWAY ``ENHANCE_YOUR_CALM`` ("too_many_pings", as gRPC servers
  do) and closed;
- rapid-reset protection (CVE-2023-44487, ``ResetWindow``): a client that resets more than
  ``RESET_LIMIT`` streams within ``RESET_WINDOW`` seconds (a sliding window) is sent
  GOAWAY ``ENHANCE_YOUR_CALM`` ("too_many_resets") and closed, and the requests still
  queued in what it sent are dropped unread. Opening and resetting streams costs the
  client two frames and the server a handler task each: 50,000 of them stalled other
  clients for 8-11 s and grew the server by ~0.5 GB. A client that cancels its calls
  legitimately resets at the rate its calls finish, far below this.

The server's own keepalive pings are grpclib's (``grpc_configuration``).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from grpclib.config import Configuration

from .config import ServerConfig

log = logging.getLogger("snakebridge.server")

PING_MIN_INTERVAL: Final = 10.0  # seconds; closer pings without server data are strikes
PING_STRIKES: Final = 2  # strikes allowed; the next one closes the connection
RESET_WINDOW: Final = 10.0  # seconds of stream resets counted
RESET_LIMIT: Final = 1000  # resets allowed within RESET_WINDOW; the next one closes
_REFUSAL_LOG_INTERVAL: Final = 1.0  # at most one "refused" warning a second
_FD_HEADROOM: Final = 256  # fds beyond max_connections: workers' pipes, logs, the listener


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    max_streams: int
    idle_timeout: float  # 0: never
    handshake_timeout: float

    @classmethod
    def from_config(cls, config: ServerConfig) -> ConnectionLimits:
        return cls(
            max_connections=config.max_connections,
            max_streams=config.max_streams_per_connection,
            idle_timeout=config.idle_timeout,
            handshake_timeout=config.handshake_timeout,
        )


def grpc_configuration(config: ServerConfig) -> Configuration:
    """grpclib's server configuration: keepalive pings every ``keepalive_time`` seconds
    while a stream is open, the connection closed when one goes unanswered for
    ``keepalive_timeout``. grpclib would otherwise send at most two pings without data and
    none closer than 300 s apart, which would stretch a short ``keepalive_time``."""
    if config.keepalive_time == 0:
        return Configuration(_keepalive_time=None)
    return Configuration(
        _keepalive_time=config.keepalive_time,
        _keepalive_timeout=config.keepalive_timeout,
        _keepalive_permit_without_calls=False,  # an idle connection meets the idle timeout
        _http2_max_pings_without_data=0,
        _http2_min_sent_ping_interval_without_data=config.keepalive_time,
    )


def raise_open_files_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection is one fd); warn
    when even that cannot hold ``max_connections``. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    if soft < max_connections + _FD_HEADROOM:
        log.warning(
            "the open-files limit (%d) is below --max-connections (%d) plus %d: connections "
            "may fail with EMFILE before the cap refuses them; raise `ulimit -Hn`",
            soft,
            max_connections,
            _FD_HEADROOM,
        )
    return soft


class ConnectionGuard:
    """Counts the server's connections and admits each one under ``limits.max_connections``."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self._refused_unlogged = 0
        self._last_refusal_log = -math.inf

    def __repr__(self) -> str:
        return f"<ConnectionGuard open={self.open} refused={self.refused}>"

    def admit(self) -> bool:
        """Take a place for a new connection; False (logged, at most once a second) when
        the server holds ``max_connections`` already."""
        if self.open < self.limits.max_connections:
            self.open += 1
            return True
        self.refused += 1
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d connection(s): %d open, the --max-connections limit",
                self._refused_unlogged,
                self.open,
            )
            self._refused_unlogged = 0
            self._last_refusal_log = now
        return False

    def release(self) -> None:
        """An admitted connection ended."""
        self.open -= 1


class PingStrikes:
    """One connection's ping-abuse count: PINGs closer than ``PING_MIN_INTERVAL`` with
    nothing sent by the server in between are strikes."""

    __slots__ = ("_last_ping", "_strikes")

    def __init__(self) -> None:
        self._last_ping: float | None = None
        self._strikes = 0

    def sent_something(self) -> None:
        """The server sent a stream's headers or data: the count starts over."""
        self._strikes = 0
        self._last_ping = None

    def allow(self, now: float) -> bool:
        """A PING arrived at ``now``; False once it is more than ``PING_STRIKES`` strikes."""
        last, self._last_ping = self._last_ping, now
        if last is not None and now - last < PING_MIN_INTERVAL:
            self._strikes += 1
            if self._strikes > PING_STRIKES:
                return False
        return True


class ResetWindow:
    """One connection's stream resets by the client in the last ``RESET_WINDOW`` seconds."""

    __slots__ = ("_resets",)

    def __init__(self) -> None:
        self._resets: deque[float] = deque(maxlen=RESET_LIMIT + 1)  # times of recent resets

    def exceeded(self, now: float) -> bool:
        """A reset at ``now``; True when that makes more than ``RESET_LIMIT`` in the window."""
        resets = self._resets
        resets.append(now)
        while resets[0] < now - RESET_WINDOW:
            resets.popleft()
        return len(resets) > RESET_LIMIT
