"""Every error the SDK raises, as one tree.

::

    BridgeError                      base of everything below            (gRPC INTERNAL)
    ├── RemoteError                  the Python code raised              (UNKNOWN)
    │     ├── Remote<Builtin>        also inherits the builtin, e.g. RemoteZeroDivisionError
    │     └── remote_type(name)      a class per remote type name, for ``except``
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
    "remote_type",
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

    ``remote_type`` is the remote exception's qualified type
    (``"json.decoder.JSONDecodeError"``; ``type_name`` is the same), ``remote_mro`` the
    qualified names of its classes, most derived first, ``message`` its ``str()`` (also
    ``str(err)``), ``traceback`` the formatted remote traceback, which is also attached as
    an exception note. The raised object is an instance of every builtin exception class
    the remote type derives from (``except ValueError:`` catches a remote
    ``JSONDecodeError``) and of every ``remote_type(name)`` class named in its mro. Fix
    the call or handle the exception.
    """

    grpc_status = GrpcStatus.UNKNOWN

    def __init__(
        self,
        message: str = "",
        *,
        type_name: str = "",
        traceback: str = "",
        mro: tuple[str, ...] = (),
    ) -> None:
        BridgeError.__init__(self, message)
        self.type_name = type_name
        self.traceback = traceback
        self.remote_mro: tuple[str, ...] = tuple(mro) or ((type_name,) if type_name else ())
        #: The bounded description it was built from (``wire.remote``), which a server
        #: forwards to its client; None when built from a type name and message alone.
        self.detail: dict[str, Any] | None = None

    @property
    def remote_type(self) -> str:
        """The remote exception's qualified type name, e.g. ``"builtins.ValueError"``."""
        return self.type_name

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, remote_type={self.type_name!r})"

    def __reduce__(self) -> Any:  # copy.copy() must rebuild the keyword-only fields
        return (
            _rebuild,
            (type(self), self.message, self.type_name, self.traceback, self.remote_mro),
            dict(vars(self)),
        )


def _rebuild(
    cls: type[RemoteError], message: str, type_name: str, traceback: str, mro: tuple[str, ...]
) -> RemoteError:
    return _instance(cls, message, type_name, traceback, mro)


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

#: ``Remote<Builtin>`` classes by builtin name; one class per other remote type name,
#: made when ``remote_type`` asks for it or an error of that type (or a subclass) arrives;
#: the classes errors are built with, by remote mro. The last two are bounded, since a
#: server can send any names: past ``_MAX_TYPES`` names, only ``remote_type`` adds more.
_REMOTE_BUILTINS: dict[str, type[RemoteError]] = {}
_TYPES: dict[str, type[RemoteError]] = {}
_CONCRETE: dict[tuple[str, ...], type[RemoteError]] = {}
_MAX_TYPES = 4096
_MAX_CONCRETE = 256
_MAX_TYPE_NAME = 512
_EVERY_REMOTE_ERROR_IS = frozenset({"builtins.Exception", "builtins.BaseException"})


def error_class(name: str) -> type[BridgeError]:
    """The error class called ``name``; ``BridgeError`` for names this SDK does not know."""
    return _BY_NAME.get(name, BridgeError)


def _remote_builtin(type_name: str) -> type[RemoteError] | None:
    """``Remote<Builtin>`` for ``"builtins.<Builtin>"``, an ``Exception`` subclass; None
    for anything else."""
    cls = _REMOTE_BUILTINS.get(type_name)
    if cls is not None:
        return cls
    module, _, qualname = type_name.rpartition(".")
    if module != "builtins":
        return None
    builtin = getattr(builtins, qualname, None)
    # Only Exception subclasses: a remote KeyboardInterrupt must not look local. Nor
    # the iteration-protocol signals: a StopIteration raised out of a coroutine turns
    # into RuntimeError, and a StopAsyncIteration would end the caller's own loop.
    if not (
        isinstance(builtin, type)
        and issubclass(builtin, Exception)
        and not issubclass(builtin, StopIteration | StopAsyncIteration)
    ):
        return None
    cls = type(f"Remote{qualname}", (RemoteError, builtin), {"__module__": __name__})
    _REMOTE_BUILTINS[type_name] = cls
    return cls


