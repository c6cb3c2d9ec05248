"""Every SDK error class, provoked for real against a running server."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import msgpack
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

import snakebridge
from snakebridge import errors
from snakebridge._client import Invocation
from snakebridge._generated.snakebridge import v1 as pb
from snakebridge.wire import codec
from snakebridge.wire.constants import ERROR_TRAILER, KIND_METHOD, SERVICE
from snakebridge.wire.messages import CallReplyWire, CallRequestWire

from .conftest import ServerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_remote_exception_is_a_remote_error_and_the_builtin(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(ZeroDivisionError) as info:
            await client.call("operator", "truediv", [1, 0])
    err = info.value
    assert isinstance(err, errors.RemoteError) and isinstance(err, errors.BridgeError)
    assert err.type_name == "builtins.ZeroDivisionError"
    assert err.message == "division by zero"
    assert "ZeroDivisionError" in err.traceback and "Traceback" in err.traceback


async def test_non_builtin_remote_exception_keeps_its_type_name(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.RemoteError) as info:
            await client.call("remote_helpers", "raise_custom")
    assert type(info.value) is errors.RemoteError
    assert info.value.type_name == "remote_helpers.CustomError"
    assert "custom failure" in str(info.value)


async def test_a_remote_stop_iteration_is_a_remote_error_not_a_local_signal(
    server: ServerProcess,
) -> None:
    """``next()`` on an exhausted remote iterator: a StopIteration raised out of the SDK's
    coroutine would become RuntimeError, and one caught as a loop's end would end it."""
    async with snakebridge.Client(server.address) as client:
        empty = await client.call("builtins", "iter", [[]])
        with pytest.raises(errors.RemoteError) as info:
            await client.call("builtins", "next", [empty])
        assert await client.call("math", "sqrt", [16]) == 4.0  # the worker serves on
    assert info.value.type_name == "builtins.StopIteration"
    assert not isinstance(info.value, StopIteration | StopAsyncIteration | RuntimeError)


