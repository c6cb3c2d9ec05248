"""The blocking facade: ``SyncClient``, the Runtime API for scripts and notebooks. Runs in
the client process.

One event loop runs on a background thread that the client owns, and every method hands
its coroutine to that loop and waits for the result (``asyncio.run_coroutine_threadsafe``).
The async ``Client`` lives on that loop alone, so a ``SyncClient`` may be used from any
number of threads at once, and from code that runs its own event loop (a notebook) without
nesting loops. ``close()`` (or leaving ``with``) closes the client on its loop, stops the
loop and joins the thread; a client that is never closed is closed when it is collected or
at interpreter exit (``weakref.finalize``), so no thread outlives it.

A stream crosses to the caller's thread a batch at a time, not an item at a time: one
thread hop costs tens of microseconds, as much as decoding a few hundred small items.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ssl as _ssl
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Final, TypeVar

from ._client import Client, HelperInfo, Session
from ._defaults import CallDefaults
from ._refs import Ref, StreamRef
from .errors import CallTimeout, ClientClosed, ConnectionFailed
from .wire.pb import v1 as pb

__all__ = ["SyncClient", "SyncSession", "SyncStream"]

_T = TypeVar("_T")
_DONE: Final = object()  # what ``_next_batch`` returns once the stream is exhausted
#: How long closing waits for the async client to release its session and close.
_CLOSE_TIMEOUT: Final = 10.0
_CLOSED_DURING_CALL: Final = "the SyncClient was closed (close()) while this call ran"


class _LoopThread:
    """An event loop running on a daemon thread until ``stop()``; ``run`` hands it a
    coroutine from another thread and waits for its result."""

    def __init__(self) -> None:
        self.loop = _new_loop()
        # The futures of calls in flight, so that a loop that stops under them fails them
        # (ClientClosed) instead of leaving their threads waiting forever.
        self._lock = threading.Lock()
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._closed = False
        #: Set when closing starts: a call the closing connection cuts is ClientClosed.
        self.closing = False
        self._thread = threading.Thread(
            target=self._serve, name="snakebridge-sync-loop", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with self._lock:
                self._closed = True  # from here on, run() refuses
            # Whatever is left (a stream's pending close) finishes or is cancelled here.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            for future in list(self._futures):  # handed over, but never run
                future.cancel()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and wait for it. Interrupting the wait (Ctrl-C)
        cancels it there, which cancels the remote call."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("a SyncClient cannot be used from its own event loop's thread")
        with self._lock:
            if self._closed or not self.alive:
                coro.close()
                raise ClientClosed("this SyncClient is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._futures.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._closed:
                raise ClientClosed(_CLOSED_DURING_CALL) from None
            raise
        except (ConnectionFailed, ClientClosed) as exc:
            # Our own close() cut the connection (or ended the batched-call stream under
            # the call), not the server.
            if self.closing:
                raise ClientClosed(_CLOSED_DURING_CALL) from exc
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._futures.discard(future)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` on the loop without waiting (from any thread, the loop's own
        included); dropped if the loop has stopped."""
        if not self.alive:
            coro.close()
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.create_task, coro)
        except RuntimeError:  # closed meanwhile
            coro.close()

    def stop(self) -> None:
        """Stop the loop; join the thread unless called from it."""
        if self.alive:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if not self.in_loop_thread():
                self._thread.join()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # not on Windows
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _shut_down(thread: _LoopThread, client: Client) -> None:
    """Close ``client`` on its loop (best effort, bounded), then stop the loop. Must not
    reference the ``SyncClient``: it is its finalizer."""
    if not thread.alive:
        return
    thread.closing = True
    if thread.in_loop_thread():  # collected on the loop itself: it cannot wait there
        thread.submit(client.close())
        thread.stop()
        return
    future = asyncio.run_coroutine_threadsafe(client.close(), thread.loop)
    try:
        future.result(_CLOSE_TIMEOUT)
    except Exception:  # closing is best effort (a dead server, a timeout): stop anyway
        future.cancel()
    finally:
        thread.stop()


async def _next_batch(batches: Any) -> Any:
    try:
        return await batches.__anext__()
    except StopAsyncIteration:
        return _DONE  # an exception a coroutine may not raise across run_coroutine_threadsafe


