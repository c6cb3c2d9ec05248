"""Every error the SDK raises, as one tree.

::

    BridgeError                      base of everything below            (gRPC INTERNAL)
    ├── RemoteError                  the Python code raised              (UNKNOWN)
    │     └── Remote<Builtin>        also inherits the builtin, e.g. RemoteZeroDivisionError
    ├── BadRequest                   the request itself is malformed     (INVALID_ARGUMENT)
    ├── SerializationError           a value cannot be encoded/decoded   (INVALID_ARGUMENT)
    ├── RefNotFound                  the ref was released or never existed (NOT_FOUND)
    ├── HelperNotFound               no helper of that name is registered (NOT_FOUND)
    ├── SessionLost                  the worker holding the ref restarted (FAILED_PRECONDITION)
    ├── WorkerCrashed                the worker died during the call     (ABORTED)
    ├── CallTimeout                  the deadline passed (also TimeoutError) (DEADLINE_EXCEEDED)
    ├── CallCancelled                the call was cancelled              (CANCELLED)
    ├── PoolSaturated                the pool's queue is full            (RESOURCE_EXHAUSTED)
    ├── LimitExceeded                a session/ref cap was reached       (RESOURCE_EXHAUSTED)
    ├── PoolUnavailable              the pool cannot take calls now      (UNAVAILABLE)
    ├── PolicyError                  the sandbox policy refused the call (PERMISSION_DENIED)
    ├── ProtocolMismatch             the two sides speak other versions (FAILED_PRECONDITION)
    ├── ConnectionFailed             the server cannot be reached        (UNAVAILABLE)
    ├── ClientClosed                 this Client was closed, then used   (FAILED_PRECONDITION)
    └── Unauthenticated              missing or wrong token              (UNAUTHENTICATED)

Each class maps to exactly one gRPC status (``grpc_status``); the server sends the class
name in the ``snakebridge-error-bin`` trailer so the SDK raises the precise class.
``ClientClosed`` never travels: only the SDK raises it, before any RPC.
"""

from __future__ import annotations

import builtins
from enum import IntEnum
from typing import Any, ClassVar


