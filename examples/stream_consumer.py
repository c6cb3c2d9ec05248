"""A streaming consumer: iterate remote generators as they produce, without holding
everything in memory on either side.

    SNAKEBRIDGE_ADDRESS=127.0.0.1:50051 python examples/stream_consumer.py

The worker produces only while this program consumes (backpressure); leaving a loop or
an ``async with`` block closes the generator in the worker; ``timeout=`` bounds a whole
stream. Two streams run at once on one client.
"""

from __future__ import annotations

import asyncio
import itertools

import snakebridge
from snakebridge import errors


async def running_total(client: snakebridge.Client, n: int) -> int:
    """Consume a large stream item by item: it arrives in batches, never all at once."""
    total = 0
    async for x in client.stream("builtins", "range", [n]):
        total += x
    return total


async def first_match(client: snakebridge.Client) -> int:
    """Stop an endless remote iterator early: leaving the block closes it remotely."""
    async with client.stream("itertools", "count", [1], timeout=30) as numbers:
        async for n in numbers:
            if n % 7 == 0 and n % 11 == 0:
                return int(n)
    raise AssertionError("count() never ends")


async def main() -> None:
    async with snakebridge.Client() as client:
        total, match = await asyncio.gather(running_total(client, 1_000_000), first_match(client))
        print("sum of range(1000000):", total)
        print("first multiple of 7 and 11:", match)

        # A call that returns an iterator gives a StreamRef: take a few items, then the rest.
        words = await client.call("builtins", "iter", [["alpha", "beta", "gamma", "delta"]])
        head = [await client.stream_next(words) for _ in range(2)]
        rest = [w async for w in words]
        print("head:", head, "rest:", rest)

        # stream(ref) iterates a remote object: here the lines of a file-like object.
        async with client.session() as session:
            text = await session.call_class("io", "StringIO", ["one\ntwo\nthree\n"])
            lines = [line.strip() async for line in session.stream(text)]
        print("lines:", lines)

        # A bounded stream: an endless one stops at its timeout with CallTimeout.
        try:
            async for _ in client.stream("itertools", "repeat", ["x"], timeout=0.5):
                await asyncio.sleep(0.01)
        except errors.CallTimeout:
            print("endless stream stopped at its timeout")

    # Local check of the first answer, so the example proves what it prints.
    assert total == sum(range(1_000_000))
    assert match == next(n for n in itertools.count(1) if n % 77 == 0)


if __name__ == "__main__":
    asyncio.run(main())
