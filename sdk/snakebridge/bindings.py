"""What generated bindings (``snakebridge generate``) call at run time. Client process.

A generated module holds one ``Library`` (its remote module, the library version it was
generated from, and the pool baked in with ``--pool``) and wrappers that pass their
arguments to it: ``await _LIB.call(client, "sqrt", (x,), {})``. Arguments the caller left
at ``OMIT`` are not sent, so the remote function's own default applies. Classes become
``RemoteObject`` subclasses (typed refs) built with ``await Cls.create(...)``; generator
functions return a ``Stream``; module constants are ``Constant``s (``await rmath.pi``).

The client is the ``client=`` argument if given (a ``Client`` or a ``Session``), else the
task's current one (``snakebridge.use``, ``async with Client``), else ``NoCurrentClient``.
The first call of a ``Library`` through each client compares the pool's library version
with the generated one and warns once (``VersionMismatch``) when they differ.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, TypeVar, Union

from . import _current
from ._client import Client, RemoteStream, Session
from ._refs import Ref, StreamRef
from .errors import BridgeError, RefNotFound

__all__ = [
    "OMIT",
    "Caller",
    "Constant",
    "Library",
    "NoCurrentClient",
    "RemoteIterable",
    "RemoteObject",
    "Stream",
    "Use",
    "VersionMismatch",
    "attr",
    "current",
    "method",
    "method_stream",
    "typed",
    "use",
]

_T = TypeVar("_T")
_R = TypeVar("_R", bound="RemoteObject")

#: What a wrapper's ``client=`` takes: a ``Client``, a ``Session``, or None for the current.
Caller = Union[Client, Session, None]  # noqa: UP007 (a runtime alias, read by mypy too)


class _Omitted:
    __slots__ = ()

    def __repr__(self) -> str:
        return "OMIT"

    def __bool__(self) -> bool:
        return False


#: The default of every optional parameter of a wrapper: "not passed, not sent". Typed
#: ``Any`` so that it is a valid default of a parameter of any type.
OMIT: Final[Any] = _Omitted()


class NoCurrentClient(RuntimeError):
    """A generated wrapper was called with no client to call through: no ``async with
    snakebridge.Client(...)`` block is open in this task, no ``snakebridge.use(...)`` set
    one, and no ``client=`` was passed. Open a client around the call, or pass one."""


class Use:
    """What ``snakebridge.use`` returns: ``with snakebridge.use(session): ...`` restores
    the previous current client on exit; used as a plain call, the setting stays."""

    __slots__ = ("_token",)

    def __init__(self, token: Token[Any]) -> None:
        self._token = token

    def __enter__(self) -> Use:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        _current.leave(self._token)


def use(target: Client | Session | None) -> Use:
    """Make ``target`` (a ``Client`` or a ``Session``) the current client of this task and
    of the tasks it starts from now on (they copy its context); None clears it.
    ``async with Client(...)`` does the same for its block."""
    if target is not None and not isinstance(target, Client | Session):
        raise TypeError(f"use() takes a Client or a Session, not {type(target).__name__}")
    return Use(_current.enter(target))


def current() -> Client | Session:
    """The current client or session; ``NoCurrentClient`` when there is none."""
    target: Client | Session | None = _current.CURRENT.get()
    if target is None:
        raise NoCurrentClient(
            "no snakebridge client to call through: call inside 'async with "
            "snakebridge.Client(...)', set one with snakebridge.use(client), or pass client="
        )
    return target


class VersionMismatch(UserWarning):
    """A generated module's library version differs from its pool's: its signatures may
    be out of date. Regenerate the bindings (``snakebridge generate``) against the pool."""


def _positional(name: str, args: Sequence[Any]) -> list[Any]:
    """``args`` up to the first omitted one; a value after an omitted one cannot be sent
    positionally."""
    for at, value in enumerate(args):
        if value is OMIT:
            if any(v is not OMIT for v in args[at + 1 :]):
                raise TypeError(
                    f"{name}(): an argument after the omitted positional argument {at + 1} "
                    "was passed; pass the ones before it too"
                )
            return list(args[:at])
    return list(args)


def _keywords(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not OMIT}


def _runtime(client: Caller) -> Client | Session:
    if client is None:
        return current()
    if not isinstance(client, Client | Session):
        raise TypeError(f"client= takes a Client or a Session, not {type(client).__name__}")
    return client


class Library:
    """One remote module as a generated module sees it."""

    __slots__ = ("__weakref__", "_checked", "_warned", "module", "pool", "version")

    def __init__(self, module: str, version: str, *, pool: str | None = None) -> None:
        self.module = module
        self.version = version
        self.pool = pool
        self._checked: weakref.WeakSet[Client] = weakref.WeakSet()
        self._warned = False

    def __repr__(self) -> str:
        return f"<Library {self.module} {self.version or '(unversioned)'}>"

    async def _check(self, runtime: Client | Session) -> None:
        """Compare versions once per client; warn once per library."""
        client = runtime._client
        if client in self._checked:
            return
        self._checked.add(client)
        if not self.version:
            return
        try:
            found = await client.introspect(self.module, pool=self.pool, version_only=True)
        except BridgeError:
            return  # the call itself reports what is wrong
        if found.version != self.version and not self._warned:
            self._warned = True
            warnings.warn(
                f"bindings of {self.module!r} were generated from {self.version!r}, but pool "
                f"{self.pool or '(default)'!r} has {found.version or 'no version'!r}; "
                "regenerate them with 'snakebridge generate'",
                VersionMismatch,
                stacklevel=3,
            )

    async def call(
        self, client: Caller, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        """``module.name(*args, **kwargs)``, without the omitted arguments."""
        runtime = _runtime(client)
        await self._check(runtime)
        return await runtime.call(
            self.module, name, _positional(name, args), _keywords(kwargs), pool=self.pool
        )

    async def create(
        self,
        cls: type[_R],
        client: Caller,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> _R:
        """A new remote instance of ``cls``'s class, as a ``cls`` ref."""
        runtime = _runtime(client)
        await self._check(runtime)
        ref = await runtime.call_class(
            self.module, cls._sb_name, _positional(cls._sb_name, args), _keywords(kwargs),
            pool=self.pool,
        )  # fmt: skip
        return typed(cls, ref)

    def stream(
        self, client: Caller, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Stream[Any]:
        """Iterate what ``module.name(...)`` returns (a generator function's wrapper)."""
        runtime = _runtime(client)
        remote = runtime.stream(
            self.module, name, _positional(name, args), _keywords(kwargs), pool=self.pool
        )
        return Stream(remote, lambda: self._check(runtime))

    async def get(self, client: Caller, name: str) -> Any:
        """``module.name`` (a constant)."""
        runtime = _runtime(client)
        await self._check(runtime)
        return await runtime.get_module_attr(self.module, name, pool=self.pool)


class Stream(Generic[_T]):
    """The items of a remote generator: an async iterator and an async context manager,
    like ``RemoteStream`` (which it wraps), typed by the generator's item type."""

    __slots__ = ("_check", "_remote")

    def __init__(
        self, remote: RemoteStream, check: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._remote = remote
        self._check = check  # made when iteration starts: a dropped stream leaves nothing

    def __aiter__(self) -> Stream[_T]:
        return self

    async def __anext__(self) -> _T:
        if self._check is not None:
            check, self._check = self._check, None
            await check()
        item: _T = await self._remote.__anext__()
        return item

    async def __aenter__(self) -> Stream[_T]:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop iterating: the server closes the generator in the worker."""
        self._check = None
        await self._remote.aclose()


class RemoteObject(Ref):
    """A typed ref: the base of every generated class. Its methods run on the remote
    object, in the ref's own session and through the client that made it."""

    __slots__ = ()
    _sb_library: ClassVar[Library]
    _sb_name: ClassVar[str]  # the class's name in its module


class RemoteIterable(RemoteObject):
    """A typed ref to an iterable (its class defines ``__iter__``): ``async for`` iterates
    the remote object in batches (``client.stream(ref)``)."""

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[Any]:
        return _owner(self).stream(self).__aiter__()


def typed(cls: type[_R], value: Any) -> _R:
    """``value``, a ref, as a ``cls`` (the same object, retyped: it keeps its identity,
    session and release state). A value that is not a ref is returned as it is."""
    if isinstance(value, Ref) and not isinstance(value, StreamRef | cls):
        value.__class__ = cls
    result: _R = value
    return result


def _owner(ref: Ref) -> Client:
    client = ref._client
    if not isinstance(client, Client):
        raise RefNotFound(f"{ref!r} has no client to call through")
    return client


async def method(
    ref: RemoteObject, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Any:
    """``ref.name(*args, **kwargs)`` in the ref's worker, without the omitted arguments."""
    return await _owner(ref).call_method(ref, name, _positional(name, args), _keywords(kwargs))


def method_stream(
    ref: RemoteObject, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Stream[Any]:
    """Iterate what ``ref.name(...)`` returns (a generator method's wrapper)."""
    remote = _owner(ref).stream(ref, name, _positional(name, args), _keywords(kwargs))
    return Stream(remote)


def attr(ref: RemoteObject, name: str) -> Awaitable[Any]:
    """``ref.name`` (a property's getter): ``await counter.real``."""
    return _owner(ref).get_attr(ref, name)


class Constant(Generic[_T]):
    """A module-level value: ``await rmath.pi`` reads it through the current client,
    ``await rmath.pi.get(client=c)`` through ``c``."""

    __slots__ = ("_library", "name")

    def __init__(self, library: Library, name: str) -> None:
        self._library = library
        self.name = name

    def __repr__(self) -> str:
        return f"<Constant {self._library.module}.{self.name}>"

    def __await__(self) -> Generator[Any, None, _T]:
        return self.get().__await__()

    async def get(self, *, client: Caller = None) -> _T:
        value: _T = await self._library.get(client, self.name)
        return value