class GrpcStatus(IntEnum):
    """The gRPC status codes (same numbers as ``grpclib.const.Status``); kept here so the
    worker process can import this module without grpclib."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


__all__ = [
    "BadRequest",
    "BridgeError",
    "CallCancelled",
    "CallTimeout",
    "ClientClosed",
    "ConnectionFailed",
    "GrpcStatus",
    "HelperNotFound",
    "LimitExceeded",
    "PolicyError",
    "PoolSaturated",
    "PoolUnavailable",
    "ProtocolMismatch",
    "RefNotFound",
    "RemoteError",
    "SerializationError",
    "SessionLost",
    "Unauthenticated",
    "WorkerCrashed",
    "error_class",
    "remote_error",
]


class BridgeError(Exception):
    """Base of every snakebridge error. Raised as-is for unexpected server failures.

    Catch this to handle any failure of a bridge call in one place. ``correlation_id``
    names the failed RPC in the server's and the worker's logs.
    """

    grpc_status: ClassVar[GrpcStatus] = GrpcStatus.INTERNAL
    #: The correlation id of the RPC that failed: the server's error trailer carries it
    #: (the one the caller sent, or the one the server made); "" when unknown.
    correlation_id: str = ""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RemoteError(BridgeError):
    """The Python code run in the worker raised an exception.

    ``type_name`` is the remote exception's qualified type (``"builtins.ValueError"``),
    ``message`` its ``str()``, ``traceback`` the formatted remote traceback. For builtin
    exception types the raised object is also an instance of that builtin, so
    ``except ZeroDivisionError:`` works. Fix the call or handle the exception.
    """

    grpc_status = GrpcStatus.UNKNOWN

    def __init__(self, message: str = "", *, type_name: str = "", traceback: str = "") -> None:
        BridgeError.__init__(self, message)
        self.type_name = type_name
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.type_name else self.message

    def __reduce__(self) -> Any:  # copy.copy() must rebuild the keyword-only fields
        return (
            type(self),
            (self.message,),
            {"type_name": self.type_name, "traceback": self.traceback},
        )


class BadRequest(BridgeError):
    """The request is malformed (empty module name, unknown kind, bad option value).

    The caller must fix the request; retrying it unchanged fails the same way.
    """

    grpc_status = GrpcStatus.INVALID_ARGUMENT


class SerializationError(BridgeError):
    """A value could not be encoded or decoded by the value codec.

    Raised client-side for arguments the codec cannot carry (they are not refs), and for
    payloads past the codec's limits (depth, element count, size). Pass a Ref instead, or
    send less data.
    """

    grpc_status = GrpcStatus.INVALID_ARGUMENT


class RefNotFound(BridgeError):
    """The ref was released (locally or on the server) or never existed.

    A released ``Ref`` fails with this without a round trip. Obtain a fresh ref.
    """

    grpc_status = GrpcStatus.NOT_FOUND


class HelperNotFound(BridgeError):
    """No helper of that name is exposed by the server: none is registered under it, or
    the operator's ``--helper-allow`` leaves it out.

    ``await client.helpers()`` lists the names a pool offers; the operator adds more with
    ``bridge-server --helpers`` (and ``--helper-allow``).
    """

    grpc_status = GrpcStatus.NOT_FOUND


class SessionLost(BridgeError):
    """The worker that held this ref (or session state) has restarted; the object is gone.

    Recreate the objects from scratch; the server never looks a stale ref up in a fresh
    worker.
    """

    grpc_status = GrpcStatus.FAILED_PRECONDITION


class WorkerCrashed(BridgeError):
    """The worker process died while running the call (segfault, kill, ``os._exit``).

    The worker is replaced; the call's effects are unknown. Retry only if it is
    idempotent (``call``/``call_helper`` take ``idempotent=True``: the server then
    retries once on another worker). Calls queued behind the crashed one never ran and
    are re-routed without an error.
    """

    grpc_status = GrpcStatus.ABORTED


class CallTimeout(BridgeError, TimeoutError):
    """The call did not finish before its deadline; the worker was told to stop it.

    Raise the timeout, make the call cheaper, or split it.
    """

    grpc_status = GrpcStatus.DEADLINE_EXCEEDED


class CallCancelled(BridgeError):
    """The call was cancelled before it finished (server shutdown or client cancel)."""

    grpc_status = GrpcStatus.CANCELLED


class PoolSaturated(BridgeError):
    """The pool's queue is full; the call was rejected without running. Back off and retry."""

    grpc_status = GrpcStatus.RESOURCE_EXHAUSTED


class LimitExceeded(BridgeError):
    """A server cap was reached: sessions, refs per session or in total, or the message
    size (arguments or a result over ``--max-message-size``).

    Release refs or sessions you no longer need; pass big values by ref.
    """

    grpc_status = GrpcStatus.RESOURCE_EXHAUSTED


class PoolUnavailable(BridgeError):
    """The pool cannot take calls: no pool of that name, it is shutting down, or it stopped
    restarting workers after a crash loop (until its cooldown has passed).

    (While a pool has no live worker otherwise, calls wait for a replacement within their
    timeout.)
    """

    grpc_status = GrpcStatus.UNAVAILABLE


class PolicyError(BridgeError):
    """The pool's sandbox policy refused the call before it ran: a private or dunder name
    (``__class__``, ``_x``), a denied module (``os``, ``subprocess``, ``builtins.eval``...),
    or, at level ``strict``, a module outside the allowlist.

    Ask the operator to allow it (``--sandbox-allow-modules``) or wrap it in a helper.
    """

    grpc_status = GrpcStatus.PERMISSION_DENIED


