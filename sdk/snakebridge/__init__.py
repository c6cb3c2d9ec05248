"""snakebridge: call Python in the worker processes of a ``bridge-server``.

::

    async with snakebridge.Client("127.0.0.1:50051") as client:
        await client.call("math", "sqrt", [16])   # 4.0

    with snakebridge.SyncClient("127.0.0.1:50051") as client:   # blocking, for scripts
        client.call("math", "sqrt", [16])         # 4.0

Public names are imported lazily so that the worker process, which only needs the value
codec, does not pay for grpclib and betterproto at start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one declaration: pyproject.toml reads it (hatch)

__all__ = [
    "BridgeError",
    "CallTimeout",
    "Client",
    "HelperInfo",
    "ModuleProxy",
    "NoCurrentClient",
    "Ref",
    "RefNotFound",
    "RemoteEnum",
    "RemoteError",
    "RemoteRecord",
    "Session",
    "SessionLost",
    "StreamRef",
    "SyncClient",
    "WorkerCrashed",
    "__version__",
    "correlation_id",
    "errors",
    "register_type",
    "remote_type",
    "unregister_type",
    "use",
]

if TYPE_CHECKING:
    from . import errors
    from ._client import Client, HelperInfo, ModuleProxy, Session
    from ._correlation import correlation_id
    from ._refs import Ref, StreamRef
    from ._sync import SyncClient
    from .bindings import NoCurrentClient, use
    from .errors import (
        BridgeError,
        CallTimeout,
        RefNotFound,
        RemoteError,
        SessionLost,
        WorkerCrashed,
        remote_type,
    )
    from .wire.values import RemoteEnum, RemoteRecord, register_type, unregister_type

_LAZY = {
    "Client": "._client",
    "HelperInfo": "._client",
    "ModuleProxy": "._client",
    "Session": "._client",
    "Ref": "._refs",
    "StreamRef": "._refs",
    "SyncClient": "._sync",
    "BridgeError": ".errors",
    "CallTimeout": ".errors",
    "RefNotFound": ".errors",
    "RemoteError": ".errors",
    "SessionLost": ".errors",
    "WorkerCrashed": ".errors",
    "correlation_id": "._correlation",
    "NoCurrentClient": ".bindings",
    "use": ".bindings",
    "RemoteEnum": ".wire.values",
    "RemoteRecord": ".wire.values",
    "register_type": ".wire.values",
    "unregister_type": ".wire.values",
    "remote_type": ".errors",
}


def __getattr__(name: str) -> Any:
    from importlib import import_module

    if name == "errors":
        return import_module(".errors", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'snakebridge' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
