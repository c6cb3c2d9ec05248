"""Remote errors keep their type, their data and their traceback (issue #16 B, #19 findings
2 and 3), against a real server: the class hierarchy, ``args``, the OSError fields, the
chain, the remote traceback as a note, ``remote_type``, the bounds on all of it, and the
notes saying which sandbox layer refused an operation."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import snakebridge
from snakebridge import errors
from snakebridge.wire import remote
from snakebridge_server.sandbox import landlock, seccomp

from .conftest import HERE, ServerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

H = "error_helpers"
LANDLOCK_ABI = landlock.abi_version() if sys.platform.startswith("linux") else 0
SECCOMP = sys.platform.startswith("linux") and seccomp.supported()
needs_landlock = pytest.mark.skipif(LANDLOCK_ABI < 1, reason="the kernel has no Landlock")
needs_seccomp = pytest.mark.skipif(not SECCOMP, reason="the seccomp filter is x86_64 Linux only")


def _r(exc: BaseException) -> errors.RemoteError:
    assert isinstance(exc, errors.RemoteError)
    return exc


def _line_of(text: str) -> int:
    source = (HERE / f"{H}.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if text in line)


async def test_a_library_exception_is_caught_by_its_builtin_ancestor(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(ValueError) as info:
            await client.call(H, "decode", ["{not json"])
    err = info.value
    assert isinstance(err, errors.RemoteError)
    assert err.remote_type == "json.decoder.JSONDecodeError" == err.type_name
    assert err.remote_mro[:2] == ("json.decoder.JSONDecodeError", "builtins.ValueError")
    assert (
        str(err)
        == err.message
        == "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    assert "JSONDecodeError" in repr(err) and "JSONDecodeError" not in str(err)


async def test_args_travel_by_value_and_own_classes_match_remote_type(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(LookupError) as info:
            await client.call(H, "not_found", ["user-7"])
        with pytest.raises(KeyError) as key_info:
            await client.call("operator", "getitem", [{}, "missing"])
        with pytest.raises(ValueError) as opaque:
            await client.call(H, "unencodable_args")
    err = _r(info.value)
    assert err.args == ("user-7", 42)
    assert err.remote_mro[:3] == (f"{H}.RecordNotFound", f"{H}.AppError", "builtins.LookupError")
    assert key_info.value.args == ("missing",) and str(key_info.value) == "'missing'"
    assert opaque.value.args == (_r(opaque.value).message,)  # object() cannot travel


async def test_remote_type_classes_catch_the_remote_type_and_its_subclasses(
    server: ServerProcess,
) -> None:
    app_error = snakebridge.remote_type(f"{H}.AppError")
    assert snakebridge.remote_type(f"{H}.AppError") is app_error
    assert snakebridge.remote_type("builtins.KeyError") is type(
        errors.remote_error("builtins.KeyError", "k")
    )
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(app_error) as info:
            await client.call(H, "not_found", ["x"])
        assert isinstance(info.value, LookupError)
        with pytest.raises(ValueError) as other:
            await client.call(H, "decode", ["x"])
        assert not isinstance(other.value, app_error)


async def test_remote_type_catches_numpy_linalg_error_without_numpy_in_the_client(
    server: ServerProcess,
) -> None:
    pytest.importorskip("numpy")  # the workers need it; the client process below does not
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        import snakebridge

        async def main():
            async with snakebridge.Client({server.address!r}) as client:
                try:
                    await client.call("numpy.linalg", "inv", [[[0.0, 0.0], [0.0, 0.0]]])
                except snakebridge.remote_type("numpy.linalg.LinAlgError") as err:
                    assert isinstance(err, ValueError), type(err).__mro__
                    print("caught", err.remote_type, "numpy" in sys.modules)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "caught numpy.linalg.LinAlgError False"


async def test_os_errors_carry_errno_strerror_and_filename(
    server: ServerProcess, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.txt")
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(FileNotFoundError) as info:
            await client.call(H, "read_file", [missing])
    err = info.value
    assert (err.errno, err.strerror, err.filename) == (
        errno.ENOENT,
        "No such file or directory",
        missing,
    )
    assert not any("sandbox" in note for note in err.__notes__)  # not the sandbox's doing


async def test_the_cause_and_context_chain_travels(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(RuntimeError) as caused:
            await client.call(H, "chained")
        with pytest.raises(TypeError) as during:
            await client.call(H, "during_handling")
    cause = caused.value.__cause__
    assert isinstance(cause, KeyError) and isinstance(cause, errors.RemoteError)
    assert cause.args == ("inner-key",) and caused.value.__suppress_context__
    assert "direct cause" in (text := _r(caused.value).traceback) and "inner-key" in text
    context = during.value.__context__
    assert isinstance(context, ValueError) and str(context) == "first"
    assert during.value.__cause__ is None


async def test_the_remote_traceback_is_a_note_that_names_the_workers_file_and_line(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(ValueError) as info:
            await client.call(H, "decode", ["x"])
    note = info.value.__notes__[0]
    assert note.startswith("Remote traceback (most recent call last):")
    assert f'{H}.py", line {_line_of("return json.loads(text)")}, in decode' in note


def test_an_uncaught_remote_error_prints_the_workers_file_and_line(server: ServerProcess) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        import snakebridge

        async def main():
            async with snakebridge.Client({server.address!r}) as client:
                await client.call({H!r}, "decode", ["x"])

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert f'{H}.py", line {_line_of("return json.loads(text)")}, in decode' in done.stderr
    assert "snakebridge.remote.json.decoder.JSONDecodeError: Expecting value" in done.stderr


async def test_a_stream_error_keeps_its_type_and_traceback(server: ServerProcess) -> None:
    got = []
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(ValueError) as info:
            async for item in client.stream(H, "fails_in_stream"):
                got.append(item)
    assert got == [1]
    assert _r(info.value).remote_type == "json.decoder.JSONDecodeError"
    assert "fails_in_stream" in info.value.__notes__[0]


async def test_everything_that_travels_is_bounded(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(ValueError) as chain:
            await client.call(H, "long_chain", [10])
        with pytest.raises(ValueError) as noted:
            await client.call(H, "many_notes", [50, 5000])
        with pytest.raises(errors.RemoteError) as deep:
            await client.call(H, "deep_hierarchy", [40])
        with pytest.raises(ValueError) as big:
            await client.call(H, "huge_message", [1_000_000])
        with pytest.raises(RecursionError) as recursion:
            await client.call(H, "long_chain", [100_000])
        assert await client.call("math", "sqrt", [4]) == 2.0  # the worker serves on
    links, err = 0, chain.value.__cause__
    while err is not None:
        links, err = links + 1, err.__cause__
    assert links == remote.MAX_CHAIN
    remote_notes = [n for n in noted.value.__notes__ if n.startswith("note ")]
    assert len(remote_notes) == remote.MAX_NOTES
    assert all(len(n) <= remote.MAX_NOTE + 64 for n in remote_notes)
    assert len(deep.value.remote_mro) == remote.MAX_MRO
    assert deep.value.remote_mro[0].endswith("Level39")
    message = _r(big.value).message
    assert len(message) <= remote.MAX_MESSAGE + 64 and "characters cut" in message
    assert big.value.args == (message,)  # a 1 MB argument does not travel
    assert len(recursion.value.__notes__[0]) <= remote.MAX_TRACEBACK + 100


# -- sandbox notes --------------------------------------------------------------------------


def _sandbox_notes(err: BaseException) -> list[str]:
    return [n for n in getattr(err, "__notes__", ()) if n.startswith("sandbox")]


@needs_landlock
async def test_reading_outside_the_read_allowlist_names_landlock_and_the_setting(
    server: ServerProcess,
) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(PermissionError) as info:
            await client.call(H, "read_file", ["/etc/hosts"])
    assert info.value.errno == errno.EACCES and info.value.filename == "/etc/hosts"
    (note,) = _sandbox_notes(info.value)
    assert note.startswith("sandbox (Landlock):") and "--sandbox-read-paths /etc/hosts" in note
    assert "sandbox_read_paths" in note


@needs_landlock
async def test_writing_where_only_reading_is_allowed_names_the_write_paths(
    make_server: object, tmp_path_factory: pytest.TempPathFactory
) -> None:
    readable = Path("/var/tmp") / f"sb-read-only-{os.getpid()}"
    readable.mkdir(exist_ok=True)
    try:
        srv = make_server("--workers", "1", "--sandbox-read-paths", str(readable))  # type: ignore[operator]
        async with snakebridge.Client(srv.address) as client:
            with pytest.raises(PermissionError) as info:
                await client.call(H, "write_file", [str(readable / "out.txt"), "x"])
    finally:
        readable.rmdir()
    (note,) = _sandbox_notes(info.value)
    assert "read" in note and "but not write it" in note and "--sandbox-write-paths" in note


@needs_landlock
async def test_a_files_own_permissions_get_no_sandbox_note(
    server: ServerProcess, tmp_path: Path
) -> None:
    locked = tmp_path / "locked"  # under the write paths the e2e conftest allows
    locked.mkdir()
    locked.chmod(0)
    try:
        async with snakebridge.Client(server.address) as client:
            with pytest.raises(PermissionError) as info:
                await client.call(H, "read_file", [str(locked / "f")])
    finally:
        locked.chmod(0o700)
    assert _sandbox_notes(info.value) == []


@needs_seccomp
async def test_a_socket_refused_by_seccomp_says_so(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(PermissionError) as info:
            await client.call(H, "open_socket")
    assert info.value.errno == errno.EPERM
    (note,) = _sandbox_notes(info.value)
    assert note.startswith("sandbox (seccomp):") and "may not create sockets" in note
    assert "--sandbox none" in note


@needs_seccomp
async def test_name_resolution_without_network_says_so(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(OSError) as info:
            await client.call(H, "resolve", ["example.com"])
    assert _r(info.value).remote_type == "socket.gaierror"
    assert isinstance(info.value, OSError) and not isinstance(info.value, socket.gaierror)
    (note,) = _sandbox_notes(info.value)
    assert "no network" in note and "names do not resolve" in note


async def test_an_environment_variable_the_allowlist_removed_says_so(server: ServerProcess) -> None:
    async with snakebridge.Client(server.address) as client:
        with pytest.raises(KeyError) as removed:
            await client.call(H, "env", ["DATABASE_URL"])
        with pytest.raises(KeyError) as allowed_but_unset:
            await client.call(H, "env", ["LC_SNAKEBRIDGE_UNSET"])
    (note,) = _sandbox_notes(removed.value)
    assert note.startswith("sandbox (environment):") and "'DATABASE_URL' is not on it" in note
    assert "[pools.default] env" in note
    assert _sandbox_notes(allowed_but_unset.value) == []  # the allowlist passes LC_*


async def test_memory_error_names_max_memory(make_server: object) -> None:
    srv = make_server("--workers", "1", "--max-memory", str(512 * 1024 * 1024))  # type: ignore[operator]
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(MemoryError) as info:
            await client.call(H, "allocate", [1024 * 1024 * 1024])
    (note,) = _sandbox_notes(info.value)
    assert "512 MiB" in note and "--max-memory" in note


async def test_no_sandbox_notes_at_level_none(make_server: object) -> None:
    srv = make_server("--workers", "1", "--sandbox", "none")  # type: ignore[operator]
    async with snakebridge.Client(srv.address) as client:
        with pytest.raises(KeyError) as info:
            await client.call(H, "env", ["DATABASE_URL_SURELY_UNSET"])
    assert _sandbox_notes(info.value) == []
