"""python -m bench.obs_overhead: the per-call cost of the observability hooks, measured
in isolation (the end-to-end unary call is ~700 us; these are fractions of a us).

Each line times exactly what the server, the worker or the SDK adds per call, with the
real objects: the hooks as they run in ``BridgeService._guard``, ``_label``,
``WorkerHandle._cid``, the worker's frame loop, and ``Client._call_metadata``.
"""

from __future__ import annotations

import itertools
import time
import timeit
from collections.abc import Callable

from snakebridge import _correlation
from snakebridge._client import Client
from snakebridge.wire.constants import CORRELATION_METADATA, KIND_NAMES
from snakebridge_server.channel import pack_frame
from snakebridge_server.logs import CALL, CallInfo, valid_correlation_id
from snakebridge_server.metrics import Metrics
from snakebridge_server.worker import output as worker_logging

N = 200_000


def per_call_us(fn: Callable[[], object], number: int = N) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return best / number * 1e6


def main() -> None:
    metrics = Metrics()
    seq = itertools.count(1)
    pools = {"default": None}

    def server_hooks(metadata: dict[str, str], with_metrics: bool) -> Callable[[], None]:
        m = metrics if with_metrics else None

        def run() -> None:
            # _guard: start time, correlation id, CallInfo in the context
            started = time.perf_counter()
            sent = metadata.get(CORRELATION_METADATA)
            bad = sent is not None and not valid_correlation_id(sent)
            cid = sent if sent is not None and not bad else ""
            if not cid:
                cid = f"sb-0123abcd-{next(seq)}"
            info = CallInfo(cid, "call")
            CALL.set(info)
            # _label
            i = CALL.get()
            assert i is not None
            i.kind = KIND_NAMES.get(1, "unknown")
            pool = "" or "default"
            i.pool = pool if pool in pools else ""
            # WorkerHandle._cid
            j = CALL.get()
            assert j is not None
            j.pool = "default"
            # _observe
            if m is not None:
                m.observe_call(info.pool, info.kind, "ok", time.perf_counter() - started)

        return run

    def worker_hooks() -> None:
        message = [1, 7, 1, "math", "sqrt", "", "", b"\x92\x91\x10\x80", 100, "sb-0123abcd-42"]
        worker_logging.set_correlation_id(message.pop())
        worker_logging.end_of_call()

    frame_before = [1, 7, 1, "math", "sqrt", "", "", b"\x92\x91\x10\x80", 100]
    frame_after = [*frame_before, "sb-0123abcd-42"]

    client = Client("127.0.0.1:1")
    client_with_id = Client("127.0.0.1:1", correlation_id="req-42")

    rows = [
        ("server, no id sent, metrics off", server_hooks({}, False)),
        ("server, no id sent, metrics on", server_hooks({}, True)),
        ("server, id sent, metrics on", server_hooks({CORRELATION_METADATA: "req-42"}, True)),
        ("worker frame loop", worker_hooks),
        ("pack_frame without the id (before)", lambda: pack_frame(frame_before)),
        ("pack_frame with the id (after)", lambda: pack_frame(frame_after)),
        ("client, no id", client._call_metadata),
        ("client, Client(correlation_id=)", client_with_id._call_metadata),
    ]
    token = _correlation._CURRENT.set(None)
    for name, fn in rows:
        print(f"{name:40s} {per_call_us(fn):6.3f} us")
    _correlation._CURRENT.reset(token)


if __name__ == "__main__":
    main()
