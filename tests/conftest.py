"""Shared fixtures. Async tests run through anyio's own pytest plugin on asyncio, with and
without uvloop (the SDK is built on grpclib, which is asyncio-only)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param