class ProtocolMismatch(BridgeError):
    """Client and server speak different protocol versions. Upgrade the older side."""

    grpc_status = GrpcStatus.FAILED_PRECONDITION


class ConnectionFailed(BridgeError):
    """The server could not be reached or the connection dropped. Check the address.

    Every transport failure under a call or a stream is raised as this, with the raw
    exception (socket, TLS, HTTP/2, grpclib) as ``__cause__``; ``Client.close()`` raises
    none. Whether the call ran is unknown.
    """

    grpc_status = GrpcStatus.UNAVAILABLE


class ClientClosed(BridgeError):
    """This ``Client`` was closed (``await client.close()``, or its ``async with`` block
    was left) and then used again.

    Raised by every RPC made through it afterwards, and by iterating a stream started on
    it, before anything is sent: a closed client never reconnects. The call did not run.
    Make a new ``Client`` (a ``Client`` that was never connected connects on first use).
    """

    grpc_status = GrpcStatus.FAILED_PRECONDITION


class Unauthenticated(BridgeError):
    """The server requires a token and this client sent none or a wrong one.

    Pass ``token=`` to ``snakebridge.Client`` (the content of the server's --token-file).
    """

    grpc_status = GrpcStatus.UNAUTHENTICATED


#: The classes an error trailer may name. ``ClientClosed`` is not one: only the SDK raises
#: it, so a server that sent it would be lying about the client's state.
_BY_NAME: dict[str, type[BridgeError]] = {
    cls.__name__: cls
    for cls in (
        BridgeError,
        RemoteError,
        BadRequest,
        SerializationError,
        RefNotFound,
        HelperNotFound,
        SessionLost,
        WorkerCrashed,
        CallTimeout,
        CallCancelled,
        PoolSaturated,
        LimitExceeded,
        PoolUnavailable,
        PolicyError,
        ProtocolMismatch,
        ConnectionFailed,
        Unauthenticated,
    )
}

_REMOTE_SUBCLASSES: dict[str, type[RemoteError]] = {}


def error_class(name: str) -> type[BridgeError]:
    """The error class called ``name``; ``BridgeError`` for names this SDK does not know."""
    return _BY_NAME.get(name, BridgeError)


def _remote_class(type_name: str) -> type[RemoteError]:
    cls = _REMOTE_SUBCLASSES.get(type_name)
    if cls is not None:
        return cls
    cls = RemoteError
    module, _, qualname = type_name.rpartition(".")
    if module == "builtins":
        builtin = getattr(builtins, qualname, None)
        # Only Exception subclasses: a remote KeyboardInterrupt must not look local. Nor
        # the iteration-protocol signals: a StopIteration raised out of a coroutine turns
        # into RuntimeError, and a StopAsyncIteration would end the caller's own loop.
        if (
            isinstance(builtin, type)
            and issubclass(builtin, Exception)
            and not issubclass(builtin, StopIteration | StopAsyncIteration)
        ):
            cls = type(f"Remote{qualname}", (RemoteError, builtin), {"__module__": __name__})
            _REMOTE_SUBCLASSES[type_name] = cls
    return cls


def remote_error(type_name: str, message: str, traceback: str = "") -> RemoteError:
    """Build the ``RemoteError`` (or builtin-inheriting subclass) for a remote exception.

    Some builtins refuse to be built this way: MemoryError's ``__new__`` rejects the
    subclass, UnicodeDecodeError's constructor wants its five arguments, ExceptionGroup
    its list. Those fall back to ``BaseException.__new__``, then to a plain RemoteError;
    an error reply must never fail to become an exception.
    """
    cls = _remote_class(type_name)
    for make in (cls.__new__, BaseException.__new__):
        try:
            err = make(cls)
            RemoteError.__init__(err, message, type_name=type_name, traceback=traceback)
        except TypeError:
            continue
        err.args = (message,)
        return err
    err = RemoteError.__new__(RemoteError)
    RemoteError.__init__(err, message, type_name=type_name, traceback=traceback)
    return err
