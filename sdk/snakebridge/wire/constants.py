"""Constants both sides of the wire agree on (see docs/wire.md).

Kept free of heavy imports: the worker process imports this module.
"""

from __future__ import annotations

from typing import Final

#: Bumped on any incompatible change to bridge.proto or the value codec.
PROTOCOL_VERSION: Final = 1

#: gRPC method paths of the Bridge service.
SERVICE: Final = "/snakebridge.v1.Bridge/"

#: Trailing-metadata key carrying the codec-encoded error details of a failed call.
ERROR_TRAILER: Final = "snakebridge-error-bin"

#: Request-metadata key of the call's correlation id (printable ASCII, at most 128).
CORRELATION_METADATA: Final = "snakebridge-correlation-id"

#: Default address the SDK connects to and the server listens on.
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 50051

# CallKind values (mirror of the proto enum, used on the hot path without betterproto).
KIND_FUNCTION: Final = 1
KIND_CLASS: Final = 2
KIND_METHOD: Final = 3
KIND_MODULE_ATTR: Final = 4
KIND_HELPER: Final = 5
KIND_GET_ATTR: Final = 6
KIND_SET_ATTR: Final = 7

KIND_NAMES: Final = {
    KIND_FUNCTION: "function",
    KIND_CLASS: "class",
    KIND_METHOD: "method",
    KIND_MODULE_ATTR: "module_attr",
    KIND_HELPER: "helper",
    KIND_GET_ATTR: "get_attr",
    KIND_SET_ATTR: "set_attr",
}

#: Placement of a call without refs (docs/wire.md): "" the least-loaded worker; "hint" the
#: session's last worker unless it is busy (or gone); "strict" that worker always
#: (``SessionLost`` once it died); "strict_fail_fast" that worker, ``PoolSaturated`` at
#: once when it is busy.
AFFINITY_HINT: Final = "hint"
AFFINITY_STRICT: Final = "strict"
AFFINITY_STRICT_FAIL_FAST: Final = "strict_fail_fast"
AFFINITIES: Final = ("", AFFINITY_HINT, AFFINITY_STRICT, AFFINITY_STRICT_FAIL_FAST)
