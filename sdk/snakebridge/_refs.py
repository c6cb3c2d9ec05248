"""Handles to objects that live in a worker. Runs in the client process.

Imports nothing of the client: a ref reaches its ``Client`` through the two methods
``RefOwner`` names, so ``_client`` (which makes refs) sits above this module, not beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Any, Protocol

from .errors import RefNotFound
from .wire.codec import RefPayload


class RefOwner(Protocol):
    """What a ref needs of the ``Client`` that made it."""

    async def release_ref(self, *refs: Ref, timeout: float | None = None) -> int: ...

    def stream(self, module_or_ref: Ref, /) -> AsyncIterable[Any]: ...


class Ref:
    """A remote object. Pass it back as an argument or call methods on it.

    It belongs to its session (``session_id``): only calls in that session can use it, and
    calls on it (``call_method``, ``get_attr``, ...) run there unless ``session=`` says
    otherwise. Another session gets ``RefNotFound``.

    ``repr`` makes no remote call. After ``client.release_ref(ref)`` (or leaving
    ``async with ref:``) every use raises ``RefNotFound`` without a round trip.
    """

    __slots__ = (
        "__weakref__",
        "_client",
        "_finalizer",
        "_released",
        "id",
        "pool",
        "session_id",
        "type_name",
    )

    def __init__(self, payload: RefPayload, client: RefOwner | None = None) -> None:
        self.id = payload.id
        self.session_id = payload.session_id
        self.pool = payload.pool
        self.type_name = payload.type_name
        self._client = client
        self._released = False
        # Set by a client that releases the refs it garbage-collects (``_gc_release``).
        self._finalizer: Any = None

    @property
    def released(self) -> bool:
        return self._released

    def __snakebridge_ref__(self) -> RefPayload:
        """The wire form of this ref (used by the value codec)."""
        self._check()
        return RefPayload(
            isinstance(self, StreamRef), self.id, self.session_id, self.pool, self.type_name
        )

    def _check(self) -> None:
        if self._released:
            raise RefNotFound(f"{self!r} was released")

    def _mark_released(self) -> None:
        self._released = True
        if self._finalizer is not None:
            self._finalizer.detach()  # released already: nothing to do when collected

    def __repr__(self) -> str:
        state = " released" if self._released else ""
        name = type(self).__name__
        return f"<{name} {self.type_name} id={self.id} session={self.session_id}{state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def __aenter__(self) -> Ref:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    async def release(self) -> None:
        """Free the remote object (same as ``client.release_ref(self)``)."""
        if self._released or self._client is None:
            self._released = True
            return
        await self._client.release_ref(self)

    def __getstate__(self) -> Any:
        raise TypeError("a Ref cannot be pickled; it only has meaning on its server")


class StreamRef(Ref):
    """A remote iterator or generator.

    ``async for item in stream_ref`` iterates it in batches (``client.stream(ref)``);
    ``client.stream_next(ref)`` takes one item per RPC. Once exhausted it is released.
    """

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._client is None:
            raise RefNotFound(f"{self!r} has no client to iterate through")
        return self._client.stream(self).__aiter__()
