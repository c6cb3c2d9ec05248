"""A FastAPI app that runs Python in bridge-server workers.

One ``snakebridge.Client`` lives as long as the app (FastAPI's lifespan): it holds one
HTTP/2 connection that every request shares. Each request gets its own session
(``bridge_session``), so the remote objects a request creates are freed when it ends,
whatever happens in between.

Run it against a server (``make run`` in another terminal)::

    SNAKEBRIDGE_ADDRESS=127.0.0.1:50051 uvicorn examples.fastapi_app:app

``tests/e2e/test_examples.py`` drives it in-process with httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

import snakebridge
from snakebridge import errors


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The address comes from $SNAKEBRIDGE_ADDRESS (default 127.0.0.1:50051). Entering
    # checks the server is there and speaks our protocol: the app fails to start if not.
    async with snakebridge.Client(timeout=10) as client:
        app.state.bridge = client
        yield


app = FastAPI(lifespan=lifespan)


async def bridge_session(request: Request) -> AsyncIterator[snakebridge.Session]:
    """A session for one request: its refs are released when the request is done."""
    client: snakebridge.Client = request.app.state.bridge
    async with client.session() as session:
        yield session


Session = Annotated[snakebridge.Session, Depends(bridge_session)]


class Text(BaseModel):
    text: str


@app.get("/sqrt/{x}")
async def sqrt(x: float, session: Session) -> dict[str, float]:
    try:
        value: float = await session.call("math", "sqrt", [x])
    except errors.RemoteError as exc:
        if not isinstance(exc, ValueError):  # a remote builtin error is also that builtin
            raise
        # ``exc.message`` is the remote message alone: no remote type name, no traceback.
        raise HTTPException(status_code=400, detail=exc.message) from None
    return {"x": x, "sqrt": value}


@app.post("/top-words")
async def top_words(body: Text, session: Session) -> dict[str, list[list[str | int]]]:
    # A remote object (a Ref) that lives for this request only.
    counter = await session.call_class("collections", "Counter", [body.text.split()])
    top = await session.call_method(counter, "most_common", [3])
    return {"top": [[word, count] for word, count in top]}


@app.get("/health")
async def health(request: Request) -> dict[str, str | int]:
    try:
        info = await request.app.state.bridge.describe(timeout=2)
    except errors.BridgeError as exc:
        raise HTTPException(status_code=503, detail=type(exc).__name__) from None
    return {"server": info.server_version, "workers": len(info.pools[0].workers)}
