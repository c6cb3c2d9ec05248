"""Bare grpclib unary echo server with a raw-bytes codec, run as its own process.

    python -m bench.echo_server --port N

Prints `READY <host>:<port>` on stdout once listening; exits cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from bench.codec import RawCodec
from bench.loop import run

ECHO_METHOD = "/bench.Echo/Echo"


class Echo:
    async def echo(self, stream: Stream[bytes, bytes]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(request)

    def __mapping__(self) -> dict[str, Handler]:
        return {ECHO_METHOD: Handler(self.echo, Cardinality.UNARY_UNARY, bytes, bytes)}


async def serve(host: str, port: int) -> None:
    server = Server([Echo()], codec=RawCodec())
    await server.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args: Any = parser.parse_args(argv)
    run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
