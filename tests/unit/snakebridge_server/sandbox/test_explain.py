"""The notes a worker adds to an error the sandbox caused (``sandbox.explain``): which layer
refused, and which setting allows it. Pure: facts in, a note out."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import msgpack

from snakebridge import errors
from snakebridge.wire import remote, trailer
from snakebridge_server.sandbox.explain import SandboxFacts
from snakebridge_server.supervisor.handle import remote_error_of


def _raised(fn: Any, *args: Any) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def _round_trip(exc: BaseException, **explain: Any) -> errors.RemoteError:
    """worker describe -> channel bytes -> server -> trailer -> client, as in production."""
    described = remote.describe(exc, explain.get("explain"))
    extra = msgpack.unpackb(msgpack.packb(remote.pack_extra(described)))  # the channel
    server_side = remote_error_of(
        [described["type"], described["message"], described["traceback"], extra]
    )
    client_side = trailer.unpack(trailer.pack(server_side, "cid-1"))
    assert isinstance(client_side, errors.RemoteError)
    assert client_side.correlation_id == "cid-1"
    return client_side


# -- sandbox notes -------------------------------------------------------------------------


FACTS = SandboxFacts(
    pool="default",
    level="standard",
    read_paths=("/usr/lib", "/srv/data"),
    write_paths=("/tmp/scratch",),
    landlock=True,
    seccomp=True,
    max_memory=2 << 30,
)


def test_landlock_notes_name_the_allowlist_and_its_setting() -> None:
    outside = FACTS.explain(PermissionError(errno.EACCES, "Permission denied", "/etc/hosts"))
    assert outside is not None and outside.startswith("sandbox (Landlock):")
    assert "--sandbox-read-paths /etc/hosts" in outside
    read_only = FACTS.explain(PermissionError(errno.EACCES, "Permission denied", "/srv/data/x"))
    assert read_only is not None and "but not write it" in read_only
    assert "--sandbox-write-paths /srv/data/x" in read_only
    # Inside the write allowlist: the file's own mode refused, not the sandbox.
    assert FACTS.explain(PermissionError(errno.EACCES, "denied", "/tmp/scratch/f")) is None
    assert FACTS.explain(FileNotFoundError(errno.ENOENT, "missing", "/etc/hosts")) is None


def _raise_in_module(module: str, exc: BaseException) -> BaseException:
    """``exc`` raised by a function whose frame belongs to ``module``."""
    namespace: dict[str, Any] = {"__name__": module, "exc": exc}
    exec("def raiser():\n    raise exc\n", namespace)
    return _raised(namespace["raiser"])


def test_seccomp_notes_need_the_refusal_to_come_from_a_socket() -> None:
    def eperm() -> PermissionError:
        return PermissionError(errno.EPERM, "Operation not permitted")

    note = FACTS.explain(_raise_in_module("socket", eperm()))
    assert note is not None and note.startswith("sandbox (seccomp):") and "sockets" in note
    processes = FACTS.explain(_raise_in_module("subprocess", eperm()))
    assert processes is not None and "start processes" in processes
    assert FACTS.explain(_raise_in_module("mylib", eperm())) is None  # not provably seccomp
    no_filter = SandboxFacts(pool="p", level="standard", landlock=True, seccomp=False)
    assert no_filter.explain(_raise_in_module("socket", eperm())) is None
    dns = FACTS.explain(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert dns is not None and "no network" in dns


def test_environment_notes_only_for_names_the_allowlist_removes() -> None:
    removed = _raised(os.environ.__getitem__, "SNAKEBRIDGE_SURELY_UNSET_VAR")
    note = FACTS.explain(removed)
    assert note is not None and "'SNAKEBRIDGE_SURELY_UNSET_VAR' is not on it" in note
    assert FACTS.explain(_raised(os.environ.__getitem__, "LC_SURELY_UNSET")) is None
    assert FACTS.explain(_raised({}.__getitem__, "DATABASE_URL")) is None  # not os.environ


def test_memory_error_names_max_memory_and_level_none_says_nothing() -> None:
    note = FACTS.explain(MemoryError())
    assert note is not None and "2 GiB" in note and "--max-memory" in note
    off = SandboxFacts(pool="p", level="none")
    assert off.explain(MemoryError()) is None
    assert off.explain(PermissionError(errno.EACCES, "denied", "/etc/hosts")) is None


def test_the_note_travels_to_the_client() -> None:
    exc = PermissionError(errno.EACCES, "Permission denied", "/etc/hosts")
    err = _round_trip(exc, explain=FACTS.explain)
    assert err.__notes__[-1].startswith("sandbox (Landlock):")
