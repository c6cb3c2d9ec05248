"""The public surface: ``__all__`` lists exactly what is public, and the worker's import
closure stays free of the gRPC stack."""

from __future__ import annotations

import subprocess
import sys

import snakebridge
from snakebridge import errors


def test_package_all_resolves_and_is_sorted() -> None:
    assert snakebridge.__all__ == sorted(snakebridge.__all__)
    for name in snakebridge.__all__:
        assert getattr(snakebridge, name) is not None
    assert set(dir(snakebridge)) == set(snakebridge.__all__)


def test_errors_all_lists_every_public_error_class() -> None:
    public = {
        name
        for name, value in vars(errors).items()
        if not name.startswith("_") and getattr(value, "__module__", "") == errors.__name__
    }
    assert set(errors.__all__) == public
    assert errors.__all__ == sorted(errors.__all__)


def test_every_error_class_documents_when_it_is_raised() -> None:
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, errors.BridgeError):
            assert value.__doc__ and len(value.__doc__) > 20, name


def test_remote_builtin_errors_inherit_the_builtin_only_for_exceptions() -> None:
    zde = errors.remote_error("builtins.ZeroDivisionError", "division by zero")
    assert isinstance(zde, ZeroDivisionError) and isinstance(zde, errors.RemoteError)
    kbi = errors.remote_error("builtins.KeyboardInterrupt", "")
    assert type(kbi) is errors.RemoteError  # a remote Ctrl-C must not look local
    custom = errors.remote_error("mylib.Oops", "x")
    assert type(custom) is errors.RemoteError and str(custom) == "mylib.Oops: x"


def test_worker_process_does_not_import_the_grpc_stack() -> None:
    code = (
        "import sys, snakebridge_server.worker.main\n"
        "heavy = [m for m in ('grpclib', 'betterproto', 'h2', 'anyio') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_every_builtin_exception_becomes_a_remote_error() -> None:
    # MemoryError's __new__ refused the subclass and the server's channel died with the
    # reply in hand, so the call hung until its timeout.
    import builtins

    for name, value in vars(builtins).items():
        if not (isinstance(value, type) and issubclass(value, Exception)):
            continue
        err = errors.remote_error(f"builtins.{name}", "message", "traceback")
        assert isinstance(err, errors.RemoteError), name
        assert err.args == ("message",) and err.traceback == "traceback", name
        assert str(err) == f"builtins.{name}: message", name
    assert isinstance(errors.remote_error("builtins.MemoryError", ""), MemoryError)
    assert isinstance(errors.remote_error("builtins.PermissionError", ""), PermissionError)


def test_the_server_imports_only_public_sdk_names() -> None:
    """The server speaks the SDK's wire contract through ``snakebridge.wire`` and
    ``snakebridge.errors``; the SDK's private modules stay free to change."""
    import ast
    import pathlib

    import snakebridge_server

    root = pathlib.Path(snakebridge_server.__file__).parent
    private: list[str] = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            private += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith("snakebridge.")
                and any(part.startswith("_") and part != "__version__" for part in n.split("."))
            ]
    assert not private, private


def test_the_wire_contract_imports_without_the_grpc_stack() -> None:
    code = (
        "import sys\n"
        "from snakebridge.wire import codec, constants, messages, text, trailer\n"
        "heavy = [m for m in ('grpclib', 'betterproto', 'h2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
