"""Bearer-token authentication (``--token-file``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import snakebridge
from snakebridge import errors

from .conftest import run_bridge_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def token_file(tmp_path: Path, token: str = "s3cret-token", mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


async def test_requests_need_the_right_bearer_token(make_server: Any, tmp_path: Path) -> None:
    srv = make_server("--workers", "1", "--token-file", str(token_file(tmp_path)))
    with pytest.raises(errors.Unauthenticated):
        async with snakebridge.Client(srv.address) as client:  # no token
            await client.call("math", "sqrt", [4])
    with pytest.raises(errors.Unauthenticated):
        async with snakebridge.Client(srv.address, token="wrong") as client:
            await client.call("math", "sqrt", [4])
    async with snakebridge.Client(srv.address, token="s3cret-token") as client:
        assert await client.call("math", "sqrt", [4]) == 2.0
        assert [x async for x in client.stream("builtins", "range", [3])] == [0, 1, 2]


@pytest.mark.parametrize(
    ("make_args", "needle"),
    [
        (lambda p: ["--token-file", str(p / "missing")], "cannot read"),
        (lambda p: ["--token-file", str(token_file(p, mode=0o644))], "other users"),
        (lambda p: ["--token-file", str(token_file(p, token="   "))], "empty"),
        (lambda p: ["--listen", "0.0.0.0:0"], "--insecure"),
        (lambda p: ["--token-file", ""], "token_file"),
    ],
)
def test_unsafe_or_broken_auth_settings_refuse_to_start(
    tmp_path: Path, make_args: Any, needle: str
) -> None:
    done = run_bridge_server("--workers", "1", *make_args(tmp_path))
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr
