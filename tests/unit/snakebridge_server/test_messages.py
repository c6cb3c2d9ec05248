"""Error messages that name the missing fact (issue #19, finding 4): the signal that killed
a worker, the call that timed out, the address form, the limit that cannot be raised,
the dtype, the public call that replaces a refused dunder. Pure."""

from __future__ import annotations

import pytest

from snakebridge import errors
from snakebridge._transport import parse_address
from snakebridge.wire import codec
from snakebridge.wire.text import call_label, timed_out
from snakebridge_server.sandbox.policy import CallPolicy
from snakebridge_server.service import size_advice
from snakebridge_server.supervisor.handle import exit_reason

# -- other messages ------------------------------------------------------------------------


def test_exit_reason_names_the_signal() -> None:
    assert exit_reason(-9).startswith("worker process exited: killed by SIGKILL (signal 9)")
    assert "OOM killer" in exit_reason(-9)
    assert "native code" in exit_reason(-11)
    assert exit_reason(3) == "worker process exited with code 3"
    assert exit_reason(None) == "worker process exited"
    assert "signal 99" in exit_reason(-99)


def test_timeouts_name_the_call() -> None:
    assert call_label("function", "math", "sqrt") == "call math.sqrt"
    assert call_label("method", "", "most_common") == "method most_common"
    assert (
        timed_out("call math.sqrt", 0.5)
        == "call math.sqrt did not finish within its timeout (0.5s)"
    )
    assert timed_out("the stream", None) == "the stream did not finish within its timeout"


@pytest.mark.parametrize("address", ["http://h:1", "https://h:443", "grpc://h:1"])
def test_urls_are_not_addresses(address: str) -> None:
    assert parse_address("unix:///run/x.sock") == (None, None, "/run/x.sock")
    with pytest.raises(ValueError, match="is not an address; use HOST:PORT"):
        parse_address(address)


def test_size_advice_says_raise_only_below_the_maximum() -> None:
    assert "raise --max-message-size" in size_advice(1 << 20)
    top = size_advice(codec.DEFAULT_LIMITS.max_size)
    assert "raise" not in top and "already the limit" in top


def test_an_unsupported_dtype_is_named() -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(errors.SerializationError, match="with dtype object"):
        codec.encode(np.array([1, "a"], dtype=object))
    with pytest.raises(errors.SerializationError, match="with 33 dimensions"):
        codec.encode(np.zeros((1,) * 33))


def test_a_refused_dunder_suggests_the_public_call() -> None:
    policy = CallPolicy.build("standard")
    with pytest.raises(errors.PolicyError, match=r"client.call\('operator', 'getitem'"):
        policy.check_attr("__getitem__")
    with pytest.raises(errors.PolicyError) as other:
        policy.check_attr("__dict__")
    assert "client.call" not in str(other.value)
