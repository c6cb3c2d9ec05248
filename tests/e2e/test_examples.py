"""examples/: each program runs against a real server and does what it says. The FastAPI
app is driven in-process (its lifespan and httpx's ASGI transport); the scripts run as
the user would run them, in a subprocess with ``SNAKEBRIDGE_ADDRESS`` set."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import snakebridge

from .conftest import ServerProcess

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, address: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SNAKEBRIDGE_ADDRESS": address},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_numpy_script(server: ServerProcess) -> None:
    assert run_example("numpy_script.py", server.address) == [
        "row norms: [3.742, 11.225, 19.131]",
        "drawn: (1000, 3) float64",
        "means agree: True",
        "dot: 38.0",
    ]


def test_the_stream_consumer(server: ServerProcess) -> None:
    assert run_example("stream_consumer.py", server.address) == [
        "sum of range(1000000): 499999500000",
        "first multiple of 7 and 11: 77",
        "head: ['alpha', 'beta'] rest: ['gamma', 'delta']",
        "lines: ['one', 'two', 'three']",
        "endless stream stopped at its timeout",
    ]


@pytest.fixture
def fastapi_app(monkeypatch: pytest.MonkeyPatch, make_server: Any) -> Iterator[ModuleType]:
    """The example app, imported from its file, pointed at a server of its own (so that
    the refs the test counts are the app's alone)."""
    srv = make_server("--workers", "1")
    monkeypatch.setenv("SNAKEBRIDGE_ADDRESS", srv.address)
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLES / "fastapi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


@pytest.mark.anyio
async def test_the_fastapi_app_shares_one_client_and_frees_each_requests_refs(
    fastapi_app: ModuleType,
) -> None:
    app = fastapi_app.app
    async with app.router.lifespan_context(app):
        client = app.state.bridge
        assert isinstance(client, snakebridge.Client)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            assert (await http.get("/sqrt/16")).json() == {"x": 16.0, "sqrt": 4.0}
            bad = await http.get("/sqrt/-1")
            assert (bad.status_code, bad.json()) == (400, {"detail": "math domain error"})
            top = await http.post("/top-words", json={"text": "b a c a b a"})
            assert top.json() == {"top": [["a", 3], ["b", 2], ["c", 1]]}
            assert (await http.get("/health")).json() == {
                "server": snakebridge.__version__,
                "workers": 1,
            }
            assert app.state.bridge is client  # one client for every request
        # Each request's session was released when it ended: no ref is left behind.
        info = await client.describe()
        assert [w.refs for w in info.pools[0].workers] == [0]
    with pytest.raises(snakebridge.errors.ClientClosed):  # the lifespan closed it
        await client.call("math", "sqrt", [4])
