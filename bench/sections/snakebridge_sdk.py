"""snakebridge end to end: the SDK calling `math.sqrt` through a real bridge-server."""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.measure import Settings, Target, Unavailable
from bench.procs import ServerFailed, ServerProcess, free_port

HOST = "127.0.0.1"
WORKERS = 2
# snakebridge p50 / bare grpclib p50 must stay at or under this.
P50_RATIO_TARGET = 1.25


def _server_binary() -> str:
    beside_python = Path(sys.executable).parent / "bridge-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("bridge-server")
    if found is None:
        raise Unavailable("bridge-server is not installed")
    return found


def _sdk() -> Any:
    try:
        module = importlib.import_module("snakebridge")
    except ImportError as exc:
        raise Unavailable(f"cannot import snakebridge: {exc}") from exc
    if not hasattr(module, "Client"):
        raise Unavailable("snakebridge has no Client yet")
    return module


@asynccontextmanager
async def targets(settings: Settings) -> AsyncIterator[list[Target]]:
    sdk = _sdk()
    port = free_port(HOST)
    argv = [_server_binary(), "--listen", f"{HOST}:{port}", "--workers", str(WORKERS)]
    server = ServerProcess("bridge-server", argv, "SERVING")
    extra: dict[str, Any] = {"workers": WORKERS, "p50_ratio_target": P50_RATIO_TARGET}
    try:
        try:
            await server.start()
        except ServerFailed as exc:
            raise Unavailable(str(exc)) from exc
        async with sdk.Client(f"{HOST}:{port}") as client:
            answer = await client.call("math", "sqrt", [16])
            if answer != 4.0:
                raise RuntimeError(f'call("math", "sqrt", [16]) returned {answer!r}, not 4.0')

            async def call() -> object:
                return await client.call("math", "sqrt", [16])

            yield [Target("snakebridge math.sqrt", call, extra)]
    finally:
        await server.stop()
        extra["server_exit_code"] = server.returncode
        if server.killed or server.left_children:
            extra["server_unclean_exit"] = {
                "killed_after_timeout": server.killed,
                "left_children": server.left_children,
            }
