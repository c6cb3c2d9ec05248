"""A grpcio (gRPC C-core) client against a real bridge-server: built from protos/ (the
committed ``bridge_pb2``), no snakebridge SDK on the call path. It calls ``Call``,
``Describe`` and ``grpc.health.v1.Health/Check``, reads the schema by server reflection
(what ``grpcurl list`` / ``describe`` do; Debian has no grpcurl package), and does the same
over TLS, where C-core insists on ALPN ``h2``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from snakebridge._generated.snakebridge.v1 import bridge_pb2 as _bridge_pb2
from snakebridge.wire import codec
from snakebridge.wire.constants import PROTOCOL_VERSION

from .conftest import ServerProcess

# protoc-generated and untyped: its message classes are made at import time.
bridge_pb2: Any = _bridge_pb2

pytestmark = [pytest.mark.e2e]

BRIDGE = "/snakebridge.v1.Bridge/"


def bridge_call(channel: grpc.Channel, method: str, reply_type: Any) -> Any:
    return channel.unary_unary(
        BRIDGE + method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=reply_type.FromString,
    )


def sqrt_request(value: float) -> Any:
    return bridge_pb2.CallRequest(
        protocol_version=PROTOCOL_VERSION,
        kind=bridge_pb2.CALL_KIND_FUNCTION,
        module="math",
        name="sqrt",
        session_id=uuid.uuid4().hex,
        args=codec.encode([[value], {}]),  # the SDK's encoding: [args, kwargs]
    )


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def test_grpcio_calls_math_sqrt(channel: grpc.Channel) -> None:
    reply = bridge_call(channel, "Call", bridge_pb2.CallReply)(sqrt_request(16), timeout=30)
    assert codec.decode(reply.result) == 4.0


def test_grpcio_describes_the_server(channel: grpc.Channel) -> None:
    describe = bridge_call(channel, "Describe", bridge_pb2.DescribeReply)
    reply = describe(bridge_pb2.DescribeRequest(protocol_version=PROTOCOL_VERSION), timeout=30)
    assert reply.protocol_version == PROTOCOL_VERSION
    assert [pool.name for pool in reply.pools] == ["default"]
    assert len(reply.pools[0].workers) == 2  # the shared server's --workers 2
    assert all(w.pid > 0 for w in reply.pools[0].workers)


def test_grpcio_health_check(channel: grpc.Channel) -> None:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=HealthCheckResponse.FromString,
    )
    assert check(HealthCheckRequest(service=""), timeout=30).status == HealthCheckResponse.SERVING
    assert (
        check(HealthCheckRequest(service="snakebridge.pool.default"), timeout=30).status
        == HealthCheckResponse.SERVING
    )


def test_reflection_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"snakebridge.v1.Bridge", "grpc.health.v1.Health"} <= services
    pool = DescriptorPool(database)
    bridge = pool.FindServiceByName("snakebridge.v1.Bridge")
    assert {m.name for m in bridge.methods} >= {"Call", "Describe", "Stream", "StreamNext"}
    assert bridge.methods_by_name["Stream"].output_type.full_name == "snakebridge.v1.StreamBatch"
    call_request = pool.FindMessageTypeByName("snakebridge.v1.CallRequest")
    assert call_request.fields_by_name["args"].number == 7
    health = pool.FindServiceByName("grpc.health.v1.Health")
    assert "Check" in health.methods_by_name


def test_grpcio_over_mtls(make_server: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client@example.test")
    paths = {name: tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem")}
    server_cert.cert_chain_pems[0].write_to_path(str(paths["cert.pem"]))
    server_cert.private_key_pem.write_to_path(str(paths["key.pem"]))
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    srv = make_server(
        "--workers", "1",
        "--tls-cert", str(paths["cert.pem"]),
        "--tls-key", str(paths["key.pem"]),
        "--tls-client-ca", str(paths["ca.pem"]),
    )  # fmt: skip
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client_cert.private_key_pem.bytes(),
        certificate_chain=client_cert.cert_chain_pems[0].bytes(),
    )
    with grpc.secure_channel(srv.address, credentials) as ch:
        reply = bridge_call(ch, "Call", bridge_pb2.CallReply)(sqrt_request(81), timeout=30)
    assert codec.decode(reply.result) == 9.0
    # Without the client certificate the handshake fails: UNAVAILABLE.
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    with grpc.secure_channel(srv.address, no_cert) as ch, pytest.raises(grpc.RpcError) as err:
        bridge_call(ch, "Call", bridge_pb2.CallReply)(sqrt_request(81), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
