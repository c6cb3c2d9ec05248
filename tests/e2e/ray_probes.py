"""Helpers the Ray pool tests run inside a Ray pool's sandboxed worker
(``test_ray_pools.py``): what the worker could reach of Ray and of its actor."""

from __future__ import annotations

import os
import socket


def ray_read(path: str) -> str:
    """Read a file: "read N bytes", or the error."""
    try:
        with open(path, "rb") as f:
            return f"read {len(f.read())} bytes"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def ray_env_names() -> list[str]:
    return sorted(os.environ)


def ray_signal_parent() -> str:
    """Signal 0 to the parent (the Ray actor): "signalled", or the error."""
    try:
        os.kill(os.getppid(), 0)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "signalled"


def ray_connect(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=2):
            return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
