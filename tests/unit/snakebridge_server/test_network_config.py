"""Network settings: TLS pairing rules, connection limits, keepalive mapping (no sockets)."""

from __future__ import annotations

import pytest

from snakebridge_server.cli import build_config
from snakebridge_server.config import ConfigError, ServerConfig
from snakebridge_server.connections import ConnectionLimits, grpc_configuration


def test_network_defaults() -> None:
    config = ServerConfig()
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == (None, None, None)
    assert ConnectionLimits.from_config(config) == ConnectionLimits(
        max_connections=4096, max_streams=100, idle_timeout=300.0, handshake_timeout=10.0
    )
    assert (config.keepalive_time, config.keepalive_timeout) == (7200.0, 20.0)


def test_flags_and_variables_set_the_network_settings() -> None:
    config = build_config(
        [
            "--tls-cert", "/c.pem", "--tls-key", "/k.pem", "--tls-client-ca", "/ca.pem",
            "--max-connections", "10", "--max-streams-per-connection", "5",
            "--idle-timeout", "0", "--handshake-timeout", "2.5",
        ],
        {"SNAKEBRIDGE_KEEPALIVE_TIME": "30", "SNAKEBRIDGE_KEEPALIVE_TIMEOUT": "5"},
    )  # fmt: skip
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == (
        "/c.pem",
        "/k.pem",
        "/ca.pem",
    )
    assert (config.max_connections, config.max_streams_per_connection) == (10, 5)
    assert (config.idle_timeout, config.handshake_timeout) == (0.0, 2.5)
    grpc = grpc_configuration(config)
    assert (grpc._keepalive_time, grpc._keepalive_timeout) == (30.0, 5.0)
    assert grpc._http2_min_sent_ping_interval_without_data == 30.0


def test_keepalive_time_zero_turns_server_pings_off() -> None:
    assert grpc_configuration(ServerConfig(keepalive_time=0))._keepalive_time is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tls_cert": "/c.pem"}, "tls_key: is required with tls_cert"),
        ({"tls_key": "/k.pem"}, "tls_cert: is required with tls_key"),
        ({"tls_client_ca": "/ca.pem"}, "tls_client_ca: needs tls_cert"),
        ({"tls_cert": "", "tls_key": "/k.pem"}, "tls_cert: must not be empty"),
        (
            {"tls_cert": "/c.pem", "tls_key": "/k.pem", "uds": "/run/b.sock"},
            "tls_cert: TLS is for TCP listeners",
        ),
        ({"max_connections": 0}, "max_connections: must be >= 1"),
        ({"max_streams_per_connection": 0}, "max_streams_per_connection: must be in"),
        ({"idle_timeout": -1.0}, "idle_timeout: must be a finite number >= 0"),
        ({"keepalive_time": float("nan")}, "keepalive_time: must be a finite number >= 0"),
        ({"handshake_timeout": 0.0}, "handshake_timeout: must be a finite number > 0"),
        ({"keepalive_timeout": float("inf")}, "keepalive_timeout: must be a finite number > 0"),
    ],
)
def test_bad_network_settings_name_their_key(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**kwargs)  # type: ignore[arg-type]


def test_a_non_loopback_address_needs_a_token_tls_or_insecure() -> None:
    with pytest.raises(ConfigError, match="--token-file or --tls-cert, or --insecure"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", tls_cert="/c.pem", tls_key="/k.pem").tls_cert
    assert ServerConfig(host="0.0.0.0", token_file="/t").token_file
    assert ServerConfig(host="0.0.0.0", insecure=True).insecure
