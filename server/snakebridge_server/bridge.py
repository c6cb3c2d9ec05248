"""The bridge: pools + session table + the rules tying a request to a worker.

Transport-free: the gRPC service (``service.py``) decodes requests and calls these
methods; everything here raises ``snakebridge.errors`` classes, which the service maps
to gRPC statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from snakebridge.errors import (
    BadRequest,
    BridgeError,
    CallTimeout,
    LimitExceeded,
    PoolUnavailable,
    ProtocolMismatch,
    RefNotFound,
    RemoteError,
    SessionLost,
    WorkerCrashed,
)
from snakebridge.wire.constants import (
    AFFINITIES,
    KIND_CLASS,
    KIND_FUNCTION,
    KIND_GET_ATTR,
    KIND_HELPER,
    KIND_METHOD,
    KIND_MODULE_ATTR,
    KIND_NAMES,
    KIND_SET_ATTR,
    PROTOCOL_VERSION,
)
from snakebridge.wire.messages import CallRequestWire
from snakebridge.wire.text import call_label, timed_out

from .background import Background
from .channel import STREAM_DONE, STREAM_ERROR, STREAM_MORE
from .config import PoolConfig, ServerConfig
from .faults import FaultLedger
from .frames import Call, Introspect, Ok, StreamOpen
from .handover import Handover
from .helper_sources import is_helper_file, source_module_name
from .isolation import SESSION, TENANT, owner_key
from .logs import note_routed_pool
from .metrics import queue_depth
from .raypool import runtime as ray_runtime
from .raypool.handle import RaySpec, RayWorkerHandle
from .raypool.runtime import actor_options, local_cpus
from .refids import WorkerKey, owner_of, parse_ref_id
from .sandbox import SandboxSpec
from .sandbox.policy import CallPolicy
from .sandbox.report import sandbox_report
from .sandbox.spawn import make_scratch_root
from .sessions import Session, SessionTable
from .snapshot import BridgeSnapshot, PoolSnapshot, WorkerSnapshot
from .supervisor.handle import NeverStarted, StreamReply, WorkerHandle, remote_error_of
from .supervisor.pool import Pool, SupervisionPolicy, WorkerFactory
from .supervisor.spawn import WorkerSpec

log = logging.getLogger("snakebridge.bridge")
_T = TypeVar("_T")

_NEEDS_TARGET = frozenset({KIND_METHOD, KIND_GET_ATTR, KIND_SET_ATTR})
_NEEDS_MODULE = frozenset({KIND_MODULE_ATTR})
_NEEDS_NAME = frozenset(KIND_NAMES) - {KIND_FUNCTION}  # function: module.name or dotted name
_STREAMABLE = frozenset({KIND_FUNCTION, KIND_METHOD, KIND_HELPER})
_EMPTY_BATCH: Final = b"\x90"  # a codec-encoded empty list


def check_protocol(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"client speaks protocol {version}, this server speaks {PROTOCOL_VERSION}; "
            "upgrade the older side"
        )


MAX_NAME = 1024  # module / attribute path, characters
MAX_ID = 256  # session and ref ids, characters
MAX_ARG_REFS = 10_000
MAX_INTROSPECT_NAMES = 2000  # worker.introspect.MAX_NAMES
MAX_SUBMODULES = 64


def check_policy(policy: CallPolicy, req: CallRequestWire) -> None:
    """The sandbox's name rules, on the names in the request (the worker checks what they
    resolve to as well)."""
    if not policy.enforced:
        return
    kind = req.kind
    if kind in (KIND_METHOD, KIND_GET_ATTR, KIND_SET_ATTR):
        policy.check_attr(req.name)
    elif kind == KIND_HELPER:
        policy.check_attr(req.name)
    else:
        policy.check_path(req.module, req.name)


def validate_call(req: CallRequestWire, *, iterate_ref: bool = False) -> None:
    """Reject malformed requests before they reach a worker. ``iterate_ref``: a stream of
    the target ref itself (METHOD with an empty name)."""
    check_protocol(req.protocol_version)
    if len(req.module) > MAX_NAME or len(req.name) > MAX_NAME:
        raise BadRequest(f"module and name are limited to {MAX_NAME} characters")
    if len(req.session_id) > MAX_ID or len(req.target_ref) > MAX_ID or len(req.pool) > MAX_ID:
        raise BadRequest(f"session, ref and pool ids are limited to {MAX_ID} characters")
    if len(req.arg_refs) > MAX_ARG_REFS or any(len(r) > MAX_ID for r in req.arg_refs):
        raise BadRequest(f"at most {MAX_ARG_REFS} arg_refs of at most {MAX_ID} characters")
    kind = req.kind
    if kind not in KIND_NAMES:
        raise BadRequest(f"unknown call kind {kind}")
    if kind in _NEEDS_TARGET and not req.target_ref:
        raise BadRequest(f"a {KIND_NAMES[kind]} call needs a target ref")
    if kind in _NEEDS_MODULE and not req.module:
        raise BadRequest(f"a {KIND_NAMES[kind]} call needs a module")
    if kind in _NEEDS_NAME and not req.name and not iterate_ref:
        raise BadRequest(f"a {KIND_NAMES[kind]} call needs a name")
    if kind in (KIND_FUNCTION, KIND_CLASS) and not (req.module or "." in req.name):
        raise BadRequest("a call needs a module, or a dotted name such as 'os.path.join'")
    if req.affinity not in AFFINITIES:
        raise BadRequest(f"affinity must be one of {AFFINITIES}, not {req.affinity!r}")
    if req.timeout < 0 or req.timeout != req.timeout:
        raise BadRequest("timeout must be a positive number of seconds (0 = server default)")
    if kind != KIND_SET_ATTR and kind != KIND_HELPER and req.module.startswith("."):
        raise BadRequest("relative module names are not allowed")


class Bridge:
    def __init__(
        self, config: ServerConfig, *, worker_factory: WorkerFactory = WorkerHandle
    ) -> None:
        """``worker_factory`` makes each worker's handle: ``WorkerHandle`` (a process)
        unless a test injects fakes (``snakebridge_server.testing``)."""
        self.config = config
        self.boot = secrets.token_hex(4)
        self.sessions = SessionTable(
            max_sessions=config.max_sessions,
            max_refs_per_session=config.max_refs_per_session,
            max_refs_total=config.max_refs,
            ttl=config.session_ttl,
        )
        sandboxed = any(p.sandbox != "none" for p in config.pools)
        self.scratch_root = make_scratch_root() if sandboxed else ""
        self.default_pool = config.pool
        self.pool_configs = {p.name: p for p in config.pools}
        self.policies: dict[str, CallPolicy] = {}
        self.pools: dict[str, Pool] = {}
        self.faults: dict[str, FaultLedger] = {}
        self.handover = Handover(self.pool_configs)
        uid_offset = 0  # each worker of every pool gets a uid of its own
        self.helper_info: dict[str, list[tuple[str, str, str]]] = {}  # by pool, at start
        for pc in config.pools:
            # Helper modules are the operator's own: a strict pool may always call into
            # them, unless helper_allow exposes only some of their names (then only
            # call_helper reaches them).
            helper_modules = () if pc.helper_allow else map(source_module_name, pc.helpers)
            self.policies[pc.name] = CallPolicy.build(
                pc.sandbox,
                extra_deny=pc.sandbox_deny_modules,
                extra_allow=(*pc.sandbox_allow_modules, *helper_modules),
            )
            self.pools[pc.name] = Pool(
                pc.name,
                pc.workers,
                self._worker_spec(pc, uid_offset),
                max_queued=pc.max_queued,
                on_worker_lost=self._worker_gone,
                refs_of=self.sessions.refs_on,
                policy=SupervisionPolicy.of(pc),
                isolation=pc.isolation,
                spares=pc.spare_workers,
                max_waiting=pc.max_waiting,
                worker_factory=self._factory_of(pc, worker_factory),
            )
            ledger = self.faults[pc.name] = FaultLedger(
                session_limit=pc.session_crash_limit,
                tenant_limit=pc.tenant_crash_limit,
                window=pc.crash_loop_window,
            )
            self.pools[pc.name].breaker_counts = self._breaker_filter(ledger)
            uid_offset += pc.workers
        self._background = Background("bridge")  # the session sweeper

    def _breaker_filter(self, ledger: FaultLedger) -> Callable[[WorkerKey, float], bool]:
        """A pool's crash-loop rule: a death counts once per window per session (the one
        whose call the worker ran last), so one session cannot trip the pool."""

        def counts(key: WorkerKey, now: float) -> bool:
            return ledger.breaker_counts(now, self.handover.served_by(key) or f"worker {key}")

        return counts

    def _worker_gone(self, key: WorkerKey) -> None:
        self.sessions.worker_gone(key)
        self.handover.forget(key)

    def _factory_of(self, pc: PoolConfig, injected: WorkerFactory) -> WorkerFactory:
        """A Ray pool's workers are Ray actors, unless a test injects its own handles."""
        if pc.backend != "ray" or injected is not WorkerHandle:
            return injected
        ray = RaySpec(self.config.ray_address, local_cpus(self.config.pools), actor_options(pc))
        return functools.partial(RayWorkerHandle, ray=ray)

    def _worker_spec(self, pc: PoolConfig, uid_offset: int) -> WorkerSpec:
        config = self.config
        return WorkerSpec(
            python=pc.python,
            boot=self.boot,
            max_refs=config.max_refs,
            max_frame=config.max_message_size + 1024 * 1024,
            max_result=config.max_message_size,
            start_timeout=config.worker_start_timeout,
            cancel_grace=config.cancel_grace,
            helpers=pc.helpers,
            helper_allow=pc.helper_allow,
            preload=pc.preload,
            python_path=pc.python_path,
            env=(("PYTHONUNBUFFERED", "1"), *pc.env),
            sandbox=SandboxSpec(
                level=pc.sandbox,
                # The worker imports its python_path and loads helper files inside its
                # sandbox: it may read them.
                read_paths=(
                    *pc.sandbox_read_paths,
                    *pc.python_path,
                    *filter(is_helper_file, pc.helpers),
                ),
                write_paths=pc.sandbox_write_paths,
                deny_modules=pc.sandbox_deny_modules,
                allow_modules=pc.sandbox_allow_modules,
                max_memory=pc.max_memory,
                max_call_cpu=pc.max_call_cpu,
                max_open_files=pc.max_open_files,
                max_file_size=pc.max_file_size,
                max_threads=pc.max_threads,
            ),
            min_sandbox=pc.min_sandbox,
            sandbox_uid=config.sandbox_uid,
            uid_offset=uid_offset,
            scratch_root=self.scratch_root,
            log_level=config.log_level,
            output_rate=config.worker_output_rate,
            concurrency=pc.concurrency,
            threads=pc.threads,
        )

    async def start(self) -> None:
        for pool in self.pools.values():
            await pool.start()
            # Every worker of a pool loads the same helpers: the first one's list stands.
            self.helper_info[pool.name] = next(
                (w.helper_info for w in pool.workers if w is not None), []
            )
        await self._background.start()
        self._background.start_soon(self._sweep_sessions, name="session sweeper")

    async def close(self) -> None:
        await self._background.aclose()
        await asyncio.gather(*(p.close() for p in self.pools.values()))
        if any(pc.backend == "ray" for pc in self.config.pools):
            await ray_runtime.disconnect()
        if self.scratch_root:
            shutil.rmtree(self.scratch_root, ignore_errors=True)

    def pool(self, name: str) -> Pool:
        try:
            return self.pools[name or self.default_pool]
        except KeyError:
            raise PoolUnavailable(
                f"no pool named {name!r}; pools: {', '.join(sorted(self.pools))}"
            ) from None

    def snapshot(self) -> BridgeSnapshot:
        """Pools, workers, sessions and refs as they are now (for metrics and Describe)."""
        return BridgeSnapshot(
            pools=[
                _pool_snapshot(p, self.pool_configs[p.name].backend) for p in self.pools.values()
            ],
            sessions=len(self.sessions),
            refs=self.sessions.total_refs,
        )

    def list_helpers(self, pool: str) -> list[tuple[str, str, str]]:
        """``(name, signature, doc)`` of each helper ``pool`` exposes (empty: the default)."""
        if len(pool) > MAX_ID:
            raise BadRequest(f"pool names are limited to {MAX_ID} characters")
        return self.helper_info.get(self.pool(pool).name, [])

    def _timeout(self, pool: Pool, requested: float) -> float:
        """A call's time limit: what it asked for, else the pool's default, at most the
        pool's maximum."""
        pc = self.pool_configs[pool.name]
        return min(requested or pc.call_timeout, pc.max_call_timeout)

    # -- calls --------------------------------------------------------------------------

    def _check_size(self, req: CallRequestWire) -> None:
        if len(req.args) > self.config.max_message_size:
            raise LimitExceeded(
                f"the arguments are {len(req.args)} bytes, over the "
                f"{self.config.max_message_size}-byte message limit; pass a ref instead"
            )

    async def call(self, req: CallRequestWire, tenant: str = "") -> bytes:
        validate_call(req)
        self._check_size(req)
        refs = [*req.arg_refs, req.target_ref] if req.target_ref else req.arg_refs
        owner = owner_of(refs, self.boot)
        pool = self.pool(owner.pool if owner is not None else req.pool)
        check_policy(self.policies[pool.name], req)
        pool.check_capacity()
        timeout = self._timeout(pool, req.timeout)
        now = time.monotonic()
        self.faults[pool.name].check(now, tenant, req.session_id)
        session = self.sessions.begin_call(req.session_id, now, tenant)
        worker: WorkerHandle | None = None
        reply: Ok | None = None
        # Built once; each attempt's worker fills in its call id, budget and correlation id.
        frame = Call(
            0, req.kind, req.module, req.name, req.target_ref, req.session_id, req.args, 0, ""
        )
        try:
            async with asyncio.timeout(timeout):

                async def run(w: WorkerHandle) -> Ok:
                    return await w.call(frame, self.sessions.ref_budget(session))

                try:
                    worker, reply = await self._on_worker(pool, owner, session, req.affinity, run)
                except WorkerCrashed as exc:
                    # Retry once, elsewhere, only what the caller marked safe to repeat
                    # and what does not depend on the dead worker's objects (and not for
                    # a session that has crashed workers too often).
                    if not req.idempotent or owner is not None:
                        raise
                    self.faults[pool.name].check(time.monotonic(), tenant, session.id)
                    log.info("retrying idempotent call after a crash: %s", exc)
                    worker, reply = await self._on_worker(pool, owner, session, req.affinity, run)
        except RemoteError:
            raise  # the user's own TimeoutError (a remote one subclasses it) is not ours
        except TimeoutError:
            what = call_label(KIND_NAMES.get(req.kind, ""), req.module, req.name)
            raise CallTimeout(timed_out(what, timeout)) from None
        finally:
            self.sessions.end_call(
                session,
                worker.key if worker is not None and reply is not None else None,
                reply.new_refs if reply is not None else 0,
                time.monotonic(),
            )
        assert reply is not None
        result: bytes = reply.value
        return result

    async def _on_worker(
        self,
        pool: Pool,
        owner: WorkerKey | None,
        session: Session,
        affinity: str,
        run: Callable[[WorkerHandle], Awaitable[_T]],
    ) -> tuple[WorkerHandle, _T]:
        """Run ``run`` on the worker this request belongs to: the owner of its refs, else
        one picked for the session. A request that was still queued when its worker died
        never ran, so it is simply routed again (the caller's timeout bounds this)."""
        who = (session.tenant, session.id)
        dedicated_to = owner_key(pool.isolation, *who)
        while True:
            if owner is not None:
                worker = pool.owner(owner)  # SessionLost once the owner has died
                if dedicated_to is not None and pool.assigned.get(worker.key) != dedicated_to:
                    # Another tenant's or session's worker: as good as nonexistent.
                    raise RefNotFound(f"ref of worker {owner} was released or never existed")
            else:
                worker = await self._pick(pool, session, affinity, dedicated_to)
                if not await self.handover.vet(pool, worker, who):
                    continue  # it was recycled or replaced: pick again
            self.handover.handed(worker, who)
            note_routed_pool(pool.name)
            try:
                result = await run(worker)
            except NeverStarted:
                continue
            except WorkerCrashed:
                # It died running this call: the crash counts against this session.
                self.faults[pool.name].record(time.monotonic(), *who)
                raise
            pool.after_call(worker)  # recycles it once it reached its call limit
            return worker, result

    @staticmethod
    async def _pick(
        pool: Pool, session: Session, affinity: str, dedicated_to: str | None
    ) -> WorkerHandle:
        if dedicated_to is not None:
            return await pool.acquire(dedicated_to)
        try:
            return await pool.pick(session.last_worker, affinity=affinity)
        except SessionLost:
            # Said once: the next strict call starts the session afresh on a live worker.
            session.last_worker = None
            raise

    # -- introspection ------------------------------------------------------------------

    async def introspect(
        self,
        module: str,
        names: list[str],
        submodules: list[str],
        *,
        pool_name: str = "",
        timeout: float = 0.0,
        version_only: bool = False,
    ) -> bytes:
        """The codec bytes of ``module``'s description (docs/wire.md, Introspect), made by
        a worker of the pool under its sandbox and call policy."""
        if len(pool_name) > MAX_ID:
            raise BadRequest(f"pool names are limited to {MAX_ID} characters")
        if not module or module.startswith(".") or len(module) > MAX_NAME:
            raise BadRequest(f"a module name of 1 to {MAX_NAME} characters, not relative")
        if len(names) > MAX_INTROSPECT_NAMES or len(submodules) > MAX_SUBMODULES:
            raise BadRequest(
                f"at most {MAX_INTROSPECT_NAMES} names and {MAX_SUBMODULES} submodules"
            )
        if any(not n or len(n) > MAX_NAME or "." in n for n in names) or any(
            not s or len(s) > MAX_NAME for s in submodules
        ):
            raise BadRequest(f"names and submodules of 1 to {MAX_NAME} characters")
        if not timeout >= 0:
            raise BadRequest("timeout must be a positive number of seconds (0 = server default)")
        pool = self.pool(pool_name)
        policy = self.policies[pool.name]
        policy.check_path(module, "")
        for sub in submodules:
            policy.check_path(f"{module}.{sub}", "")
        for name in names:
            policy.check_path(module, name)
        pool.check_capacity()
        limit = self._timeout(pool, timeout)
        # Not in the session table: introspection makes no refs and belongs to no session.
        session = Session("", time.monotonic())
        frame = Introspect(0, module, names, submodules, version_only, "")
        try:
            async with asyncio.timeout(limit):

                async def run(w: WorkerHandle) -> Ok:
                    return await w.introspect(frame)

                _, reply = await self._on_worker(pool, None, session, "", run)
        except TimeoutError:
            raise CallTimeout(f"introspection did not finish within {limit:g}s") from None
        description: bytes = reply.value
        return description

    # -- streams ------------------------------------------------------------------------

    def _stream_limits(self, first: bool) -> tuple[int, int, float]:
        cfg = self.config
        # The first batch is the first item alone: it arrives as fast as a unary result
        # even if the generator then blocks, and the prefetched second batch overlaps it.
        items = 1 if first else cfg.stream_batch_items
        # Stop filling a batch well before the message limit; only a single item bigger
        # than the limit can then exceed it.
        nbytes = min(cfg.stream_batch_bytes, cfg.max_message_size // 2)
        return items, nbytes, cfg.stream_linger

    async def stream(
        self, req: CallRequestWire, send: Callable[[bytes], Awaitable[None]], tenant: str = ""
    ) -> None:
        """Iterate what ``req`` names in a worker, handing each batch to ``send``.

        One batch is prefetched while ``send`` waits for the client (HTTP/2 flow control),
        so memory stays bounded by two batches however slowly the client reads. However
        this ends (exhausted, error, client gone, deadline) the worker-side iterator is
        closed: a pull in progress is interrupted and the generator's ``finally`` runs.
        """
        iterate_ref = req.kind == KIND_METHOD and bool(req.target_ref) and not req.name
        validate_call(req, iterate_ref=iterate_ref)
        self._check_size(req)
        if req.kind not in _STREAMABLE:
            raise BadRequest(f"cannot stream a {KIND_NAMES.get(req.kind, req.kind)} call")
        refs = [*req.arg_refs, req.target_ref] if req.target_ref else req.arg_refs
        owner = owner_of(refs, self.boot)
        pool = self.pool(owner.pool if owner is not None else req.pool)
        check_policy(self.policies[pool.name], req)
        pool.check_capacity()
        now = time.monotonic()
        self.faults[pool.name].check(now, tenant, req.session_id)
        session = self.sessions.begin_call(req.session_id, now, tenant)
        worker: WorkerHandle | None = None
        stream_id = 0
        open_ = False
        prefetch: asyncio.Task[StreamReply] | None = None
        pull_timeout = self.pool_configs[pool.name].call_timeout
        frame = StreamOpen(
            0,
            req.kind,
            req.module,
            req.name,
            req.target_ref,
            req.session_id,
            req.args,
            0,
            *self._stream_limits(first=True),
            "",
        )
        try:
            async with asyncio.timeout(req.timeout or None):

                async def open_on(w: WorkerHandle) -> StreamReply:
                    try:
                        async with asyncio.timeout(pull_timeout):
                            return await w.stream_open(frame, self.sessions.ref_budget(session))
                    except RemoteError:
                        raise
                    except TimeoutError:
                        raise CallTimeout(
                            f"the iterator produced nothing for {pull_timeout:g}s"
                        ) from None

                worker, reply = await self._on_worker(pool, owner, session, req.affinity, open_on)
                stream_id = reply.stream_id
                while True:
                    self.sessions.refs_created(session, worker.key, reply.new_refs)
                    self._refs_freed(worker, reply.released)
                    open_ = reply.state == STREAM_MORE
                    if open_:
                        prefetch = asyncio.get_running_loop().create_task(
                            self._pull(worker, stream_id, session, pull_timeout)
                        )
                    if reply.body != _EMPTY_BATCH:
                        await send(reply.body)
                    if reply.state == STREAM_DONE:
                        return
                    if reply.state == STREAM_ERROR:
                        assert reply.error is not None
                        raise remote_error_of(reply.error)
                    assert prefetch is not None
                    reply, prefetch = await prefetch, None
        except (CallTimeout, RemoteError):
            raise  # a pull's own timeout, with its own message; the user's TimeoutError
        except TimeoutError:
            raise CallTimeout("the stream did not finish within its timeout") from None
        finally:
            if prefetch is not None:
                prefetch.cancel()  # interrupts the pull if the worker is running it
                with contextlib.suppress(BaseException):
                    await asyncio.shield(asyncio.wait({prefetch}))
            if worker is not None and stream_id and (open_ or prefetch is not None):
                worker.stream_close(stream_id)
            self.sessions.end_call(session, worker.key if worker else None, 0, time.monotonic())

    async def _pull(
        self, worker: WorkerHandle, stream_id: int, session: Session, timeout: float
    ) -> StreamReply:
        try:
            async with asyncio.timeout(timeout):
                return await worker.stream_pull(
                    stream_id,
                    session.id,
                    self.sessions.ref_budget(session),
                    self._stream_limits(first=False),
                )
        except RemoteError:
            raise
        except TimeoutError:
            raise CallTimeout(f"the iterator produced nothing for {timeout:g}s") from None

    async def stream_next(
        self, ref_id: str, session_id: str, timeout: float, tenant: str = ""
    ) -> tuple[bool, bytes]:
        """One item of a StreamRef: (done, encoded item)."""
        if len(ref_id) > MAX_ID or len(session_id) > MAX_ID:
            raise BadRequest(f"session and ref ids are limited to {MAX_ID} characters")
        if not timeout >= 0:
            raise BadRequest("timeout must be a positive number of seconds (0 = server default)")
        key = parse_ref_id(ref_id, self.boot)
        pool = self.pool(key.pool)
        worker = pool.owner(key)
        session = self.sessions.begin_call(session_id, time.monotonic(), tenant)
        new_refs = 0
        try:
            async with asyncio.timeout(self._timeout(pool, timeout)):

                async def next_on(w: WorkerHandle) -> Ok:
                    return await w.stream_next(
                        ref_id, session_id, self.sessions.ref_budget(session)
                    )

                # Queued behind a crash, it is routed again: to SessionLost (owner is dead).
                worker, reply = await self._on_worker(pool, key, session, "", next_on)
            new_refs = reply.new_refs
        except RemoteError:
            raise
        except TimeoutError:
            raise CallTimeout(
                f"StreamNext did not finish within {self._timeout(pool, timeout):g}s"
            ) from None
        finally:
            self.sessions.end_call(session, worker.key, new_refs, time.monotonic())
        done, item, released = reply.value
        self._refs_freed(worker, released)
        return bool(done), item

    def _refs_freed(self, worker: WorkerHandle, released: list[list[Any]]) -> None:
        """The worker freed refs itself (exhausted StreamRefs): stop counting them."""
        for session_id, count in released:
            self.sessions.refs_released(session_id, worker.key, count)

    # -- releases -----------------------------------------------------------------------

    async def release_refs(self, ref_ids: list[str], session_id: str, tenant: str = "") -> int:
        """Free the given refs of ``session_id`` wherever they live; unknown or lost refs,
        and refs of another session (or of another tenant's session), count as 0."""
        if len(session_id) > MAX_ID:
            raise BadRequest(f"session ids are limited to {MAX_ID} characters")
        if self.sessions.owned(session_id, tenant) is None:
            return 0  # no refs are counted for a session the table does not hold
        by_worker: dict[WorkerKey, list[str]] = defaultdict(list)
        for ref_id in ref_ids:
            try:
                by_worker[parse_ref_id(ref_id, self.boot)].append(ref_id)
            except BridgeError:
                continue
        released = 0
        for key, ids in by_worker.items():
            try:
                worker = self.pool(key.pool).owner(key)
                counts = await worker.release(ids, session_id)
            except BridgeError:
                continue  # its worker is gone, and the refs with it
            # The worker frees only this session's refs; a count for any other session
            # in its answer is not believed.
            count = counts.get(session_id, 0)
            self.sessions.refs_released(session_id, key, count)
            released += count
        return released

    async def release_session(self, session_id: str, tenant: str = "") -> tuple[int, bool]:
        if self.sessions.owned(session_id, tenant) is None:
            return 0, False  # another tenant's session is as good as absent
        session = self.sessions.remove(session_id)
        if session is None:
            return 0, False
        released = 0
        for key in session.refs_by_worker:
            try:
                released += await self.pool(key.pool).owner(key).release_session(session_id)
            except BridgeError:
                continue
        self._session_ended(session, "session_released")
        return released, True

    def _session_ended(self, session: Session, reason: str) -> None:
        """Discard the workers dedicated to ``session`` (isolation ``session``), or to its
        tenant once the tenant has no session left (isolation ``tenant``)."""
        tenant_gone = not self.sessions.has_tenant(session.tenant)
        for pool in self.pools.values():
            self.faults[pool.name].forget_session(session.tenant, session.id)
            if pool.isolation == SESSION or (pool.isolation == TENANT and tenant_gone):
                owner = owner_key(pool.isolation, session.tenant, session.id)
                assert owner is not None
                pool.release_owner(owner, reason)

    async def _sweep_sessions(self) -> None:
        """Release sessions idle past the TTL. Sleeps until the next one can expire."""
        while True:
            expiry = self.sessions.next_expiry()
            delay = self.config.session_ttl if expiry is None else expiry - time.monotonic()
            await asyncio.sleep(max(0.05, delay))
            for session in self.sessions.expired(time.monotonic()):
                log.info("session %s expired after %gs idle", session.id, self.sessions.ttl)
                for key in session.refs_by_worker:
                    with contextlib.suppress(BridgeError):
                        await self.pool(key.pool).owner(key).release_session(session.id)
                self._session_ended(session, "session_expired")


def _pool_snapshot(pool: Pool, backend: str) -> PoolSnapshot:
    level, layers = sandbox_report(pool.workers)
    workers = [
        WorkerSnapshot(
            worker_id=str(w.key),
            slot=w.key.slot,
            incarnation=w.key.incarnation,
            pid=w.pid,
            state="retiring" if w.retiring else str(w.state),
            in_flight=w.in_flight,
            calls_done=w.calls_done,
            refs=w.refs_held,
            node=w.node,
        )
        for w in [*pool.workers, *pool.retiring]
        if w is not None
    ]
    return PoolSnapshot(
        name=pool.name,
        in_flight=pool.in_flight,
        queue_depth=queue_depth(pool.workers, pool.retiring, pool.spec.concurrency),
        live=pool.live,
        size=pool.size,
        restarts=dict(pool.restarts),
        state=str(pool.state),
        max_queued=pool.max_queued,
        sandbox_level=level,
        sandbox_layers=tuple(layers),
        workers=workers,
        isolation=pool.isolation,
        spare_workers=pool.spare_count if pool.dedicated else 0,
        backend=backend,
    )
