"""One write per loop iteration on each gRPC connection.

grpclib writes every HTTP/2 frame batch as soon as h2 produces it: a unary reply is three
writes (headers, data, trailers), and each is a syscall. Profiling the server at 64 calls
in flight put about a tenth of its CPU in those writes. ``CoalescingTransport`` collects
the small writes of one loop iteration and sends them together; large writes (bulk data)
go out at once, after whatever was collected, so nothing is reordered or copied twice.

The worker channels (``supervisor.handle``) write through one too. For gRPC it wraps the
transport grpclib's ``H2Protocol`` is given (``Server._protocol_factory`` is
grpclib-private: grpclib is pinned, and the e2e tests cover every path through here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from grpclib.protocol import H2Protocol

_DIRECT: Final = 64 * 1024  # writes this big are not worth collecting


class CoalescingTransport:
    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        if len(data) >= _DIRECT:
            self.flush()
            self._transport.write(data)
            return
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, is_closing, pause_reading...
        return getattr(self._transport, name)


def coalescing(factory: Callable[[], H2Protocol]) -> Callable[[], H2Protocol]:
    """Wrap a protocol factory so each protocol writes through a ``CoalescingTransport``."""

    def make() -> H2Protocol:
        protocol = factory()
        connection_made = protocol.connection_made

        def wrapped(transport: asyncio.BaseTransport) -> None:
            loop = asyncio.get_running_loop()
            connection_made(CoalescingTransport(transport, loop))  # type: ignore[arg-type]

        protocol.connection_made = wrapped  # type: ignore[method-assign]
        return protocol

    return make
