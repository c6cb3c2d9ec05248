"""The ``--metrics`` endpoint: a minimal HTTP/1.x server answering ``GET /metrics``.

It shares the gRPC server's event loop, so it does little and bounds everything: a
request's line and headers together are at most 8 KiB and must arrive within 5 s, at
most 16 connections are served at once (more are closed at once), one request per
connection. Rendering the text is synchronous and proportional to the number of label
sets, which is small and bounded (pools x kinds x error classes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from .metrics import CONTENT_TYPE

log = logging.getLogger("snakebridge.metrics")

MAX_HEAD: Final = 8 * 1024
HEAD_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 16


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def answer(request_head: bytes, render: Callable[[], str]) -> bytes:
    """The response to one request head (request line + headers). Pure."""
    line = request_head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1]
    path = target.split(b"?", 1)[0]
    if path != b"/metrics":
        return _response("404 Not Found", b"not found; try /metrics\n")
    if method != b"GET":
        return _response("405 Method Not Allowed", b"only GET\n")
    return _response("200 OK", render().encode("utf-8"), CONTENT_TYPE)


class MetricsServer:
    """Serves ``render()`` at ``/metrics``. ``start`` binds; ``close`` stops and waits
    for the connections in progress."""

    def __init__(self, host: str, port: int, render: Callable[[], str]) -> None:
        self.host = host
        self.port = port
        self._render = render
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """``HOST:PORT`` actually bound (the port the kernel chose for port 0)."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._conns.add(task)
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(answer(head, self._render))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # too slow, cut short or too long: drop the connection
        except ConnectionError:
            pass
        except Exception:  # a bug in rendering must not take the server down
            log.exception("metrics request failed")
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
