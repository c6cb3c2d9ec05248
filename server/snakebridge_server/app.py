"""Server lifecycle: start pools, serve gRPC, stop cleanly on SIGINT/SIGTERM. Runs in the server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import stat
import sys
from typing import Any, Final

from grpclib.events import RecvRequest, listen
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health

from snakebridge.wire.constants import SERVICE
from snakebridge.wire.h2_repr import use_cheap_data_frame_repr

from .auth import UNAUTHENTICATED_OK, Identities, TokenAuth, read_tokens
from .bounded import RequestGuard
from .bridge import Bridge
from .config import ConfigError, ServerConfig, _is_loopback, parse_listen
from .connections import ConnectionLimits, grpc_configuration, raise_open_files_limit
from .grpc_server import GrpcServer
from .logs import configure as configure_logging
from .metrics_http import MetricsServer
from .reflection import with_reflection
from .sandbox.report import root_warning, sandbox_report
from .service import BridgeService, size_advice
from .supervisor.spawn import WorkerStartError
from .tls import server_ssl_context

log = logging.getLogger("snakebridge.server")

POOL_HEALTH_PREFIX = "snakebridge.pool."  # + pool name: that pool's grpc.health service


class _HealthName:
    """A name to register health checks under. grpclib's ``Health`` names a service after
    the first method path of its ``__mapping__()`` (``/<service>/<method>``)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __mapping__(self) -> dict[str, Any]:
        return {f"/{self.service}/Check": None}


#: The cyclic GC's first threshold in the server (CPython's default: 700 allocations).
#: With thousands of calls in flight (one task, future and frame each), every young
#: collection walks them all: at 8,000 in flight the server spent 207-230 us of CPU a call
#: against 91-107 at 200; with this threshold, 103-108 against 79-85 (same run).
GC_THRESHOLD: Final = 50_000


def tune_gc() -> None:
    """Fewer collections, and none of the start-up objects: what the server holds for good
    (modules, config, pools) is frozen out of every later collection."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, gen1, gen2)


def _bound_address(server: GrpcServer, config: ServerConfig) -> str:
    if config.uds:
        return f"unix://{config.uds}"
    port = server.port or config.port
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{host}:{port}"


def _warn_if_tenants_unknown(bridge: Bridge, identities: Identities) -> None:
    for pool in bridge.pools.values():
        if pool.isolation == "tenant" and not identities.authenticated:
            log.warning(
                "pool %s: isolation tenant without --token-file or --tls-client-ca: "
                "every client is the one tenant, served by one worker",
                pool.name,
            )


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM arrives)."""
    stop = stop or asyncio.Event()
    use_cheap_data_frame_repr()  # see snakebridge/_h2_repr.py: a big part of large requests
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bridge = Bridge(config)
    bound_socket = False
    metrics_server: MetricsServer | None = None
    try:
        await bridge.start()
        identities = Identities(
            tokens=read_tokens(config.token_file) if config.token_file else None,
            certificates=bool(config.tls_client_ca),
        )
        service = BridgeService(bridge, identities)
        _warn_if_tenants_unknown(bridge, identities)
        serving = ServiceStatus()
        # One status per pool; the overall one ("" and the Bridge service) ignores them.
        pool_status = {name: ServiceStatus() for name in bridge.pools}
        checks: dict[Any, list[ServiceStatus]] = {OVERALL: [serving], service: [serving]}
        for pool in bridge.pools.values():
            status = pool_status[pool.name]
            checks[_HealthName(POOL_HEALTH_PREFIX + pool.name)] = [status]
            # NOT_SERVING for good once the drain began, whatever the pool reports.
            pool.on_health = lambda ok, status=status: status.set(ok and not stop.is_set())
        requests = RequestGuard(
            bridge_prefix=SERVICE,
            bridge_limit=service.max_request,
            open_prefixes=UNAUTHENTICATED_OK,
            read_timeout=config.handshake_timeout,
            max_watches=config.max_health_watches,
            watch_duration=config.idle_timeout,
            bridge_advice=size_advice(config.max_message_size),
        )
        server = GrpcServer(
            requests.services(with_reflection([service, Health(checks)])),
            config=grpc_configuration(config),
            limits=ConnectionLimits.from_config(config),
        )
        raise_open_files_limit(config.max_connections)
        ssl_context = server_ssl_context(config)
        if config.token_file:
            listen(server, RecvRequest, TokenAuth(identities))
        if config.uds:
            _remove_stale_socket(config.uds)
            old_umask = os.umask(0o177)  # the socket is created 0600: owner only
            try:
                await server.start(path=config.uds)
                bound_socket = True
            finally:
                os.umask(old_umask)
        else:
            await server.start(config.host, config.port, ssl=ssl_context)
            _warn_if_unauthenticated(config)
        if config.metrics and service.metrics is not None:
            metrics_host, metrics_port = parse_listen(config.metrics)
            metrics = service.metrics
            metrics_server = MetricsServer(
                metrics_host, metrics_port, lambda: metrics.render(service.gauges())
            )
            await metrics_server.start()
            log.info("metrics on http://%s/metrics", metrics_server.address)
        pools = ", ".join(
            f"pool {p.name}: {p.size} workers (pids {' '.join(str(w.pid) for w in p.workers if w)})"
            for p in bridge.pools.values()
        )
        for pool in bridge.pools.values():
            level, layers = sandbox_report(pool.workers)
            log.info("pool %s: sandbox level %s (%s)", pool.name, level, "; ".join(layers))
            warning = root_warning(pool.workers)
            if warning is not None:
                log.warning("pool %s: %s", pool.name, warning)
        serving.set(True)
        for pool in bridge.pools.values():
            pool_status[pool.name].set(pool.healthy)
        tune_gc()
        log.info("bridge-server SERVING on %s (%s)", _bound_address(server, config), pools)
        try:
            await stop.wait()
        finally:
            serving.set(False)  # health: NOT_SERVING at once
            for status in pool_status.values():
                status.set(False)
            log.info("bridge-server draining (up to %gs)", config.drain_grace)
            cancelled = await service.drain(config.drain_grace)
            if cancelled:
                log.warning("cancelled %d call(s) still running after the drain", cancelled)
            await service.exchanges_ended(timeout=2.0)
            log.info("bridge-server stopping")
            server.close()
            await server.wait_closed()
    finally:
        if metrics_server is not None:  # served through the drain: it can be watched
            await metrics_server.close()
        await bridge.close()
        if bound_socket and config.uds:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.uds)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            # A repeated stop signal (orchestrators send them) must not turn a clean
            # shutdown into a death by signal in its last moments.
            signal.signal(sig, signal.SIG_IGN)
        log.info("bridge-server stopped")


