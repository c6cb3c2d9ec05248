"""The worker-side batching of streams, without processes or sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from snakebridge.wire.codec import decode, encode
from snakebridge_server.worker.streams import (
    DONE,
    ERROR,
    MORE,
    BatchLimits,
    CallInterrupted,
    WorkerStream,
    array_header,
    collect_sync,
    splice,
)

FAST = BatchLimits(max_items=1000, max_bytes=1 << 20, linger=10.0)


class FakeClock:
    """Advances by ``step`` every time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize("sizes", [[1], [3, 4], [15, 1], [16], [10, 65530], [65535, 1, 3]])
def test_spliced_chunks_decode_as_one_list(sizes: list[int]) -> None:
    chunks, expected, start = [], [], 0
    for n in sizes:
        items = list(range(start, start + n))
        start += n
        expected += items
        chunks.append((n, encode(items)))
    assert decode(splice(chunks)) == expected


def test_array_header_matches_msgpack_for_every_size_class() -> None:
    for n in (0, 15, 16, 65535, 65536):
        assert encode(list(range(n))).startswith(array_header(n))


def test_fast_iterator_fills_a_batch_up_to_max_items() -> None:
    it = iter(range(5000))
    batch = collect_sync(it, FAST, encode, FakeClock(1e-9))
    assert batch.state == MORE and batch.count == 1000
    assert decode(batch.body) == list(range(1000))
    assert next(it) == 1000  # nothing was taken beyond the batch


def test_exhausted_iterator_ends_the_stream() -> None:
    batch = collect_sync(iter([1, 2, 3]), FAST, encode, FakeClock(1e-9))
    assert (batch.state, decode(batch.body)) == (DONE, [1, 2, 3])
    empty = collect_sync(iter([]), FAST, encode, FakeClock(1e-9))
    assert (empty.state, decode(empty.body)) == (DONE, [])


def test_byte_limit_ends_a_batch() -> None:
    limits = BatchLimits(max_items=1000, max_bytes=3000, linger=10.0)
    batch = collect_sync(iter([b"x" * 1000] * 50), limits, encode, FakeClock(1e-9))
    assert batch.state == MORE and 3 <= batch.count < 10


def test_slow_iterator_returns_after_the_linger_with_small_chunks() -> None:
    taken = 0

    def slow() -> Iterator[int]:
        nonlocal taken
        while True:
            taken += 1
            yield taken

    # Each clock read advances 1 ms; the linger is 5 ms.
    limits = BatchLimits(max_items=1000, max_bytes=1 << 20, linger=0.005)
    batch = collect_sync(slow(), limits, encode, FakeClock(0.001))
    assert batch.state == MORE
    assert batch.count == taken  # every item taken is in the batch
    assert batch.count < 20  # the rate kept the chunks small


def test_error_mid_chunk_keeps_the_items_yielded_before_it() -> None:
    def failing() -> Iterator[int]:
        yield from range(7)
        raise ValueError("boom")

    batch = collect_sync(failing(), FAST, encode, FakeClock(1e-9))
    assert batch.state == ERROR and isinstance(batch.error, ValueError)
    assert decode(batch.body) == list(range(7))


def test_interruption_is_not_reported_as_the_iterators_error() -> None:
    def interrupted() -> Iterator[int]:
        yield 1
        raise CallInterrupted

    with pytest.raises(CallInterrupted):
        collect_sync(interrupted(), FAST, encode, FakeClock(1e-9))


def _loop_factory() -> Any:
    loop = asyncio.new_event_loop()
    return lambda: loop


def test_async_generator_batches_and_ends() -> None:
    async def agen() -> Any:
        for i in range(10):
            yield i

    stream = WorkerStream(agen(), _loop_factory())
    batch = stream.next_batch(BatchLimits(4, 1 << 20, 10.0), encode, FakeClock(0))
    assert (batch.state, decode(batch.body)) == (MORE, [0, 1, 2, 3])
    rest = stream.next_batch(BatchLimits(100, 1 << 20, 10.0), encode, FakeClock(0))
    assert (rest.state, decode(rest.body)) == (DONE, list(range(4, 10)))


def test_async_batch_ends_on_linger_without_cancelling_the_generator() -> None:
    async def agen() -> Any:
        yield 0
        await asyncio.sleep(0.2)
        yield 1

    stream = WorkerStream(agen(), _loop_factory())
    first = stream.next_batch(BatchLimits(100, 1 << 20, 0.01), encode, FakeClock(0))
    assert (first.state, decode(first.body)) == (MORE, [0])
    second = stream.next_batch(BatchLimits(100, 1 << 20, 1.0), encode, FakeClock(0))
    assert (second.state, decode(second.body)) == (DONE, [1])  # item 1 was not lost


def test_close_runs_the_finally_of_sync_and_async_generators() -> None:
    closed: list[str] = []

    def gen() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append("sync")

    async def agen() -> Any:
        try:
            while True:
                yield 1
        finally:
            closed.append("async")

    sync_stream = WorkerStream(gen(), _loop_factory())
    sync_stream.next_batch(BatchLimits(3, 1 << 20, 10.0), encode, FakeClock(0))
    sync_stream.close()
    async_stream = WorkerStream(agen(), _loop_factory())
    async_stream.next_batch(BatchLimits(3, 1 << 20, 10.0), encode, FakeClock(0))
    async_stream.close()
    assert closed == ["sync", "async"]


def test_a_ref_owned_iterator_is_not_closed_by_its_stream() -> None:
    closed: list[bool] = []

    def gen() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    it = gen()
    stream = WorkerStream(it, _loop_factory(), owner_ref="b.default.0.1.5")
    stream.next_batch(BatchLimits(3, 1 << 20, 10.0), encode, FakeClock(0))
    stream.close()
    assert closed == [] and next(it) == 3  # the ref's generator lives on


def test_even_sized_items_do_not_overshoot_the_byte_limit() -> None:
    limits = BatchLimits(max_items=100_000, max_bytes=100_000, linger=10.0)
    batch = collect_sync(iter([b"x" * 975] * 10_000), limits, encode, FakeClock(1e-9))
    assert batch.state == MORE
    assert 90_000 <= len(batch.body) <= 100_000 + 1_000  # at most about one item over
