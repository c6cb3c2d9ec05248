"""gRPC server reflection, so that ``grpcurl list`` and ``describe`` work.

grpclib's ``ServerReflection`` answers from protobuf's default descriptor pool, but the
project's stubs are betterproto, which registers nothing there. ``bridge_pb2`` (generated
by ``make proto`` beside the betterproto stubs, checked by ``make proto-check``) registers
``snakebridge/v1/bridge.proto``; grpclib's health service registers ``grpc.health.v1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpclib.reflection.service import ServerReflection


def with_reflection(services: Sequence[Any]) -> list[Any]:
    """``services`` plus the reflection services (v1 and v1alpha) that describe them."""
    from snakebridge.wire.pb import load_descriptors

    load_descriptors()

    return list(ServerReflection.extend(services))
