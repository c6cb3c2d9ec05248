"""Bearer-token authentication for every RPC but health checks.

The token comes from ``--token-file``; clients send ``authorization: Bearer <token>``
metadata (``snakebridge.Client(token=...)``). The comparison is constant-time. A request
without the right token ends with UNAUTHENTICATED before its handler runs.
"""

from __future__ import annotations

import hmac
import os
import stat
from typing import Final

from grpclib.const import Status
from grpclib.events import RecvRequest
from grpclib.exceptions import GRPCError

from .config import ConfigError

UNAUTHENTICATED_OK: Final = ("/grpc.health.v1.Health/",)  # probes carry no secrets


def read_token(path: str) -> bytes:
    """The token in ``path`` (surrounding whitespace removed); ``ConfigError`` if absent,
    empty, or readable by other users."""
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"invalid config token_file: cannot read {path!r}: {exc}") from None
    if not token:
        raise ConfigError(f"invalid config token_file: {path!r} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"invalid config token_file: {path!r} is accessible to other users; chmod 600 it"
        )
    return token


class TokenAuth:
    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token

    async def __call__(self, event: RecvRequest) -> None:
        if event.method_name.startswith(UNAUTHENTICATED_OK):
            return
        given = event.metadata.get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if not hmac.compare_digest(given_bytes, self._expected):
            raise GRPCError(Status.UNAUTHENTICATED, "missing or wrong bearer token")
