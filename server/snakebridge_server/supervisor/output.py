"""A worker's stdout and stderr (one pipe), logged line by line: the output pump.

Runs in the server process, one per worker. Memory stays bounded whatever the worker
writes: reads are 64 KiB at most, a line is cut at ``logs.MAX_OUTPUT_LINE`` bytes, and a
worker that outruns ``rate`` lines per second has the excess counted, not logged (the
pipe then fills and blocks the worker's writes, not the server). The last few lines are
kept for start-failure reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ..logs import LineLimiter, LineSplitter, parse_output_line
from ..refids import WorkerKey

log = logging.getLogger("snakebridge.worker")

_READ = 64 * 1024
_KEPT = 12  # lines kept for start-failure reports


class OutputPump:
    """Logs one worker's output with its id and pool; ``done`` is set at end of file."""

    def __init__(self, key: WorkerKey, rate: int) -> None:
        self.key = key
        self.rate = rate
        self.done = asyncio.Event()
        self._recent: deque[str] = deque(maxlen=_KEPT)
        self._drop_report: asyncio.TimerHandle | None = None  # "N lines not logged"

    def last_lines(self, count: int = 3) -> list[str]:
        """The last ``count`` non-blank lines the worker wrote (each cut at 512 chars)."""
        return [line for line in self._recent if line.strip()][-count:]

    async def run(self, stream: asyncio.StreamReader) -> None:
        """Read ``stream`` to its end, logging each line."""
        splitter = LineSplitter()
        loop = asyncio.get_running_loop()
        limiter = LineLimiter(self.rate, loop.time())
        try:
            while True:
                data = await stream.read(_READ)
                lines = splitter.feed(data) if data else splitter.flush()
                for line, cut in lines:
                    self._log(line, cut, limiter, loop.time())
                if limiter.dropped and self._drop_report is None:
                    # Said within a second even if the worker then falls silent.
                    self._drop_report = loop.call_later(1.0, self._report_dropped, limiter)
                if not data:
                    return
        finally:
            self._report_dropped(limiter)
            self.done.set()

    def _log(self, line: bytes, cut: int, limiter: LineLimiter, now: float) -> None:
        out = parse_output_line(line, cut)
        self._recent.append(out.text[:512])
        if not limiter.allow(now):
            return
        where = f"{out.stream} {out.logger}" if out.logger else out.stream
        log.log(
            out.level,
            "[worker %s %s] %s",
            self.key,
            where,
            out.text,
            extra={
                "worker": str(self.key),
                "pool": self.key.pool,
                "stream": out.stream,
                "correlation_id": out.correlation_id,
            },
        )

    def _report_dropped(self, limiter: LineLimiter) -> None:
        if self._drop_report is not None:
            self._drop_report.cancel()
            self._drop_report = None
        dropped = limiter.take_dropped()
        if dropped:
            log.warning(
                "[worker %s] %d output line(s) not logged: over %d lines/s",
                self.key,
                dropped,
                limiter.rate,
                extra={"worker": str(self.key), "pool": self.key.pool},
            )
