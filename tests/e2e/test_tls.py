"""TLS and mTLS (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``) through the SDK.

A throwaway CA (``trustme``) signs a server certificate for 127.0.0.1 and localhost and a
client certificate; nothing leaves loopback.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

import snakebridge
from snakebridge import errors

from .conftest import run_bridge_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


class Pki:
    """A CA, a server certificate and a client certificate, as PEM files in ``root``."""

    def __init__(self, root: Path) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("client@example.test")
        self.server_cert = root / "server.pem"
        self.server_key = root / "server.key"
        self.client_cert = root / "client.pem"
        self.ca_cert = root / "ca.pem"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        for blob in server.cert_chain_pems[1:]:
            blob.write_to_path(str(self.server_cert), append=True)
        server.private_key_pem.write_to_path(str(self.server_key))
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client_cert))
        self.ca.cert_pem.write_to_path(str(self.ca_cert))

    def server_args(self, *, mtls: bool = False) -> list[str]:
        args = ["--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key)]
        return [*args, "--tls-client-ca", str(self.ca_cert)] if mtls else args

    def client_context(self, *, with_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        if with_cert:
            ctx.load_cert_chain(str(self.client_cert))
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


async def test_calls_succeed_over_tls(make_server: Any, pki: Pki) -> None:
    srv = make_server("--workers", "1", *pki.server_args())
    async with snakebridge.Client(srv.address, ssl=pki.client_context()) as client:
        assert await client.call("math", "sqrt", [16]) == 4.0
        assert [x async for x in client.stream("builtins", "range", [3])] == [0, 1, 2]


async def test_health_answers_over_tls(make_server: Any, pki: Pki) -> None:
    srv = make_server("--workers", "1", *pki.server_args())
    host, port = srv.address.rsplit(":", 1)
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2"])
    channel = Channel(host, int(port), ssl=ctx)
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(service=""))
    finally:
        channel.close()
    assert reply.status == HealthCheckResponse.SERVING


async def test_plaintext_client_fails_clearly_against_a_tls_server(
    make_server: Any, pki: Pki
) -> None:
    srv = make_server("--workers", "1", *pki.server_args())
    with pytest.raises(errors.ConnectionFailed, match="TLS"):
        async with snakebridge.Client(srv.address) as client:
            await client.call("math", "sqrt", [16])


async def test_tls_client_rejects_a_server_its_ca_did_not_sign(
    make_server: Any, pki: Pki, tmp_path: Path
) -> None:
    srv = make_server("--workers", "1", *pki.server_args())
    other = trustme.CA()
    ctx = ssl.create_default_context()
    other.configure_trust(ctx)
    with pytest.raises(errors.ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
        async with snakebridge.Client(srv.address, ssl=ctx) as client:
            await client.call("math", "sqrt", [16])


async def test_mtls_needs_a_client_certificate_from_the_ca(make_server: Any, pki: Pki) -> None:
    srv = make_server("--workers", "1", *pki.server_args(mtls=True))
    with pytest.raises(errors.ConnectionFailed):
        async with snakebridge.Client(srv.address, ssl=pki.client_context()) as client:
            await client.call("math", "sqrt", [16])
    # A certificate from another CA is refused too.
    stranger = trustme.CA().issue_cert("client@example.test")
    ctx = pki.client_context()
    stranger.configure_cert(ctx)
    with pytest.raises(errors.ConnectionFailed):
        async with snakebridge.Client(srv.address, ssl=ctx) as client:
            await client.call("math", "sqrt", [16])
    async with snakebridge.Client(srv.address, ssl=pki.client_context(with_cert=True)) as client:
        assert await client.call("math", "sqrt", [16]) == 4.0


def test_tls_lets_a_non_loopback_address_start(pki: Pki) -> None:
    """A non-loopback --listen needs a token or TLS: with TLS the config is valid (``check``
    validates it and starts the pool, without binding the address)."""
    done = run_bridge_server("check", "--workers", "1", "--listen", "0.0.0.0:0", *pki.server_args())
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("make_args", "needle"),
    [
        (lambda k: ["--tls-cert", str(k.server_cert)], "invalid config tls_key: is required"),
        (lambda k: ["--tls-key", str(k.server_key)], "invalid config tls_cert: is required"),
        (
            lambda k: ["--tls-client-ca", str(k.ca_cert)],
            "invalid config tls_client_ca: needs tls_cert",
        ),
        (
            lambda k: ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", str(k.server_key)],
            "invalid config tls_cert: cannot read '/nonexistent/cert.pem'",
        ),
        (
            lambda k: ["--tls-cert", str(k.ca_cert), "--tls-key", str(k.server_key)],
            "invalid config tls_cert: cannot load",
        ),
        (
            lambda k: [*k.server_args(), "--tls-client-ca", str(k.server_key)],
            "invalid config tls_client_ca: cannot load",
        ),
        (lambda k: ["--tls-cert", ""], "invalid config tls_cert: must not be empty"),
    ],
)
def test_broken_tls_settings_refuse_to_start(pki: Pki, make_args: Any, needle: str) -> None:
    done = run_bridge_server("--workers", "1", *make_args(pki))
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
