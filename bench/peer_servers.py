"""Peer RPC servers for the `peers` section, each run as its own process:

    python -m bench.peer_servers rpyc     # RPyC classic (SlaveService), threaded
    python -m bench.peer_servers pyro5    # a Pyro5 daemon exposing `sqrt` and `count`

Each listens on 127.0.0.1 on a port the kernel picks, prints `READY port=N` once it
accepts connections, and serves until SIGTERM or SIGINT, on which it exits with code 0.
With `--parent PID` it is also killed when that process (the benchmark) dies, even by SIGKILL.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

HOST = "127.0.0.1"
READY = "READY"
# Server threads for Pyro5's thread-pool server: one per client connection, and the
# benchmark opens 64 (plus one for the sequential figures). Pyro5's default is 80.
PYRO5_THREADS = 128
PYRO5_OBJECT_ID = "bench.math"


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Be SIGKILLed when the process that started this one dies (Linux), so that no server
    or pool worker outlives a benchmark that was itself killed; exit now if it already has."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _ready(port: int) -> None:
    print(f"{READY} port={port}", flush=True)


def _on_stop(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        # Stopping the serve loop from its own thread could deadlock; do it from another.
        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve_rpyc() -> None:
    from rpyc.core.service import SlaveService
    from rpyc.utils.server import ThreadedServer

    server = ThreadedServer(SlaveService, hostname=HOST, port=0, auto_register=False)
    _on_stop(server.close)
    server._listen()  # bind + listen now, so READY really means "accepting"
    _ready(int(server.port))
    server.start()  # returns once close() is called


class MathService:
    """What the Pyro5 clients call: `sqrt(16)`, and `count(n)`, a generator that Pyro5
    streams to the client item by item (one round trip per `next`)."""

    def sqrt(self, x: float) -> float:
        return math.sqrt(x)

    def count(self, n: int) -> Iterator[int]:
        yield from range(n)


def serve_pyro5() -> None:
    import Pyro5.api
    from Pyro5 import config

    config.SERVERTYPE = "thread"
    config.THREADPOOL_SIZE = PYRO5_THREADS
    exposed = Pyro5.api.expose(MathService)
    daemon = Pyro5.api.Daemon(host=HOST, port=0)
    daemon.register(exposed(), PYRO5_OBJECT_ID)
    _on_stop(daemon.shutdown)
    _ready(int(daemon.locationStr.rsplit(":", 1)[1]))
    daemon.requestLoop()  # returns once shutdown() is called
    daemon.close()


SERVERS: dict[str, Callable[[], None]] = {"rpyc": serve_rpyc, "pyro5": serve_pyro5}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_servers", description=__doc__)
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--parent", type=int, help="die with this process (the benchmark)")
    args = parser.parse_args(argv)
    if args.parent is not None:
        die_with_parent(args.parent)
    SERVERS[args.kind]()
    sys.exit(0)


if __name__ == "__main__":
    main()