def remote_type(name: str) -> type[RemoteError]:
    """A class that catches remote exceptions of the type called ``name`` (its qualified
    name, ``module.QualName``, as ``RemoteError.remote_type`` shows it) and of its
    subclasses, without importing that type's module on the client::

        try:
            await client.call("numpy.linalg", "inv", [matrix])
        except snakebridge.remote_type("numpy.linalg.LinAlgError") as err:
            ...

    The same name always gives the same class. For a builtin (``"builtins.ValueError"``)
    it is ``RemoteValueError``, which is also a ``ValueError``.
    """
    if not isinstance(name, str) or not name or len(name) > _MAX_TYPE_NAME:
        raise ValueError(f"a remote type is a qualified name of 1 to {_MAX_TYPE_NAME} characters")
    builtin = _remote_builtin(name)
    if builtin is not None:
        return builtin
    cls = _TYPES.get(name)
    if cls is None:
        cls = _TYPES[name] = _named_class(name, (RemoteError,))
    return cls


def _named_class(name: str, bases: tuple[type, ...]) -> type[RemoteError]:
    # Printed by an uncaught traceback as "snakebridge.remote.<remote qualified name>".
    namespace = {"__module__": "snakebridge.remote", "__qualname__": name}
    return type(name.rpartition(".")[2] or name, bases, namespace)


def _concrete_class(mro: tuple[str, ...]) -> type[RemoteError]:
    """The class of a remote error whose type has the classes ``mro`` (most derived
    first): a subclass of the ``remote_type`` class of each name there and of the most
    derived builtins it has (those whose layouts combine: a ``KeyError`` that is also an
    ``AttributeError`` keeps the first)."""
    cls = _CONCRETE.get(mro)
    if cls is not None:
        return cls
    top = mro[0] if mro else ""
    own: list[type[RemoteError]] = []
    remote_builtins: list[type[RemoteError]] = []
    for name in mro:
        if name in _EVERY_REMOTE_ERROR_IS:
            continue
        found = _remote_builtin(name)
        if found is not None:
            if not any(issubclass(b, found) for b in remote_builtins):
                remote_builtins.append(found)
        elif not name.startswith("builtins.") and (name in _TYPES or len(_TYPES) < _MAX_TYPES):
            own.append(remote_type(name))
    if not own and remote_builtins and top in _REMOTE_BUILTINS:
        cls = remote_builtins[0]  # a builtin itself: Remote<Builtin>
    elif not own and not remote_builtins:
        cls = RemoteError  # KeyboardInterrupt, SystemExit, StopIteration...
    elif len(own) == 1 and not remote_builtins and own[0] is _TYPES.get(top):
        cls = own[0]
    else:
        cls = RemoteError
        for keep in range(len(remote_builtins), -1, -1):
            try:
                cls = _named_class(top, (*own, *remote_builtins[:keep]))
                break
            except TypeError:  # instance layouts that cannot combine
                continue
    if len(_CONCRETE) >= _MAX_CONCRETE:
        _CONCRETE.clear()
    _CONCRETE[mro] = cls
    return cls


def _instance(
    cls: type[RemoteError], message: str, type_name: str, traceback: str, mro: tuple[str, ...]
) -> RemoteError:
    # Some builtins refuse to be built this way: MemoryError's __new__ rejects the
    # subclass, UnicodeDecodeError's constructor wants its five arguments, ExceptionGroup
    # its list. Those fall back to BaseException.__new__, then to a plain RemoteError; an
    # error reply must never fail to become an exception.
    for make in (cls.__new__, BaseException.__new__):
        try:
            err = make(cls)
            RemoteError.__init__(err, message, type_name=type_name, traceback=traceback, mro=mro)
        except TypeError:
            continue
        err.args = (message,)
        return err
    err = RemoteError.__new__(RemoteError)
    RemoteError.__init__(err, message, type_name=type_name, traceback=traceback, mro=mro)
    return err


def remote_error(
    type_name: str, message: str, traceback: str = "", *, mro: tuple[str, ...] = ()
) -> RemoteError:
    """Build the ``RemoteError`` for a remote exception of type ``type_name`` whose classes
    are ``mro`` (qualified names, most derived first; ``(type_name,)`` when not given).
    ``args`` is ``(message,)``; ``wire.remote.build`` sets the rest of what travelled."""
    mro = tuple(mro) or ((type_name,) if type_name else ())
    return _instance(_concrete_class(mro), message, type_name, traceback, mro)
