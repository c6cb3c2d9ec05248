"""Bounds grpclib lacks on what one request may cost, on every method. Runs in the server.

Message size. grpclib 0.4.9 reads a message's declared length and then buffers that many
bytes before the handler sees anything (a 256 MiB request grew the server by ~560 MiB;
grpc.health.v1 ``Check``, which needs no token, did the same). Here the 5-byte gRPC length
prefix is checked first: an oversized request is refused with ``LimitExceeded``
(RESOURCE_EXHAUSTED) having read nothing of its body, and HTTP/2 flow control (grpclib
acknowledges DATA only as it is consumed; 4 MiB windows) keeps what the client can push
meanwhile bounded. ``RequestGuard`` makes every handler's ``recv_message`` do this: the
Bridge methods get ``--max-message-size`` plus their envelope, every other method (health,
reflection: a service name, a symbol) ``SMALL_MESSAGE``.

Slow requests. A health request needs no token, and grpclib waits for its message as long
as the client likes: a stream whose message never comes kept its connection from ever
being idle. A request message of a method that needs no token must arrive within
``read_timeout`` (``--handshake-timeout``), else the call ends with DEADLINE_EXCEEDED.

Health ``Watch`` streams. grpclib's never end, so a connection holding one never meets the
idle timeout, and without a token anyone may open them. ``RequestGuard`` counts them:
more than ``max_watches`` on the server or ``WATCHES_PER_CONNECTION`` on one connection are
refused with RESOURCE_EXHAUSTED, and each one ends (status OK; gRPC health clients open a
new one) after ``watch_duration`` seconds, the idle timeout, so the connection can be idle.

The grpclib mechanics (reading a message prefix first, a stream's connection) are in
``grpc_server``; tests/e2e/test_limits_and_regressions.py and
tests/e2e/test_unauthenticated_limits.py fail if they stop working.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from typing import Any, Final

from grpclib.const import Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from snakebridge.errors import BridgeError

from .grpc_server import connection_of, read_message, read_through, stop_reading

log = logging.getLogger("snakebridge.server")

#: Largest request message of a method that is not the Bridge's (health, reflection).
SMALL_MESSAGE: Final = 64 * 1024
#: Concurrent health Watch streams one connection may hold.
WATCHES_PER_CONNECTION: Final = 4
WATCH_METHOD: Final = "/grpc.health.v1.Health/Watch"
_REFUSAL_LOG_INTERVAL: Final = 1.0  # at most one "refused Watch" warning a second


class _Mapped:
    """A service as grpclib's ``Server`` sees it: its ``__mapping__()``."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: dict[str, Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, Handler]:
        return self._mapping


class RequestGuard:
    """Wraps every handler of the server with the bounds above. One per server."""

    def __init__(
        self,
        *,
        bridge_prefix: str,
        bridge_limit: int,
        open_prefixes: tuple[str, ...],  # methods that need no token
        read_timeout: float,
        max_watches: int,
        watch_duration: float,  # 0: no limit
        bridge_advice: str = "pass big values by ref or raise --max-message-size",
    ) -> None:
        """``bridge_advice`` ends the refusal of a bridge request over ``bridge_limit``."""
        self.bridge_prefix = bridge_prefix
        self.bridge_limit = bridge_limit
        self.bridge_advice = bridge_advice
        self.open_prefixes = open_prefixes
        self.read_timeout = read_timeout
        self.max_watches = max_watches
        self.watch_duration = watch_duration
        self.watching = 0
        self.watches_refused = 0
        self._per_connection: dict[object, int] = {}  # connection -> its Watch streams
        self._refused_unlogged = 0
        self._last_refusal_log = -math.inf

    def __repr__(self) -> str:
        return f"<RequestGuard watching={self.watching} refused={self.watches_refused}>"

    def services(self, services: Iterable[Any]) -> list[Any]:
        """``services`` with every handler wrapped, for grpclib's ``Server``."""
        return [_Mapped(self.mapping(service.__mapping__())) for service in services]

    def mapping(self, mapping: dict[str, Handler]) -> dict[str, Handler]:
        return {path: self._wrap(path, handler) for path, handler in mapping.items()}

    def limit_of(self, path: str) -> int:
        return self.bridge_limit if path.startswith(self.bridge_prefix) else SMALL_MESSAGE

    def _wrap(self, path: str, handler: Handler) -> Handler:
        limit = self.limit_of(path)
        advice = self.bridge_advice if path.startswith(self.bridge_prefix) else "send less"
        func = handler.func
        watch = path == WATCH_METHOD
        timeout = self.read_timeout if path.startswith(self.open_prefixes) else None

        async def recv(stream: Stream[Any, Any]) -> Any:
            if timeout is None:
                return await read_message(stream, limit, advice)
            try:
                async with asyncio.timeout(timeout):
                    return await read_message(stream, limit, advice)
            except TimeoutError:
                raise GRPCError(
                    Status.DEADLINE_EXCEEDED,
                    f"the request message did not arrive within {timeout:g}s",
                ) from None

        async def bounded(stream: Stream[Any, Any]) -> None:
            # grpclib's handlers (health, reflection) read through this, and iterating a
            # stream calls it too.
            read_through(stream, lambda: recv(stream))
            try:
                if watch:
                    await self._watch(stream, func)
                else:
                    await func(stream)
            except BridgeError as exc:  # from read_message: the Bridge's handlers map their own
                await stream.send_trailing_metadata(
                    status=Status(int(exc.grpc_status)), status_message=str(exc)
                )
                stop_reading(stream)

        bounded.__name__ = getattr(func, "__name__", "handler")
        return Handler(bounded, handler.cardinality, handler.request_type, handler.reply_type)

    async def _watch(self, stream: Stream[Any, Any], func: Any) -> None:
        connection = connection_of(stream)
        held = self._per_connection.get(connection, 0)
        if self.watching >= self.max_watches or held >= WATCHES_PER_CONNECTION:
            self._refused(held)
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"too many health Watch streams (at most {self.max_watches} on the server, "
                f"{WATCHES_PER_CONNECTION} per connection); use Check",
            )
        self.watching += 1
        self._per_connection[connection] = held + 1
        try:
            if not self.watch_duration:
                await func(stream)
                return
            try:
                async with asyncio.timeout(self.watch_duration):
                    await func(stream)
            except TimeoutError:
                pass  # ends with OK: the client opens a new Watch if it still wants one
        finally:
            self.watching -= 1
            left = self._per_connection.pop(connection) - 1
            if left:
                self._per_connection[connection] = left

    def _refused(self, held: int) -> None:
        self.watches_refused += 1
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d health Watch stream(s): %d open (at most %d), %d on the connection",
                self._refused_unlogged,
                self.watching,
                self.max_watches,
                held,
            )
            self._refused_unlogged = 0
            self._last_refusal_log = now
