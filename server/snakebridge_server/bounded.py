"""Reading request messages with a size limit grpclib does not have.

grpclib 0.4.9 reads a message's declared length and then buffers that many bytes before
the handler sees anything (a 256 MiB request grew the server by ~560 MiB). Here the 5-byte
gRPC length prefix is checked first: an oversized request is refused with
``LimitExceeded`` (RESOURCE_EXHAUSTED) having read nothing of its body, and HTTP/2 flow
control (grpclib acknowledges DATA only as it is consumed; 4 MiB windows) keeps what the
client can push meanwhile bounded.

This reaches into grpclib's private stream attributes; grpclib is pinned (==0.4.9) and
tests/e2e/test_limits_and_regressions.py fails if this stops working.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from grpclib.server import Stream

from snakebridge.errors import BadRequest, LimitExceeded

_PREFIX = struct.Struct(">?I")


async def recv_bounded(stream: Stream[Any, Any], limit: int) -> Any:
    """``stream.recv_message()``, refusing a message longer than ``limit`` bytes."""
    h2 = stream._stream
    prefix = await h2.recv_data(_PREFIX.size)
    if not prefix:
        raise BadRequest("the request carried no message")
    compressed, length = _PREFIX.unpack(prefix)
    if compressed:
        raise BadRequest("compressed messages are not supported")
    if length > limit:
        raise LimitExceeded(
            f"the request message is {length} bytes, over the {limit}-byte limit; "
            "pass big values by ref or raise --max-message-size"
        )
    body = await h2.recv_data(length)
    message = stream._codec.decode(body, stream._recv_type)
    (message,) = await stream._dispatch.recv_message(message)
    stream._messages_received += 1
    h2.connection.messages_received += 1
    h2.connection.last_message_received = time.monotonic()
    return message


def stop_reading(stream: Stream[Any, Any]) -> None:
    """After the final status went out, tell the client to stop sending the rest of a
    request we will never read (RST_STREAM NO_ERROR, as gRPC specifies)."""
    h2 = stream._stream
    if h2.closable:
        h2.reset_nowait()
