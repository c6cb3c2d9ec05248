"""Iterations that run inside a worker, one batch per request (the worker side of streams).

A batch is one codec-encoded list. Items are pulled from the iterator in chunks whose
size follows the measured production rate, so a fast iterator fills ``max_items`` /
``max_bytes`` in a few chunks while a slow one is returned after ``linger`` seconds
(or after its first item, if that alone took longer). Chunk encodings are spliced under
one msgpack array header: nothing is encoded twice.

Sync iterators and generators run directly; async generators and async iterators run on
the worker's event loop, with the pending ``__anext__`` kept across batches so a batch
that ends on ``linger`` never cancels the generator.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

MORE: Final = 0
DONE: Final = 1
ERROR: Final = 2


class CallInterrupted(BaseException):
    """Raised inside user code when the server cancels the running call.

    A BaseException so that ``except Exception`` in user code does not swallow it; code
    that swallows it anyway is killed by the server after the grace period. Collectors
    re-raise it rather than reporting it as the iterator's own error.
    """


_MAX_CHUNK: Final = 4096

EncodeChunk = Callable[[list[Any]], bytes]


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_items: int
    max_bytes: int
    linger: float


def _header_len(n: int) -> int:
    return 1 if n < 16 else 3 if n < 0x10000 else 5


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def splice(chunks: list[tuple[int, bytes]]) -> bytes:
    """One msgpack array from the encodings of several lists (their items, in order)."""
    if len(chunks) == 1:
        return chunks[0][1]
    total = sum(n for n, _ in chunks)
    return array_header(total) + b"".join(blob[_header_len(n) :] for n, blob in chunks)


@dataclass(slots=True)
class Batch:
    body: bytes  # codec-encoded list of items
    count: int
    state: int  # MORE | DONE | ERROR
    error: BaseException | None = None


class WorkerStream:
    """One open iteration. ``owner_ref`` is set when the iterator is a ref's object: it
    is released on exhaustion and never closed by a cancelled stream."""

    def __init__(
        self,
        source: Any,
        loop: Callable[[], asyncio.AbstractEventLoop],
        owner_ref: str | None = None,
    ) -> None:
        self.owner_ref = owner_ref
        self._loop = loop
        self._pending: asyncio.Future[Any] | None = None  # the next __anext__, kept
        # The task filling the current async batch. If a pull is interrupted (the signal
        # can land anywhere in the event loop), it is left scheduled: close() settles it.
        self._collector: asyncio.Task[Batch] | None = None
        if hasattr(source, "__anext__") or (
            hasattr(source, "__aiter__") and not hasattr(source, "__iter__")
        ):
            self.aiter: Any = source.__aiter__() if not hasattr(source, "__anext__") else source
            self.it: Iterator[Any] | None = None
        else:
            self.it = iter(source)
            self.aiter = None
        self.finished = False

    def next_batch(
        self, limits: BatchLimits, encode_chunk: EncodeChunk, clock: Callable[[], float]
    ) -> Batch:
        if self.finished:
            return Batch(array_header(0), 0, DONE)
        if self.it is not None:
            batch = collect_sync(self.it, limits, encode_chunk, clock)
        else:
            loop = self._loop()
            self._collector = loop.create_task(self._collect_async(limits, encode_chunk))
            batch = loop.run_until_complete(self._collector)
            self._collector = None
        if batch.state != MORE:
            self.finished = True
        return batch

    async def _collect_async(self, limits: BatchLimits, encode_chunk: EncodeChunk) -> Batch:
        loop = asyncio.get_running_loop()
        start = loop.time()
        chunks: list[tuple[int, bytes]] = []
        count = nbytes = 0
        while True:
            if self._pending is None:
                self._pending = asyncio.ensure_future(self.aiter.__anext__())
            # Wait without a limit for the first item; after that only within the linger.
            remaining = None if not chunks else limits.linger - (loop.time() - start)
            if remaining is not None and remaining <= 0:
                return Batch(splice(chunks), count, MORE)
            done, _ = await asyncio.wait({self._pending}, timeout=remaining)
            if not done:
                return Batch(splice(chunks), count, MORE)
            task, self._pending = self._pending, None
            try:
                item = task.result()
            except CallInterrupted:
                raise
            except StopAsyncIteration:
                return Batch(splice(chunks) if chunks else array_header(0), count, DONE)
            except BaseException as exc:  # the generator raised: deliver what came before
                return Batch(splice(chunks) if chunks else array_header(0), count, ERROR, exc)
            blob = encode_chunk([item])
            chunks.append((1, blob))
            count += 1
            nbytes += len(blob)
            if count >= limits.max_items or nbytes >= limits.max_bytes:
                return Batch(splice(chunks), count, MORE)

    def close(self) -> None:
        """Close the iterator (its ``finally`` blocks run) unless a ref owns it."""
        self.finished = True
        if self.owner_ref is not None:
            return
        if self.it is not None:
            close = getattr(self.it, "close", None)
            if close is not None:
                close()
            return
        loop = self._loop()
        leftovers = [t for t in (self._collector, self._pending) if t is not None]
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        self._collector = self._pending = None
        aclose = getattr(self.aiter, "aclose", None)
        if aclose is not None:
            loop.run_until_complete(aclose())


def collect_sync(
    it: Iterator[Any],
    limits: BatchLimits,
    encode_chunk: EncodeChunk,
    clock: Callable[[], float] = time.monotonic,
) -> Batch:
    """Pull one batch from a sync iterator (see the module docstring)."""
    start = clock()
    chunks: list[tuple[int, bytes]] = []
    count = nbytes = 0
    chunk_size = 1
    while True:
        chunk: list[Any] = []
        try:
            chunk.extend(itertools.islice(it, chunk_size))  # keeps items taken before a raise
        except CallInterrupted:
            raise
        except BaseException as exc:
            # The iterator raised: deliver every item it yielded before, then the error.
            if chunk:
                chunks.append((len(chunk), encode_chunk(chunk)))
                count += len(chunk)
            return Batch(splice(chunks) if chunks else array_header(0), count, ERROR, exc)
        if chunk:
            blob = encode_chunk(chunk)
            chunks.append((len(chunk), blob))
            count += len(chunk)
            nbytes += len(blob)
        if len(chunk) < chunk_size:
            return Batch(splice(chunks) if chunks else array_header(0), count, DONE)
        if count >= limits.max_items or nbytes >= limits.max_bytes:
            return Batch(splice(chunks), count, MORE)
        elapsed = clock() - start
        if elapsed >= limits.linger:
            return Batch(splice(chunks), count, MORE)
        # Grow geometrically, but never past what the measured rate fills in the time
        # left, so a slow iterator is not asked for many items at once.
        by_rate = int((limits.linger - elapsed) * count / max(elapsed, 1e-7))
        # ... nor past the bytes left at the average item size so far, so a batch of
        # even-sized items stays within max_bytes instead of overshooting by a chunk.
        by_bytes = int((limits.max_bytes - nbytes) * count / max(nbytes, 1))
        chunk_size = max(
            1, min(2 * chunk_size, by_rate, by_bytes, _MAX_CHUNK, limits.max_items - count)
        )