class SyncStream:
    """A running remote iteration, for a plain ``for`` loop and ``with``.

    Leaving a ``with`` block (or calling ``close()``) ends the RPC before it returns, so the
    remote generator's ``finally`` blocks have run by then; a plain ``for`` that is left
    early ends it as soon as the stream is collected (at once in CPython). ``timeout=``
    bounds the whole iteration, as in ``Client.stream``.
    """

    __slots__ = ("__weakref__", "_batches", "_buffer", "_deadline", "_done", "_thread")

    def __init__(self, thread: _LoopThread, batches: Any, timeout: float | None) -> None:
        self._thread = thread
        self._batches = batches
        self._buffer: collections.deque[Any] = collections.deque()
        self._done = False
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Any:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            # Items may still be buffered here; the bound is on the iteration, as async.
            self.close()
            raise CallTimeout("the stream did not finish within its timeout")
        while not self._buffer:
            if self._done:
                raise StopIteration
            batch = self._thread.run(_next_batch(self._batches))
            if batch is _DONE:
                self._done = True
                raise StopIteration
            self._buffer.extend(batch)
        return self._buffer.popleft()

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop iterating: the server closes the generator in the worker. Waits for the
        RPC to end; calling it again does nothing."""
        if self._done:
            return
        self._done = True
        self._buffer.clear()
        if self._thread.alive and not self._thread.in_loop_thread():
            self._thread.run(self._batches.aclose())
        else:
            self._thread.submit(self._batches.aclose())

    def __del__(self) -> None:
        # A ``for`` loop left early: end the RPC without blocking whoever collects us.
        if not self._done:
            self._done = True
            self._thread.submit(self._batches.aclose())


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a ``SyncSession`` given as ``session=`` turned into its id."""
    session = options.get("session")
    if isinstance(session, SyncSession):
        return {**options, "session": session.id}
    return options


