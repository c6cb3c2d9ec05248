"""The start-up error for a pool interpreter without the worker runtime says how to
install it from where snakebridge really is (this checkout, or its wheel), never from a
package index it is not on."""

from __future__ import annotations

from pathlib import Path

import pytest

from snakebridge import __version__
from snakebridge_server.supervisor import spawn


def test_from_a_checkout_it_names_the_checkout() -> None:
    checkout = spawn.source_checkout()
    assert checkout is not None and (checkout / "pyproject.toml").is_file()
    hint = spawn.install_hint("/opt/venv/bin/python")
    assert hint == (
        f"install snakebridge {__version__} into that environment "
        f"(/opt/venv/bin/python -m pip install {checkout})"
    )


def test_from_a_wheel_it_names_the_wheel_make_dist_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spawn, "source_checkout", lambda: None)
    hint = spawn.install_hint("/opt/venv/bin/python")
    assert f"pip install snakebridge-{__version__}-py3-none-any.whl" in hint
    assert "make dist" in hint


def test_it_never_suggests_a_package_index() -> None:
    for checkout in (None, Path("/src/snakebridge")):
        assert "==" not in spawn.install_hint("/py", checkout)
