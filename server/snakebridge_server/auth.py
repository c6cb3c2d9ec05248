"""Authentication for every RPC but health checks, and who the caller is (its tenant).

Runs in the server process.

The token file (``--token-file``) holds either one token (the old format: the whole file,
surrounding whitespace removed; its tenant is ``default``) or one ``NAME TOKEN`` line per
tenant (``#`` starts a comment line). Clients send ``authorization: Bearer <token>``
metadata (``snakebridge.Client(token=...)``); the token names the tenant. Every known
token is compared, constant-time, whichever matches. A request without a known token
ends with UNAUTHENTICATED before its handler runs.

With mTLS (``--tls-client-ca``) and no token file, a client certificate names the tenant:
its subject's common name, else its first subjectAltName. Without any authentication
every client is one tenant, ``""``.

``Identities.tenant_of`` is the pure decision; ``TokenAuth`` the grpclib event hook.
"""

from __future__ import annotations

import hmac
import os
import re
import stat
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from grpclib.const import Status
from grpclib.events import RecvRequest
from grpclib.exceptions import GRPCError

from .config import ConfigError

UNAUTHENTICATED_OK: Final = ("/grpc.health.v1.Health/",)  # probes carry no secrets
DEFAULT_TENANT: Final = "default"  # the tenant of a single-token file
ANONYMOUS: Final = ""  # the one tenant of a server without authentication
MAX_TENANTS: Final = 10_000
TENANT_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

#: The tenant of the RPC this task serves (set by the service for each RPC).
TENANT: ContextVar[str] = ContextVar("snakebridge_tenant", default=ANONYMOUS)


def _bad(path: str, reason: str) -> ConfigError:
    return ConfigError(f"invalid config token_file: {path!r}: {reason}")


def parse_tokens(text: bytes, path: str = "token_file") -> dict[bytes, str]:
    """Token -> tenant, from a token file's content. One word: the old single-token
    format (tenant ``default``); otherwise ``NAME TOKEN`` lines."""
    words = text.split()
    if not words:
        raise _bad(path, "is empty")
    if len(words) == 1:
        return {words[0]: DEFAULT_TENANT}
    tokens: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise _bad(path, f"line {number} is not 'NAME TOKEN'")
        name = parts[0].decode("ascii", "replace")
        if not TENANT_NAME_RE.match(name):
            raise _bad(
                path, f"line {number}: tenant name {name!r} must match {TENANT_NAME_RE.pattern}"
            )
        if name in tokens.values():
            raise _bad(path, f"line {number}: tenant {name!r} is named twice")
        if parts[1] in tokens:
            raise _bad(path, f"line {number}: two tenants have the same token")
        tokens[parts[1]] = name
    if not tokens:
        raise _bad(path, "names no tenant")
    if len(tokens) > MAX_TENANTS:
        raise _bad(path, f"more than {MAX_TENANTS} tenants")
    return tokens


def read_tokens(path: str) -> dict[bytes, str]:
    """The tokens in ``path`` (see ``parse_tokens``); ``ConfigError`` if absent, empty,
    malformed, or readable by other users."""
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as f:
            text = f.read(1 << 22)
    except OSError as exc:
        raise ConfigError(f"invalid config token_file: cannot read {path!r}: {exc}") from None
    if not text.strip():
        raise ConfigError(f"invalid config token_file: {path!r} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"invalid config token_file: {path!r} is accessible to other users; chmod 600 it"
        )
    return parse_tokens(text, path)


def read_token(path: str) -> bytes:
    """The single token of an old-format file, or the first of a named-token file
    (kept for callers that only check the file)."""
    return next(iter(read_tokens(path)))


def cert_tenant(cert: Mapping[str, Any] | None) -> str | None:
    """The tenant a verified client certificate (``ssl.getpeercert()``) names: the
    subject's commonName, else the first subjectAltName value; None without either."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)[:256]
    for _kind, value in cert.get("subjectAltName", ()):
        if value:
            return str(value)[:256]
    return None


@dataclass(frozen=True, slots=True)
class Identities:
    """How the server tells tenants apart. Pure: ``tenant_of`` takes what the request
    carries and returns the tenant, or None for a caller that must be refused."""

    tokens: Mapping[bytes, str] | None = None  # None: no token file
    certificates: bool = False  # mTLS: a verified client certificate names the tenant

    @property
    def authenticated(self) -> bool:
        """Whether every caller that reaches a handler has proved who it is."""
        return self.tokens is not None or self.certificates

    def tenant_of(
        self, authorization: str | bytes | None, cert: Mapping[str, Any] | None
    ) -> str | None:
        if self.tokens is not None:
            given = authorization.encode() if isinstance(authorization, str) else authorization
            given = given or b""
            found: str | None = None
            for token, tenant in self.tokens.items():  # every one, whichever matches
                if hmac.compare_digest(given, b"Bearer " + token):
                    found = tenant
            return found
        if self.certificates:
            return cert_tenant(cert) or ANONYMOUS
        return ANONYMOUS


class TokenAuth:
    """The grpclib ``RecvRequest`` hook: refuses a request without a known token."""

    def __init__(self, identities: Identities) -> None:
        self._identities = identities

    async def __call__(self, event: RecvRequest) -> None:
        if event.method_name.startswith(UNAUTHENTICATED_OK):
            return
        given = event.metadata.get("authorization", "")
        if self._identities.tenant_of(given, None) is None:
            raise GRPCError(Status.UNAUTHENTICATED, "missing or wrong bearer token")