async def test_missing_module_and_attribute_are_remote_errors(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(ModuleNotFoundError):
            await client.call("no_such_module_xyz", "f")
        with pytest.raises(AttributeError):
            await client.call("math", "no_such_function")


async def test_sys_exit_in_user_code_is_an_error_not_a_crash(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        before = {w.pid for w in (await client.describe()).pools[0].workers}
        with pytest.raises(errors.RemoteError) as info:
            await client.call("remote_helpers", "exit_call")
        assert info.value.type_name == "builtins.SystemExit"
        after = {w.pid for w in (await client.describe()).pools[0].workers}
    assert before == after


async def test_unencodable_argument_is_a_serialization_error(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.SerializationError, match="object"):
            await client.call("remote_helpers", "echo", [object()])


async def test_bad_requests_are_rejected_before_reaching_a_worker(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.BadRequest, match="module"):
            await client.call("", "sqrt", [1])
        with pytest.raises(errors.BadRequest, match="relative"):
            await client.call(".math", "sqrt", [1])
        with pytest.raises(errors.BadRequest, match="malformed ref"):
            await client._invoke(
                Invocation(
                    kind=KIND_METHOD,
                    module="",
                    name="m",
                    target_ref="not-a-ref",
                    session_id=client.current_session(),
                    args=[],
                    kwargs=None,
                )
            )


async def test_unknown_helper_is_helper_not_found(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.HelperNotFound, match="nope"):
            await client.call_helper("nope", [])


async def test_unknown_pool_is_pool_unavailable(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(errors.PoolUnavailable, match="no pool named 'gpu'"):
            await client.call("math", "sqrt", [4], pool="gpu")


async def test_released_ref_on_the_server_is_ref_not_found(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        thing = await client.call_class("remote_helpers", "Thing", [])
        await client.release_session(client.current_session())
        with pytest.raises(errors.RefNotFound):
            await client.get_attr(thing, "name")


async def test_refs_of_two_workers_in_one_call_are_a_clear_error(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        first = await client.call_class("remote_helpers", "Thing", ["a"])
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call, "remote_helpers", "sleep", [0.6])
            await anyio.sleep(0.2)
            second = await client.call_class("remote_helpers", "Thing", ["b"])
        assert first.id.split(".")[2] != second.id.split(".")[2]
        with pytest.raises(errors.BadRequest, match="two workers"):
            await client.call("remote_helpers", "type_names", [[first, second]])


async def test_protocol_version_mismatch_is_a_clear_error(server: ServerProcess) -> None:
    host, port = server.address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        async with channel.request(
            SERVICE + "Call", Cardinality.UNARY_UNARY, CallRequestWire, CallReplyWire
        ) as stream:
            req = CallRequestWire(protocol_version=99, kind=1, module="math", name="sqrt")
            await stream.send_message(req, end=True)
            with pytest.raises(GRPCError) as info:
                await stream.recv_message()
        assert info.value.status is Status.FAILED_PRECONDITION
        assert "protocol 99" in (info.value.message or "")
    finally:
        channel.close()


async def test_sdk_raises_protocol_mismatch_from_the_trailer(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        req = pb.DescribeRequest(protocol_version=7)
        with pytest.raises(errors.ProtocolMismatch, match="protocol 7"):
            await client._unary("Describe", req, pb.DescribeRequest, pb.DescribeReply, 5)


async def test_unreachable_server_is_connection_failed() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(errors.ConnectionFailed):
        async with snakebridge.Client(f"127.0.0.1:{port}") as client:
            await client.call("math", "sqrt", [1])


async def test_timeout_is_call_timeout_and_also_a_timeout_error(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(TimeoutError) as info:
            await client.call("remote_helpers", "sleep", [5], timeout=0.3)
        assert isinstance(info.value, errors.CallTimeout)


async def test_server_side_default_timeout_is_call_timeout(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--call-timeout", "0.3")
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(errors.CallTimeout, match=r"0\.3s"):
            await client.call("remote_helpers", "sleep", [5])
        # the interrupted worker is free again at once
        with anyio.fail_after(2):
            assert await client.call("math", "sqrt", [9]) == 3.0


async def test_full_queue_is_pool_saturated(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-queued", "2")
    async with snakebridge.Client(srv.address) as client:
        outcomes: list[Any] = []

        async def one() -> None:
            try:
                outcomes.append(await client.call("remote_helpers", "sleep", [0.3]))
            except errors.PoolSaturated as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
    assert outcomes.count(0.3) == 2
    assert sum(isinstance(o, errors.PoolSaturated) for o in outcomes) == 4


async def test_ref_cap_per_session_is_limit_exceeded(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-refs-per-session", "3")
    async with snakebridge.Client(srv.address) as client:
        refs = [await client.call_class("remote_helpers", "Thing", []) for _ in range(3)]
        with pytest.raises(errors.LimitExceeded, match="refs"):
            await client.call_class("remote_helpers", "Thing", [])
        with pytest.raises(errors.LimitExceeded):  # one call creating many counts them all
            async with client.session() as s:
                await s.call("remote_helpers", "make_many", [4])
        await client.release_ref(refs[0])
        assert isinstance(await client.call_class("remote_helpers", "Thing", []), snakebridge.Ref)


async def test_session_cap_is_limit_exceeded(make_server: Any) -> None:
    srv = make_server("--workers", "1", "--max-sessions", "2")
    async with snakebridge.Client(srv.address) as client:
        await client.call("math", "sqrt", [1], session="s1")
        await client.call("math", "sqrt", [1], session="s2")
        with pytest.raises(errors.LimitExceeded, match="sessions"):
            await client.call("math", "sqrt", [1], session="s3")
        await client.release_session("s1")
        assert await client.call("math", "sqrt", [1], session="s3") == 1.0


async def test_error_classes_map_to_distinct_documented_statuses() -> None:
    expected = {
        errors.BridgeError: Status.INTERNAL,
        errors.RemoteError: Status.UNKNOWN,
        errors.BadRequest: Status.INVALID_ARGUMENT,
        errors.SerializationError: Status.INVALID_ARGUMENT,
        errors.RefNotFound: Status.NOT_FOUND,
        errors.HelperNotFound: Status.NOT_FOUND,
        errors.SessionLost: Status.FAILED_PRECONDITION,
        errors.WorkerCrashed: Status.ABORTED,
        errors.CallTimeout: Status.DEADLINE_EXCEEDED,
        errors.CallCancelled: Status.CANCELLED,
        errors.PoolSaturated: Status.RESOURCE_EXHAUSTED,
        errors.LimitExceeded: Status.RESOURCE_EXHAUSTED,
        errors.PoolUnavailable: Status.UNAVAILABLE,
        errors.ProtocolMismatch: Status.FAILED_PRECONDITION,
        errors.ConnectionFailed: Status.UNAVAILABLE,
        errors.Unauthenticated: Status.UNAUTHENTICATED,
    }
    for cls, status in expected.items():
        assert Status(int(cls.grpc_status)) is status, cls


async def test_malformed_argument_bytes_are_a_serialization_error_from_the_worker(
    server: ServerProcess,
) -> None:
    host, port = server.address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        async with channel.request(
            SERVICE + "Call", Cardinality.UNARY_UNARY, CallRequestWire, CallReplyWire
        ) as stream:
            req = CallRequestWire(
                protocol_version=1, kind=1, module="math", name="sqrt", args=b"\xc1"
            )
            await stream.send_message(req, end=True)
            with pytest.raises(GRPCError) as info:
                await stream.recv_message()
        assert info.value.status is Status.INVALID_ARGUMENT
    finally:
        channel.close()


def test_statuses_without_a_trailer_map_to_the_matching_error() -> None:
    from snakebridge._transport import _error_from_grpc

    cases = {
        Status.CANCELLED: errors.CallCancelled,
        Status.DEADLINE_EXCEEDED: errors.CallTimeout,
        Status.UNAVAILABLE: errors.ConnectionFailed,
        Status.INTERNAL: errors.BridgeError,
    }
    for status, cls in cases.items():
        assert type(_error_from_grpc(GRPCError(status, "x"), None)) is cls
    garbled = {"snakebridge-error-bin": b"\xc1 not msgpack"}
    assert type(_error_from_grpc(GRPCError(Status.NOT_FOUND, "x"), garbled)) is errors.BridgeError


async def _raw_call(
    server: ServerProcess, req: CallRequestWire
) -> tuple[GRPCError, dict[str, Any]]:
    """Send ``req`` with a bare grpclib channel; the error and its decoded trailer."""
    host, port = server.address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        async with channel.request(
            SERVICE + "Call", Cardinality.UNARY_UNARY, CallRequestWire, CallReplyWire
        ) as stream:
            await stream.send_message(req, end=True)
            with pytest.raises(GRPCError) as info:
                await stream.recv_message()
            metadata: Any = stream.trailing_metadata or {}
            trailer = msgpack.unpackb(metadata[ERROR_TRAILER])
    finally:
        channel.close()
    return info.value, trailer


@pytest.mark.parametrize(
    ("req", "code"),
    [
        # msgpack's FormatError has no text: "cannot decode value: " ended in a space.
        (
            CallRequestWire(protocol_version=1, kind=1, module="math", name="sqrt", args=b"\xc1"),
            "SerializationError",
        ),
        # A remote exception without a message: "builtins.GeneratorExit: ".
        (
            CallRequestWire(
                protocol_version=1,
                kind=1,
                module="remote_helpers",
                name="raise_base",
                args=codec.encode([["generator_exit"], {}]),
            ),
            "RemoteError",
        ),
    ],
    ids=["undecodable-args", "remote-exception-without-message"],
)
async def test_error_text_never_begins_or_ends_with_whitespace(
    server: ServerProcess, req: CallRequestWire, code: str
) -> None:
    error, trailer = await _raw_call(server, req)
    assert trailer["code"] == code
    message = error.message or ""
    assert message and message == message.strip(), repr(message)
    assert trailer["message"] == trailer["message"].strip()


def _args_with_ref(ref_id: str) -> bytes:
    ref = codec.RefPayload(False, ref_id, "s1", "default", "Thing")
    packed: bytes = msgpack.packb([[codec.ref_ext(ref)], {}], use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    "ref_id",
    [
        "not-a-ref",
        "a.b.c.d.e",
        "deadbeef.default.0.1.x",
        f"deadbeef.default.0.\u00b2.{'0' * 32}",
        "deadbeef.default.0.1.7",  # the old sequential form
    ],
)
@pytest.mark.parametrize("listed", [False, True], ids=["only-in-args", "also-in-arg_refs"])
async def test_malformed_ref_id_anywhere_in_a_call_is_bad_request(
    server: ServerProcess, ref_id: str, listed: bool
) -> None:
    """Inside ``args`` (which the server never decodes) it used to answer SessionLost, as
    if it were a ref of a dead worker; in ``arg_refs`` "²" passed str.isdigit()."""
    req = CallRequestWire(
        protocol_version=1,
        kind=1,
        module="remote_helpers",
        name="echo",
        session_id="s1",
        args=_args_with_ref(ref_id),
        arg_refs=[ref_id] if listed else [],
    )
    error, trailer = await _raw_call(server, req)
    assert (error.status, trailer["code"]) == (Status.INVALID_ARGUMENT, "BadRequest")
    assert "malformed ref id" in trailer["message"]


async def test_well_formed_ref_of_another_server_start_is_still_session_lost(
    server: ServerProcess,
) -> None:
    req = CallRequestWire(
        protocol_version=1,
        kind=1,
        module="remote_helpers",
        name="echo",
        session_id="s1",
        args=_args_with_ref(f"deadbeef.default.0.1.{'0' * 32}"),
    )
    error, trailer = await _raw_call(server, req)
    assert (error.status, trailer["code"]) == (Status.FAILED_PRECONDITION, "SessionLost")


async def test_user_codes_own_timeout_error_is_a_remote_error_not_a_call_timeout(
    server: ServerProcess,
) -> None:
    # The bridge's deadline handler caught the remote TimeoutError (a RemoteError that
    # subclasses the builtin) and answered CallTimeout, as if the call had overrun.
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(TimeoutError) as info:
            await client.call("remote_helpers", "raise_timeout", ["db read timed out"])
        assert isinstance(info.value, errors.RemoteError)
        assert not isinstance(info.value, errors.CallTimeout)
        assert info.value.message == "db read timed out"
        items: list[int] = []
        with pytest.raises(TimeoutError) as streamed:
            async for item in client.stream("remote_helpers", "timeout_after", [3]):
                items.append(item)
        assert items == [0, 1, 2]
        assert isinstance(streamed.value, errors.RemoteError)
        assert not isinstance(streamed.value, errors.CallTimeout)
        assert await client.call("math", "sqrt", [16]) == 4.0