class _SyncRuntime:
    """The Runtime API, blocking; shared by ``SyncClient`` and ``SyncSession``. Each
    method takes the arguments and keyword options of its async namesake (README,
    Runtime API) and returns what that one returns."""

    _runtime: Client | Session
    _thread: _LoopThread

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self._thread.run(coro)

    def call(
        self,
        module: str,
        function: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """``module.function(*args, **kwargs)`` in a worker."""
        return self._run(self._runtime.call(module, function, args, kwargs, **_plain(options)))

    def call_dynamic(
        self,
        path: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """``call`` with one dotted path: ``call_dynamic("os.path.join", ["a", "b"])``."""
        return self._run(self._runtime.call_dynamic(path, args, kwargs, **_plain(options)))

    def call_class(
        self,
        module: str,
        cls: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Ref:
        """An instance of ``module.cls``; always a ``Ref``."""
        return self._run(self._runtime.call_class(module, cls, args, kwargs, **_plain(options)))

    def call_method(
        self,
        ref: Ref,
        method: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """``ref.method(*args, **kwargs)`` in the worker that holds ``ref``."""
        return self._run(self._runtime.call_method(ref, method, args, kwargs, **_plain(options)))

    def get_attr(self, ref: Ref, name: str, **options: Any) -> Any:
        """``ref.name`` (may be dotted)."""
        return self._run(self._runtime.get_attr(ref, name, **_plain(options)))

    def set_attr(self, ref: Ref, name: str, value: Any, **options: Any) -> None:
        """``ref.name = value``."""
        self._run(self._runtime.set_attr(ref, name, value, **_plain(options)))

    def get_module_attr(self, module: str, name: str, **options: Any) -> Any:
        """``module.name`` without calling it."""
        return self._run(self._runtime.get_module_attr(module, name, **_plain(options)))

    def call_helper(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """A helper the server's operator registered (``bridge-server --helpers``)."""
        return self._run(self._runtime.call_helper(name, args, kwargs, **_plain(options)))

    def stream(
        self,
        module_or_ref: str | Ref,
        function: str = "",
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        session: str | Session | SyncSession | None = None,
        pool: str | None = None,
        timeout: float | None = None,
        affinity: str | None = None,
    ) -> SyncStream:
        """``for item in client.stream("mod", "gen", [...])``; ``stream(ref)`` iterates a
        ``StreamRef`` or a ref to an iterable. Checks and encodes its arguments at once;
        the RPC starts with the first item."""
        sid = session.id if isinstance(session, SyncSession) else session
        runtime = self._runtime

        async def on_loop() -> tuple[Any, float | None]:
            # On the loop: it may create the client's auto session, which is the loop's.
            call, checked = runtime._stream_request(
                module_or_ref, function, args, kwargs,
                session=sid, pool=pool, timeout=timeout, affinity=affinity,
            )  # fmt: skip
            return runtime._client._stream_batches(call, checked), checked

        batches, checked = self._run(on_loop())
        return SyncStream(self._thread, batches, checked)

    def stream_next(self, stream_ref: StreamRef, **options: Any) -> Any:
        """The next item of ``stream_ref`` (one RPC); ``StopIteration`` when it is
        exhausted, like ``next()``."""
        try:
            return self._run(self._runtime.stream_next(stream_ref, **_plain(options)))
        except StopAsyncIteration:
            raise StopIteration from None

    def stream_len(self, stream_ref: Ref, **options: Any) -> int:
        """``len()`` of the remote object."""
        return self._run(self._runtime.stream_len(stream_ref, **_plain(options)))

    def stream_dynamic(
        self,
        module: str,
        function: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Iterator[Any]:
        """Iterate with one ``StreamNext`` RPC per item (slow; prefer ``stream``)."""
        options = _plain(options)
        result = self.call(module, function, args, kwargs, **options)
        if isinstance(result, Ref) and not isinstance(result, StreamRef):
            result = self.call("builtins", "iter", [result], session=options.get("session"))
        if not isinstance(result, StreamRef):
            raise TypeError(
                f"{module}.{function} returned {type(result).__name__}, not an iterator"
            )
        next_options = {k: v for k, v in options.items() if k in ("session", "timeout")}
        while True:
            try:
                yield self.stream_next(result, **next_options)
            except StopIteration:
                return

    def module(self, name: str, **options: Any) -> SyncModuleProxy:
        """A proxy whose attributes are callables: ``client.module("os").path.join("a",
        "b")``. Read a module attribute with ``get_module_attr``."""
        return SyncModuleProxy(self, name, "", _plain(options))


class SyncModuleProxy:
    """``client.module("numpy").linalg.norm(x)``: calls ``numpy.linalg.norm`` remotely."""

    __slots__ = ("_module", "_options", "_path", "_runtime")

    def __init__(
        self, runtime: _SyncRuntime, module: str, path: str, options: dict[str, Any]
    ) -> None:
        self._runtime = runtime
        self._module = module
        self._path = path
        self._options = options

    def __getattr__(self, name: str) -> SyncModuleProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        path = f"{self._path}.{name}" if self._path else name
        return SyncModuleProxy(self._runtime, self._module, path, self._options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._path:
            raise TypeError(f"module {self._module!r} is not callable")
        return self._runtime.call(self._module, self._path, args, kwargs, **self._options)

    def __repr__(self) -> str:
        return f"<SyncModuleProxy {self._module}{'.' + self._path if self._path else ''}>"


class SyncSession(_SyncRuntime):
    """An explicit session of a ``SyncClient``: ``with client.session() as s:`` frees its
    refs on exit."""

    def __init__(self, thread: _LoopThread, session: Session) -> None:
        self._thread = thread
        self._runtime = session
        self.id = session.id

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        session = self._runtime
        assert isinstance(session, Session)
        self._run(session.__aexit__(et, e, tb))

    def release(self) -> int:
        """Free the session's refs on every worker; returns how many were freed."""
        return self._run(self._runtime._client.release_session(self.id))

    def __repr__(self) -> str:
        return f"<SyncSession {self.id}>"


class SyncClient(_SyncRuntime):
    """A blocking client of a ``bridge-server``, for scripts and notebooks.

    Takes ``Client``'s arguments and offers its Runtime API without ``await``::

        with snakebridge.SyncClient("127.0.0.1:50051") as client:
            client.call("math", "sqrt", [16])           # 4.0
            for n in client.stream("builtins", "range", [3]):
                ...

    ``with`` connects and checks the protocol version, as ``async with Client`` does;
    without it, the first call connects. ``close()`` releases the auto session, closes the
    connection, stops the loop thread and joins it; every call after it raises
    ``ClientClosed``. Thread-safe: the calls of several threads run concurrently on the
    one loop. Refs are the async client's (``release_ref(ref)`` frees one; ``with ref``
    and ``async for`` over a ``StreamRef`` are async only: use ``stream(ref)``).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
        max_decoded_size: int | None = None,
        release_on_gc: bool = True,
    ) -> None:
        options = {
            "token": token,
            "ssl": ssl,
            "timeout": timeout,
            "correlation_id": correlation_id,
            "max_decoded_size": max_decoded_size,
            "release_on_gc": release_on_gc,
        }
        thread = _LoopThread()
        try:
            # Made on the loop: everything the async client touches belongs to that thread.
            client = thread.run(_make_client(address, options))
        except BaseException:
            thread.stop()
            raise
        self._thread = thread
        self._client = self._runtime = client
        self._finalizer = weakref.finalize(self, _shut_down, thread, client)

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def server_version(self) -> str | None:
        """The server's version, once ``with`` (``connect()``) has asked it."""
        return self._client.server_version

    def __repr__(self) -> str:
        state = "" if self._thread.alive else " closed"
        return f"<SyncClient {self.address}{state}>"

    def __enter__(self) -> SyncClient:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection and check the server speaks this SDK's protocol version."""
        self._run(self._client.connect())

    def close(self) -> None:
        """Close the client and join its loop thread. Calling it again does nothing."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def defaults(
        self,
        *,
        timeout: float | None = None,
        pool: str | None = None,
        session: str | Session | SyncSession | None = None,
        affinity: str | None = None,
    ) -> AbstractContextManager[CallDefaults]:
        """Defaults for the calls this thread makes inside the ``with`` block, as
        ``Client.defaults``: ``with client.defaults(timeout=5, pool="gpu"):``. (A call
        handed to the loop thread carries the caller's context with it.)"""
        sid = session.id if isinstance(session, SyncSession) else session
        return self._client.defaults(timeout=timeout, pool=pool, session=sid, affinity=affinity)

    # -- sessions and releases ----------------------------------------------------------

    def session(self, session_id: str | None = None) -> SyncSession:
        """An explicit session, released when its ``with`` block exits."""
        return SyncSession(self._thread, self._client.session(session_id))

    def current_session(self) -> str:
        """The auto session's id, created on first use."""
        return self._call_soon(self._client.current_session)

    def clear_auto_session(self) -> None:
        """Forget the auto session without releasing it."""
        self._call_soon(self._client.clear_auto_session)

    def release_auto_session(self) -> int:
        """Release the auto session's refs on the server and start afresh."""
        return self._run(self._client.release_auto_session())

    def release_session(self, session_id: str | Session | SyncSession, **options: Any) -> int:
        """Free every ref of the session; returns how many were freed."""
        sid = session_id.id if isinstance(session_id, SyncSession) else session_id
        return self._run(self._client.release_session(sid, **options))

    def release_ref(self, *refs: Ref, timeout: float | None = None) -> int:
        """Free remote objects; returns how many were freed."""
        return self._run(self._client.release_ref(*refs, timeout=timeout))

    def describe(self, *, timeout: float | None = 10.0) -> pb.DescribeReply:
        """Server version, protocol version, pools and their workers."""
        return self._run(self._client.describe(timeout=timeout))

    def helpers(self, *, pool: str | None = None, timeout: float | None = 10.0) -> list[HelperInfo]:
        """The helpers ``call_helper`` can reach in ``pool``, sorted by name."""
        return self._run(self._client.helpers(pool=pool, timeout=timeout))

    def _call_soon(self, fn: Callable[[], _T]) -> _T:
        async def on_loop() -> _T:
            return fn()

        return self._run(on_loop())


async def _make_client(address: str | None, options: dict[str, Any]) -> Client:
    return Client(address, **options)
