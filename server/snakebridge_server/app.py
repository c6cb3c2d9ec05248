"""Server lifecycle: start pools, serve gRPC, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys

from grpclib.events import RecvRequest, listen
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.server import Server

from .auth import TokenAuth, read_token
from .bridge import Bridge
from .config import ConfigError, ServerConfig
from .service import BridgeService
from .worker_handle import WorkerStartError

log = logging.getLogger("snakebridge.server")


def _bound_address(server: Server, config: ServerConfig) -> str:
    if config.uds:
        return f"unix://{config.uds}"
    inner = getattr(server, "_server", None)  # grpclib keeps the asyncio.Server here
    sockets = getattr(inner, "sockets", None) or ()
    port = sockets[0].getsockname()[1] if sockets else config.port
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{host}:{port}"


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM arrives)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bridge = Bridge(config)
    bound_socket = False
    try:
        await bridge.start()
        service = BridgeService(bridge)
        serving = ServiceStatus()
        server = Server([service, Health({service: [serving]})])
        if config.token_file:
            listen(server, RecvRequest, TokenAuth(read_token(config.token_file)))
        if config.uds:
            _remove_stale_socket(config.uds)
            old_umask = os.umask(0o177)  # the socket is created 0600: owner only
            try:
                await server.start(path=config.uds)
                bound_socket = True
            finally:
                os.umask(old_umask)
        else:
            await server.start(config.host, config.port)
        pools = ", ".join(
            f"pool {p.name}: {p.size} workers (pids {' '.join(str(w.pid) for w in p.workers if w)})"
            for p in bridge.pools.values()
        )
        serving.set(True)
        log.info("bridge-server SERVING on %s (%s)", _bound_address(server, config), pools)
        try:
            await stop.wait()
        finally:
            serving.set(False)  # health: NOT_SERVING at once
            log.info("bridge-server draining (up to %gs)", config.drain_grace)
            cancelled = await service.drain(config.drain_grace)
            if cancelled:
                log.warning("cancelled %d call(s) still running after the drain", cancelled)
            log.info("bridge-server stopping")
            server.close()
            await server.wait_closed()
    finally:
        await bridge.close()
        if bound_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.uds)  # type: ignore[arg-type]
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            # A repeated stop signal (orchestrators send them) must not turn a clean
            # shutdown into a death by signal in its last moments.
            signal.signal(sig, signal.SIG_IGN)
        log.info("bridge-server stopped")


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by an earlier run; refuse to delete anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"--uds {path} exists and is not a socket; refusing to replace it")
    os.unlink(path)


def run(config: ServerConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(serve(config))
        except (OSError, WorkerStartError, ConfigError) as exc:
            log.error("bridge-server failed to start: %s", exc)
            return 1
    return 0
