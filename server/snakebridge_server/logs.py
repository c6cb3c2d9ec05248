"""Server logging: console or JSON lines, the correlation id of the call being served,
and the bounded handling of what workers write to stdout/stderr.

Pure apart from ``configure``: the formatters, ``LineSplitter`` and ``LineLimiter`` do no
I/O, so the unit tests drive them directly.

The id of the call a log line is about lives in a context variable (``CALL``) that the
gRPC handler sets for its task; tasks it starts (a stream's prefetch) and callbacks it
schedules (a cancellation's kill timer) inherit it, so their lines carry it too.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any, Final

#: Longest correlation id accepted; longer ones are refused with ``BadRequest``.
MAX_CORRELATION_ID: Final = 128
_CORRELATION_RE: Final = re.compile(f"[\\x21-\\x7e]{{1,{MAX_CORRELATION_ID}}}")

#: Worker output lines longer than this many bytes are cut (with a note).
MAX_OUTPUT_LINE: Final = 16 * 1024
#: Leading byte of a structured record in a worker's output (ASCII record separator):
#: ``\x1e{json}``. Written by ``worker.output`` in the worker.
RECORD_MARK: Final = 0x1E

LOG_FORMATS: Final = ("console", "json")


def valid_correlation_id(value: str) -> bool:
    """1 to 128 printable ASCII characters, no spaces."""
    return _CORRELATION_RE.fullmatch(value) is not None


class CallInfo:
    """What the log lines and metrics of one RPC need to know about it. Filled in as the
    RPC learns it: the kind once the request is decoded, the pool once it is routed."""

    __slots__ = ("correlation_id", "kind", "pool")

    def __init__(self, correlation_id: str, kind: str = "", pool: str = "") -> None:
        self.correlation_id = correlation_id
        self.kind = kind
        self.pool = pool


#: The RPC the current task serves, or None outside one.
CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "snakebridge_call", default=None
)


def current_correlation_id() -> str:
    info = CALL.get()
    return info.correlation_id if info is not None else ""


def note_routed_pool(pool: str) -> None:
    """Name ``pool`` as the one the current RPC runs in (for its metrics and log lines):
    the bridge calls this once it has routed the RPC to a worker."""
    info = CALL.get()
    if info is not None:
        info.pool = pool


# Record attributes that, when a log call passes them (``extra=``) or the context knows
# them, become fields of a JSON line and ``key=value`` suffixes of a console line.
_EXTRA_FIELDS: Final = ("pool", "worker", "stream", "correlation_id")


def _extras(record: logging.LogRecord) -> dict[str, str]:
    fields = {}
    for key in _EXTRA_FIELDS:
        value = getattr(record, key, None)
        if value:
            fields[key] = str(value)
    if "correlation_id" not in fields:
        cid = current_correlation_id()
        if cid:
            fields["correlation_id"] = cid
    return fields


class ConsoleFormatter(logging.Formatter):
    """Today's ``<time> <LEVEL> <logger>: <message>``, then ``key=value`` for each known
    extra field (pool, worker, stream, correlation_id)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if not extras:
            return text
        suffix = " ".join(f"{k}={v}" for k, v in extras.items())
        head, sep, tail = text.partition("\n")  # keep a traceback below the suffix
        return f"{head} [{suffix}]{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601, milliseconds), level, logger,
    message, then the known extra fields, and ``exc_info`` text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        obj: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        obj.update(_extras(record))
        if record.exc_info:
            obj["exc_info"] = self.formatException(record.exc_info)
        elif record.stack_info:
            obj["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


def configure(level: str, log_format: str) -> None:
    """Send every log record to stderr in ``log_format`` (``console`` | ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # --log-level debug is for snakebridge: h2 and hpack log every frame and header.
    for noisy in ("h2", "hpack"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


# -- worker output ------------------------------------------------------------------------


class LineSplitter:
    """Bytes in, complete lines out, with at most ``max_line`` bytes held per line: a
    longer line is cut there (the rest until its newline is counted, not kept), so a
    worker that writes without newlines cannot grow the server's memory."""

    __slots__ = ("_buf", "_cut", "max_line")

    def __init__(self, max_line: int = MAX_OUTPUT_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._cut = 0  # bytes dropped from the line in progress

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        """(line without its newline, bytes cut from it) for each line ``data`` ends."""
        out: list[tuple[bytes, int]] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            piece = data[start:] if nl < 0 else data[start:nl]
            room = self.max_line - len(self._buf)
            if len(piece) > room:
                self._buf += piece[:room]
                self._cut += len(piece) - room
            else:
                self._buf += piece
            if nl < 0:
                return out
            out.append((bytes(self._buf), self._cut))
            self._buf.clear()
            self._cut = 0
            start = nl + 1

    def flush(self) -> list[tuple[bytes, int]]:
        """The unterminated last line, if any (at end of output)."""
        if not self._buf and not self._cut:
            return []
        line = (bytes(self._buf), self._cut)
        self._buf.clear()
        self._cut = 0
        return [line]


class LineLimiter:
    """A token bucket: at most ``rate`` lines per second, bursts of ``rate``. ``rate`` 0
    lets everything through. ``allow`` returns whether to log a line; ``take_dropped``
    how many were refused since it was last asked."""

    __slots__ = ("_at", "_tokens", "dropped", "rate")

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._at = now
        self.dropped = 0

    def allow(self, now: float) -> bool:
        if not self.rate:
            return True
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        return False

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped


_LEVELS: Final = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


class OutputLine:
    """One line of worker output, parsed: a structured record of the worker's logging or
    stdout/stderr wrappers (``\\x1e{json}``), or raw text (C code writing to fd 1/2, the
    interpreter dying)."""

    __slots__ = ("correlation_id", "level", "logger", "stream", "text")

    def __init__(
        self, text: str, stream: str, level: int, logger: str, correlation_id: str
    ) -> None:
        self.text = text
        self.stream = stream
        self.level = level
        self.logger = logger
        self.correlation_id = correlation_id


def parse_output_line(line: bytes, cut: int) -> OutputLine:
    """Never raises: a record that does not parse is logged as raw text. The worker's
    code can forge a record, but only its own lines' level, logger and correlation id:
    the server adds the worker and pool itself."""
    note = f" ...[{cut} bytes cut]" if cut else ""
    if line[:1] == b"\x1e" and not cut:
        try:
            obj = json.loads(line[1:])
            text = obj["m"]
            stream = obj.get("s", "stdout")
            cid = obj.get("c", "")
            level = _LEVELS.get(obj.get("l", "INFO"), logging.INFO)
            logger = obj.get("n", "")
            if (
                isinstance(text, str)
                and stream in ("stdout", "stderr", "log")
                and isinstance(cid, str)
                and (not cid or valid_correlation_id(cid))
                and isinstance(logger, str)
            ):
                return OutputLine(text, stream, level, logger[:200], cid)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    text = line.decode(errors="replace").rstrip("\r")
    return OutputLine(text + note, "output", logging.INFO, "", "")