def _warn_if_unauthenticated(config: ServerConfig) -> None:
    if config.tls_cert and not (config.token_file or config.tls_client_ca or config.insecure):
        if not _is_loopback(config.host):
            log.warning(
                "serving TLS on %s without --token-file or --tls-client-ca: traffic is "
                "encrypted, but any client that reaches the port can run code",
                config.host,
            )


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by an earlier run; refuse to delete anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"--uds {path} exists and is not a socket; refusing to replace it")
    os.unlink(path)


def address_in_use(config: ServerConfig) -> str | None:
    """Why the server could not listen where ``config`` says (another process holds the
    address), or None. A port of 0 is always free."""
    if config.uds:
        try:
            mode = os.lstat(config.uds).st_mode
        except FileNotFoundError:
            return None
        if not stat.S_ISSOCK(mode):
            return f"--uds {config.uds} exists and is not a socket"
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(config.uds)
            except OSError:
                return None  # a socket left behind: the server replaces it
        return f"--uds {config.uds}: a server is already listening there"
    places = [(config.host, config.port, "--listen")]
    if config.metrics:
        places.append((*parse_listen(config.metrics), "--metrics"))
    for host, port, flag in places:
        if port == 0:
            continue
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            return f"{flag} {host}:{port}: {exc}"
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                # As asyncio's server does: only a live listener makes bind() fail.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    return f"{flag} {host}:{port}: {exc.strerror or exc}"
    return None


async def check_pools(config: ServerConfig) -> list[str]:
    """Start every pool once, report each one's sandbox, stop them. Raises what a real
    start would raise (``WorkerStartError`` for a worker that cannot start or reaches a
    sandbox level below ``min_sandbox``)."""
    bridge = Bridge(config)
    try:
        await bridge.start()
        lines = []
        for pool in bridge.pools.values():
            level, layers = sandbox_report(pool.workers)
            lines.append(f"pool {pool.name}: {pool.live}/{pool.size} workers started")
            lines.append(f"pool {pool.name}: isolation {_isolation_line(pool)}")
            lines.append(f"pool {pool.name}: sandbox level {level}")
            lines.extend(f"  {layer}" for layer in layers)
            warning = root_warning(pool.workers)
            if warning is not None:
                lines.append(f"pool {pool.name}: WARNING: {warning}")
        return lines
    finally:
        await bridge.close()


def _isolation_line(pool: Any) -> str:
    if not pool.dedicated:
        return "shared (clients of the pool share its workers; see docs/security.md)"
    return (
        f"{pool.isolation} (a worker serves one {pool.isolation}; "
        f"{pool.spares} spare(s) kept started, at most {pool.size} workers)"
    )


def check(config: ServerConfig) -> int:
    """``bridge-server check``: 0 when the config is valid and every pool starts."""
    taken = address_in_use(config)
    if taken is not None:
        print(f"bridge-server check: FAILED: {taken}", file=sys.stderr)
        return 1
    try:
        with _runner(config) as runner:
            lines = runner.run(check_pools(config))
    except (OSError, WorkerStartError, ConfigError) as exc:
        print(f"bridge-server check: FAILED: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    print("bridge-server check: OK")
    return 0


def _runner(config: ServerConfig) -> asyncio.Runner:
    configure_logging(config.log_level, config.log_format)
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def run(config: ServerConfig) -> int:
    with _runner(config) as runner:
        try:
            runner.run(serve(config))
        except (OSError, WorkerStartError, ConfigError) as exc:
            log.error("bridge-server failed to start: %s", exc)
            return 1
    return 0
