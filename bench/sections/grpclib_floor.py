"""The floor: bare grpclib unary echo of raw bytes, server in its own process."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from grpclib.client import Channel, UnaryUnaryMethod

from bench.codec import RawCodec
from bench.echo_server import ECHO_METHOD
from bench.measure import Settings, Target
from bench.procs import ServerProcess, free_port

HOST = "127.0.0.1"
PAYLOAD = b"0123456789"


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    port = free_port(HOST)
    argv = [sys.executable, "-m", "bench.echo_server", "--host", HOST, "--port", str(port)]
    async with ServerProcess("echo server", argv, "READY"):
        channel = Channel(HOST, port, codec=RawCodec())
        try:
            echo = UnaryUnaryMethod(channel, ECHO_METHOD, bytes, bytes)
            if await echo(PAYLOAD) != PAYLOAD:
                raise RuntimeError("echo server returned a different payload")

            async def call() -> bytes:
                return await echo(PAYLOAD)

            yield [Target("grpclib raw echo", call, {"payload_bytes": len(PAYLOAD)})]
        finally:
            channel.close()
