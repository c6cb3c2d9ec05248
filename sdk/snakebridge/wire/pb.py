"""The betterproto messages of ``protos/snakebridge/v1/bridge.proto`` (generated into
``snakebridge._generated`` by ``make proto``), for the server and tools.

Off the hot path: ``Call`` and ``Stream`` use the hand-encoded ``messages`` instead, since
betterproto 2.0.0b7 spends ~56 µs constructing, ~81 µs encoding and ~129 µs decoding a
CallRequest on this machine class (see ``messages``).
"""

from __future__ import annotations

from .._generated.snakebridge import v1

__all__ = ["load_descriptors", "v1"]


def load_descriptors() -> None:
    """Register bridge.proto's descriptors in protobuf's default pool (what server
    reflection serves); the protobuf module is imported only when this is called."""
    from .._generated.snakebridge.v1 import bridge_pb2  # noqa: F401
