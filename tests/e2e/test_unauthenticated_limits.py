"""What a peer without the token can make the server spend: every such path is bounded.

The attackers are raw HTTP/2 clients (``h2`` over a socket, as in ``test_connections``),
since the SDK would never send these frames; the real client is the SDK with the token.
Memory is the server's own: its peak RSS (``VmHWM``, reset through ``clear_refs`` before
each attack) against its RSS before.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import FlowControlError, StreamClosedError

import snakebridge

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

MiB = 1024 * 1024
TOKEN = "s3cret-token"
CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
RSS_GROWTH_LIMIT_MIB = 50  # the requirement (issue #10, item 7)


def _token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return str(path)


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class Rss:
    """The server's RSS before an attack, and how far its peak rose above it since."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # "5" resets the peak (VmHWM) to the current RSS (Linux >= 4.0; ours: root).
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        self.before = _status_kib(pid, "VmRSS")

    def growth_mib(self) -> float:
        peak = max(_status_kib(self.pid, "VmHWM"), _status_kib(self.pid, "VmRSS"))
        return (peak - self.before) / 1024


class Attacker:
    """A raw HTTP/2 client (with no token unless a stream is opened with one)."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.events: list[Event] = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def open(self, path: str, *, token: str = "") -> int:
        stream_id: int = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "bridge"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        self.h2.send_headers(stream_id, headers)
        return stream_id

    def receive(self) -> None:
        """Read what the server sent (blocking up to the socket timeout)."""
        data = self.sock.recv(1 << 20)
        if not data:
            self.closed = True
            return
        self.events.extend(self.h2.receive_data(data))
        self.flush()  # window updates and acks

    def wait(self, predicate: Any) -> None:
        while not predicate() and not self.closed:
            self.receive()

    def ended(self, stream_id: int) -> bool:
        return any(
            isinstance(e, (StreamEnded, StreamReset)) and e.stream_id == stream_id
            for e in self.events
        )

    def grpc_status(self, stream_id: int) -> int | None:
        for e in self.events:
            if isinstance(e, (ResponseReceived, TrailersReceived)) and e.stream_id == stream_id:
                headers: dict[Any, Any] = dict(e.headers)
                status = headers.get("grpc-status", headers.get(b"grpc-status"))
                if status is not None:
                    return int(status)
        return None

    def got_data(self, stream_id: int) -> bool:
        return any(isinstance(e, DataReceived) and e.stream_id == stream_id for e in self.events)

    def goaway(self) -> ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, ConnectionTerminated)), None)

    def close(self) -> None:
        self.sock.close()


async def _served(address: str) -> None:
    async with snakebridge.Client(address, token=TOKEN) as client:
        with anyio.fail_after(10):
            assert await client.call("math", "sqrt", [16]) == 4.0


@pytest.mark.parametrize(
    ("path", "token"),
    [(CHECK, ""), (REFLECTION, TOKEN)],  # health needs no token; reflection does
    ids=["health-check", "reflection"],
)
async def test_a_huge_request_message_is_refused_from_its_length_prefix(
    make_server: Any, tmp_path: Path, path: str, token: str
) -> None:
    srv = make_server("--workers", "1", "--token-file", _token_file(tmp_path))
    await _served(srv.address)  # warm: handler paths, a connection
    rss = Rss(srv.pid)
    declared = 256 * MiB
    attacker = Attacker(srv.address)
    pushed = 0
    try:
        stream = attacker.open(path, token=token)
        attacker.h2.send_data(stream, struct.pack(">?I", False, declared))
        chunk = b"\0" * (64 * 1024)
        # Push the body as fast as flow control lets us, until the server answers.
        while pushed < declared and not attacker.ended(stream) and not attacker.closed:
            window = attacker.h2.local_flow_control_window(stream)
            try:
                while window > 0 and pushed < declared:
                    size = min(window, len(chunk), attacker.h2.max_outbound_frame_size)
                    attacker.h2.send_data(stream, chunk[:size])
                    pushed += size
                    window -= size
            except (FlowControlError, StreamClosedError):
                pass
            attacker.flush()
            attacker.receive()
        status = attacker.grpc_status(stream)
    finally:
        attacker.close()
    grown = rss.growth_mib()
    print(f"pushed {pushed / MiB:.1f} of {declared / MiB:.0f} MiB; server RSS +{grown:.1f} MiB")
    assert status == 8  # RESOURCE_EXHAUSTED
    assert pushed < 16 * MiB  # refused at the prefix: flow control stopped the rest
    assert grown < RSS_GROWTH_LIMIT_MIB, grown
    await _served(srv.address)


async def test_health_watch_streams_are_capped_and_end_at_the_idle_timeout(
    make_server: Any, tmp_path: Path
) -> None:
    cap = 6
    srv = make_server(
        "--workers",
        "1",
        "--token-file",
        _token_file(tmp_path),
        "--max-health-watches",
        str(cap),
        "--idle-timeout",
        "2",
    )
    attackers = [Attacker(srv.address) for _ in range(3)]
    try:
        opened: list[tuple[Attacker, int]] = []
        for attacker in attackers:
            for _ in range(5):  # one more than a connection may hold
                stream = attacker.open(WATCH)
                attacker.h2.send_data(stream, b"\0\0\0\0\0", end_stream=True)  # empty request
                opened.append((attacker, stream))
            attacker.flush()
        for attacker, stream in opened:  # each one is either watching or refused
            attacker.wait(lambda a=attacker, s=stream: a.got_data(s) or a.ended(s))
        watching = [(a, s) for a, s in opened if a.got_data(s)]
        refused = [(a, s) for a, s in opened if a.grpc_status(s) == 8]
        assert len(watching) == cap, (len(watching), srv.log)
        assert len(refused) == len(opened) - cap
        # A real client is served meanwhile, and gets a Watch slot back once one ends.
        await _served(srv.address)
        # The Watch streams end at the idle timeout (status OK), not never.
        for attacker, stream in watching:
            attacker.wait(lambda a=attacker, s=stream: a.ended(s))
            assert attacker.grpc_status(stream) == 0
    finally:
        for attacker in attackers:
            attacker.close()
    srv.wait_for_log("refused .* health Watch stream")


def test_a_health_request_whose_message_never_comes_ends_and_the_connection_idles_out(
    make_server: Any, tmp_path: Path
) -> None:
    srv = make_server(
        "--workers",
        "1",
        "--token-file",
        _token_file(tmp_path),
        "--handshake-timeout",
        "1",
        "--idle-timeout",
        "1",
    )
    attacker = Attacker(srv.address)
    try:
        stream = attacker.open(CHECK)  # headers, then nothing: no message, no end of stream
        attacker.flush()
        attacker.wait(lambda: attacker.ended(stream))
        assert attacker.grpc_status(stream) == 4  # DEADLINE_EXCEEDED
        attacker.wait(lambda: False)  # then the connection is idle, and closed
        terminated = attacker.goaway()
    finally:
        attacker.close()
    assert terminated is not None and terminated.additional_data == b"idle"


def _storm(address: str, pairs: int, outcome: dict[str, Any]) -> None:
    """Open a stream and reset it, ``pairs`` times, in frames written straight to the
    socket (h2 builds the first ones; later ones repeat its fully indexed header block)."""
    attacker = Attacker(address, timeout=20.0)
    try:
        attacker.open(CHECK)
        attacker.flush()
        second = attacker.open(CHECK)
        frame = attacker.h2.data_to_send()  # HEADERS of the second stream: indexed only
        attacker.sock.sendall(frame)
        block = frame[9:]
        sent = 0
        batch = bytearray()
        stream_id = second + 2
        while sent < pairs:
            for _ in range(500):
                batch += struct.pack(">I", len(block))[1:] + b"\x01\x04"
                batch += struct.pack(">I", stream_id) + block
                batch += b"\x00\x00\x04\x03\x00" + struct.pack(">I", stream_id)
                batch += struct.pack(">I", ErrorCodes.CANCEL)
                stream_id += 2
            try:
                attacker.sock.sendall(batch)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 500
            batch.clear()
        outcome["sent"] = sent
        attacker.sock.settimeout(10.0)
        try:
            while data := attacker.sock.recv(1 << 20):
                # Only the GOAWAY matters; h2 may object to frames for streams it forgot.
                if b"too_many_resets" in data:
                    outcome["goaway"] = True
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    finally:
        attacker.close()


async def test_a_rapid_reset_storm_is_sent_away_and_other_clients_are_served(
    make_server: Any, tmp_path: Path
) -> None:
    srv = make_server("--workers", "1", "--token-file", _token_file(tmp_path))
    await _served(srv.address)
    rss = Rss(srv.pid)
    outcome: dict[str, Any] = {"goaway": False, "sent": 0}
    storm = threading.Thread(target=_storm, args=(srv.address, 50_000, outcome))
    async with snakebridge.Client(srv.address, token=TOKEN) as client:
        storm.start()
        try:
            with anyio.fail_after(10):
                for n in range(20):  # served during the storm
                    assert await client.call("math", "sqrt", [n * n]) == n
        finally:
            await anyio.to_thread.run_sync(storm.join, 30)
    grown = rss.growth_mib()
    print(f"sent {outcome['sent']} open+reset pairs; server RSS +{grown:.1f} MiB")
    assert outcome["goaway"], srv.log
    assert grown < RSS_GROWTH_LIMIT_MIB, grown
    srv.wait_for_log("too many stream resets")
    await _served(srv.address)
