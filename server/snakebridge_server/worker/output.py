"""Logging inside the worker process: every line it writes through ``logging``, ``print``
or ``sys.stdout`` / ``sys.stderr`` leaves as one structured record carrying the
correlation id of the call being run, for the server to log with the worker's id.

A record is one line on the worker's output pipe: ``\\x1e`` then a JSON object with
``m`` (message), ``s`` (``log`` | ``stdout`` | ``stderr``), ``c`` (correlation id), and for
``log`` records ``l`` (level name) and ``n`` (logger name). The server's reader
(``logs.parse_output_line``) takes anything else as raw text. Kept import-light: the
worker imports it before any user code.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Final, TextIO

#: Longest message of one record, in characters; the rest is cut with a note, so a record
#: stays well under the server's line limit (``logs.MAX_OUTPUT_LINE``).
MAX_MESSAGE: Final = 4096

#: Correlation id of the call in user code right now ("" between calls). The worker runs
#: one call at a time, so a plain global is enough; threads the call started see the
#: current call's id.
current: list[str] = [""]


def set_correlation_id(value: str) -> None:
    current[0] = value


def _record(out: TextIO, fields: dict[str, str]) -> None:
    message = fields["m"]
    if len(message) > MAX_MESSAGE:
        fields["m"] = f"{message[:MAX_MESSAGE]}...[{len(message) - MAX_MESSAGE} characters cut]"
    try:
        out.write("\x1e" + json.dumps(fields, ensure_ascii=False) + "\n")
        out.flush()
    except (OSError, ValueError):
        pass  # the server is gone or the pipe closed: nowhere to report to


class _RecordHandler(logging.Handler):
    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
        except Exception:  # a broken %-format must not break the call
            message = f"<unformattable log message {record.msg!r}>"
        _record(
            self.out,
            {
                "m": message,
                "s": "log",
                "c": current[0],
                "l": record.levelname,
                "n": record.name,
            },
        )


class _LineWriter(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of the worker: text is buffered until a newline
    (or ``MAX_MESSAGE`` characters), then sent as one record. ``fileno()`` is the real
    pipe's, so code writing to the descriptor still works (as raw lines)."""

    def __init__(self, name: str, out: TextIO) -> None:
        super().__init__()
        self._name = name
        self._out = out
        self._parts: list[str] = []
        self._size = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it read-only
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._out.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        written = len(text)
        while text:
            nl = text.find("\n")
            if nl < 0:
                self._parts.append(text)
                self._size += len(text)
                if self._size >= MAX_MESSAGE:
                    self._emit()
                return written
            self._parts.append(text[:nl])
            self._emit()
            text = text[nl + 1 :]
        return written

    def flush(self) -> None:
        # Partial lines wait for their newline: print(..., end="") pieces stay one line.
        pass

    def close_line(self) -> None:
        """Send a pending partial line (at the end of a call)."""
        if self._parts:
            self._emit()

    def _emit(self) -> None:
        message = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        _record(self._out, {"m": message, "s": self._name, "c": current[0]})


_writers: list[_LineWriter] = []


def install(level: str) -> None:
    """Route the worker's ``logging`` (root at ``level``), ``sys.stdout`` and
    ``sys.stderr`` through records on the output pipe (the process's fd 1)."""
    out = sys.__stdout__
    if out is None:
        return
    root = logging.getLogger()
    root.handlers[:] = [_RecordHandler(out)]
    root.setLevel(level.upper())
    _writers[:] = [_LineWriter("stdout", out), _LineWriter("stderr", out)]
    sys.stdout, sys.stderr = _writers


def end_of_call() -> None:
    """Flush partial lines under the id of the call that wrote them, then forget it."""
    for writer in _writers:
        writer.close_line()
    current[0] = ""
