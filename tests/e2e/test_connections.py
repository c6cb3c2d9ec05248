"""Connection limits: --max-connections, --max-streams-per-connection, --idle-timeout,
--handshake-timeout, keepalive pings and ping-abuse protection.

Raw clients here are plain sockets driven by ``h2`` (the HTTP/2 library grpclib uses), so the
tests see the frames the server sends: SETTINGS, PING, GOAWAY, end of stream.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    Event,
    PingReceived,
    RemoteSettingsChanged,
    ResponseReceived,
)
from h2.settings import SettingCodes

import snakebridge
from snakebridge import errors
from snakebridge._generated.snakebridge.v1 import CallKind, CallRequest
from snakebridge.wire import codec
from snakebridge.wire.constants import PROTOCOL_VERSION

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

IDLE_CONNECTIONS = 1000


class RawH2:
    """A blocking HTTP/2 client connection on a socket, for looking at the server's frames."""

    def __init__(self, address: str, *, preface: bool = True, timeout: float = 15.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.events: list[Event] = []
        if preface:
            self.h2.initiate_connection()
            self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def read_until_closed(self) -> list[Event]:
        """Every event until the server closes the connection (h2's own answers, such as
        PING acks, are never sent)."""
        while data := self.sock.recv(65536):
            self.events.extend(self.h2.receive_data(data))
        return self.events

    def read_until(self, predicate: Any) -> Event:
        while True:
            for event in self.events:
                if predicate(event):
                    return event
            data = self.sock.recv(65536)
            assert data, f"the server closed the connection; events: {self.events}"
            self.events.extend(self.h2.receive_data(data))

    def is_open(self) -> bool:
        """True unless the server has closed the connection (read without blocking)."""
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            while data := self.sock.recv(65536):
                self.events.extend(self.h2.receive_data(data))
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(timeout)
        return False

    def close(self) -> None:
        self.sock.close()


def goaway(events: list[Event]) -> ConnectionTerminated:
    found = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert found, f"no GOAWAY among {events}"
    return found[0]


@pytest.fixture
def many_fds() -> Iterator[int]:
    """Raise this process's soft open-files limit to the hard one (the server does the same
    for itself); skip when even that cannot hold the idle connections and the test's own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE_CONNECTIONS + 300
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}: cannot hold the connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    yield need
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_a_thousand_idle_connections_do_not_stop_real_calls(
    make_server: Any, many_fds: int
) -> None:
    srv = make_server("--workers", "1")
    fds_before = open_fds(srv.pid)
    idle = [RawH2(srv.address) for _ in range(IDLE_CONNECTIONS)]
    try:
        # Each is greeted with the server's SETTINGS: accepted, and speaking HTTP/2.
        for conn in idle:
            conn.read_until(lambda e: isinstance(e, RemoteSettingsChanged))
        async with snakebridge.Client(srv.address) as client:
            assert await client.call("math", "sqrt", [16]) == 4.0
            assert [x async for x in client.stream("builtins", "range", [3])] == [0, 1, 2]
        assert all(conn.is_open() for conn in idle)
        # The server really holds them: one fd each.
        assert open_fds(srv.pid) >= fds_before + IDLE_CONNECTIONS
    finally:
        for conn in idle:
            conn.close()


async def test_connections_beyond_the_cap_are_refused_and_the_others_work(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--max-connections", "3")
    clients = [snakebridge.Client(srv.address) for _ in range(3)]
    try:
        for client in clients:
            await client.connect()
        # The refusal (GOAWAY, then close) races the refused client's first stream: it may
        # land before the stream opens, under it, or after the request went out. Every way
        # is ConnectionFailed; a few refused clients meet more than one of them.
        for _ in range(10):
            with pytest.raises(errors.ConnectionFailed):
                async with snakebridge.Client(srv.address) as extra:
                    await extra.call("math", "sqrt", [16])
        refused = RawH2(srv.address)
        terminated = goaway(refused.read_until_closed())
        assert terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert terminated.additional_data == b"too many connections"
        for client in clients:
            assert await client.call("math", "sqrt", [9]) == 3.0
        srv.wait_for_log(r"refused \d+ connection\(s\): 3 open")
        # A place freed is a place taken: once the server sees a client leave, a new one
        # gets in (the server notices the close asynchronously, hence the retries).
        await clients.pop().close()
        with anyio.fail_after(10):
            while True:
                try:
                    async with snakebridge.Client(srv.address) as late:
                        assert await late.call("math", "sqrt", [4]) == 2.0
                    break
                except errors.ConnectionFailed:
                    await anyio.sleep(0.05)
    finally:
        for client in clients:
            await client.close()


def test_the_server_advertises_max_concurrent_streams(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-streams-per-connection", "7")
    conn = RawH2(srv.address)
    try:
        conn.read_until(
            lambda e: (
                isinstance(e, RemoteSettingsChanged)
                and SettingCodes.MAX_CONCURRENT_STREAMS in e.changed_settings
                and e.changed_settings[SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 7
            )
        )
        assert conn.h2.remote_settings.max_concurrent_streams == 7
    finally:
        conn.close()


async def test_calls_beyond_the_stream_limit_queue_in_the_client(make_server: Any) -> None:
    srv = make_server("--workers", "2", "--max-streams-per-connection", "1")
    async with snakebridge.Client(srv.address) as client:
        results: list[float] = []

        async def one(n: int) -> None:
            results.append(await client.call("math", "sqrt", [n * n]))

        async with anyio.create_task_group() as tg:
            for n in range(1, 9):
                tg.start_soon(one, n)
    assert sorted(results) == [float(n) for n in range(1, 9)]


async def test_an_idle_connection_is_closed_with_goaway_and_the_sdk_reconnects(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--idle-timeout", "0.5", "--log-level", "debug")
    raw = RawH2(srv.address)
    try:
        terminated = goaway(raw.read_until_closed())
    finally:
        raw.close()
    assert terminated.error_code == ErrorCodes.NO_ERROR
    assert terminated.additional_data == b"idle"
    async with snakebridge.Client(srv.address) as client:
        assert await client.call("math", "sqrt", [16]) == 4.0

        def idle_closes() -> int:
            return sum(
                "closing connection from" in ln and ln.endswith(": idle") for ln in srv.lines
            )

        def until_closed_again(seen: int) -> None:
            deadline = time.monotonic() + 10
            while idle_closes() <= seen:
                assert time.monotonic() < deadline, srv.log
                time.sleep(0.05)

        # Until the server has closed this client's connection too (its log says so).
        await anyio.to_thread.run_sync(until_closed_again, idle_closes())
        assert await client.call("math", "sqrt", [25]) == 5.0


def test_a_client_that_sends_no_preface_is_closed(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--handshake-timeout", "0.5", "--idle-timeout", "0")
    silent = RawH2(srv.address, preface=False)
    try:
        assert silent.sock.recv(65536)  # the server's SETTINGS and its GOAWAY...
        while silent.sock.recv(65536):
            pass  # ...then the end of the connection
    finally:
        silent.close()
    srv.wait_for_log("no HTTP/2 preface in time")


def test_a_client_that_floods_pings_is_sent_away(make_server: Any) -> None:
    srv = make_server("--workers", "1")
    conn = RawH2(srv.address)
    try:
        for n in range(5):
            conn.h2.ping(struct.pack("!Q", n))
        conn.flush()
        terminated = goaway(conn.read_until_closed())
    finally:
        conn.close()
    assert terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert terminated.additional_data == b"too_many_pings"
    srv.wait_for_log("too many pings")


def _sleep_call(seconds: float) -> bytes:
    request = CallRequest(
        protocol_version=PROTOCOL_VERSION,
        kind=CallKind(CallKind.FUNCTION),
        module="time",
        name="sleep",
        session_id=uuid.uuid4().hex,
        args=codec.encode([[seconds], {}]),
    )
    body = bytes(request)
    return struct.pack("!BI", 0, len(body)) + body


async def test_keepalive_closes_a_connection_whose_peer_stops_answering_pings(
    make_server: Any,
) -> None:
    srv = make_server(
        "--workers", "1", "--keepalive-time", "0.3", "--keepalive-timeout", "0.5"
    )  # fmt: skip
    # A client whose pings go unanswered (the raw one never sends h2's acks) loses its
    # connection while its call is still running: no response ever arrives.
    deaf = RawH2(srv.address)
    try:
        deaf.h2.send_headers(
            1,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/snakebridge.v1.Bridge/Call"),
                (":authority", srv.address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        deaf.h2.send_data(1, _sleep_call(5.0), end_stream=True)
        deaf.sock.sendall(deaf.h2.data_to_send())
        events = deaf.read_until_closed()
    finally:
        deaf.close()
    assert any(isinstance(e, PingReceived) for e in events)
    assert not any(isinstance(e, ResponseReceived) for e in events)
    # The SDK answers pings, so the same slow call through it completes.
    async with snakebridge.Client(srv.address) as client:
        assert await client.call("time", "sleep", [1.5]) is None
