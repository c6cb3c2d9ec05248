"""Each error message names the fact the user needs (issue #19, finding 4), against a real
server: which call timed out and under which correlation id, which signal killed a
worker, why a connection was refused, what address form is wanted, which limit cannot be
raised, which dtype cannot travel, and which public call replaces a refused dunder."""

from __future__ import annotations

import re
from typing import Any

import pytest

import snakebridge
from snakebridge import errors

from .conftest import ServerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

H = "error_helpers"
MiB = 1024 * 1024


async def test_a_timeout_names_the_call_and_the_correlation_id_the_server_logged(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--log-level", "debug")
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(errors.CallTimeout) as info:
            await client.call(H, "sleep", [30], timeout=0.5)
    # The client's deadline and the server's are the same instant: either side may say
    # it first, and both name the call.
    assert f"call {H}.sleep did not finish within its timeout (0.5s)" in str(info.value)
    cid = info.value.correlation_id
    assert cid.startswith("sbc-")  # the client made it, since it set a deadline
    srv.wait_for_log(re.escape(cid))


@pytest.mark.parametrize(
    ("signal_name", "number"), [("SIGKILL", 9), ("SIGSEGV", 11), ("SIGTERM", 15)]
)
async def test_a_worker_killed_by_a_signal_names_the_signal(
    make_server: Any, signal_name: str, number: int
) -> None:
    srv = make_server("--workers", "1")
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(errors.WorkerCrashed) as info:
            await client.call(H, "kill_self", [signal_name])
        assert await client.call("math", "sqrt", [4]) == 2.0  # replaced
    assert f"killed by {signal_name} (signal {number})" in str(info.value)


async def test_a_client_refused_at_the_connection_cap_is_not_told_to_pass_ssl(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--max-connections", "1")
    async with snakebridge.Client(srv.address) as held:
        await held.call("math", "sqrt", [4])
        for _ in range(3):  # the refusal races the first stream: each way says the same
            with pytest.raises(errors.ConnectionFailed) as info:
                async with snakebridge.Client(srv.address) as refused:
                    await refused.call("math", "sqrt", [4])
            message = str(info.value)
            assert "ssl=" not in message
            assert "GOAWAY" in message and "--max-connections" in message


@pytest.mark.parametrize(
    "address", ["http://127.0.0.1:50051", "https://bridge.example:443", "grpc://h:1"]
)
def test_a_url_is_refused_with_the_address_form(address: str) -> None:
    with pytest.raises(ValueError, match=r"is not an address; use HOST:PORT .* unix:///"):
        snakebridge.Client(address)


async def test_an_oversized_argument_is_not_told_to_raise_a_limit_at_its_maximum(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.LimitExceeded) as info:
            await client.call("builtins", "len", [b"x" * (70 * MiB)])
    assert "raise --max-message-size" not in str(info.value)
    assert "already the limit" in str(info.value)


async def test_an_oversized_argument_below_the_maximum_is_told_to_raise_it(
    make_server: Any,
) -> None:
    srv = make_server("--workers", "1", "--max-message-size", str(MiB))
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(errors.LimitExceeded, match="raise --max-message-size"):
            await client.call("builtins", "len", [b"x" * (6 * MiB)])


async def test_an_object_dtype_array_names_its_dtype(server: ServerProcess) -> None:
    np = pytest.importorskip("numpy")
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.SerializationError, match="with dtype object") as info:
            await client.call("builtins", "len", [np.array([1, "a"], dtype=object)])
    assert ".tolist()" in str(info.value)


async def test_a_refused_getitem_suggests_operator_getitem(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        frame = await client.call_class("collections", "OrderedDict", [[("a", 1)]])
        with pytest.raises(errors.PolicyError) as info:
            await client.call_method(frame, "__getitem__", ["a"])
        assert "client.call('operator', 'getitem', [ref, key])" in str(info.value)
        assert await client.call("operator", "getitem", [frame, "a"]) == 1  # and it works
