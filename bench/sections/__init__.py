"""Benchmark sections, registered in SECTIONS (order is set-up and table order).

A section is `targets(settings)`: an async context manager that starts what it needs (a
server process, a client) and yields a list of `Target`s ready to call, and tears everything
down on exit. The runner opens every selected section first, then measures all targets in
interleaved repetitions, so slow drift on a noisy machine hits every target alike. A section
that cannot run raises `Unavailable` (or anything else) while setting up; the runner reports
it and carries on. The first target of BASELINE is the floor the ratio columns compare to.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from bench.measure import Settings, Target, Unavailable
from bench.sections import (
    concurrency,
    cpu,
    grpclib_floor,
    lifecycle,
    payloads,
    peers,
    snakebridge_sdk,
    streams,
)

__all__ = ["BASELINE", "SECTIONS", "Section", "Unavailable"]

Section = Callable[[Settings], AbstractAsyncContextManager[list[Target]]]

SECTIONS: dict[str, Section] = {
    "grpclib": grpclib_floor.targets,
    "snakebridge": snakebridge_sdk.targets,
    "streams": streams.targets,
    "peers": peers.targets,
    "cpu": cpu.targets,
    "payloads": payloads.targets,
    "lifecycle": lifecycle.targets,
    "concurrency": concurrency.targets,
}

BASELINE = "grpclib"
