"""The output samples in the docs match what the program prints: docs/sandbox.md's
``bridge-server check`` sample has one line per layer the real check reports, in order.
(The values differ from host to host; the lines may not.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import run_bridge_server

pytestmark = pytest.mark.e2e

SANDBOX_MD = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"


def shape(lines: list[str]) -> list[str]:
    """Each line cut to what does not depend on the host: the layer's name, or the
    line's first words."""
    out = []
    for line in lines:
        layer = re.match(r"^\s+([a-z]+):", line)
        out.append(f"layer {layer.group(1)}" if layer else " ".join(line.split()[:3]))
    return out


def test_the_check_sample_in_sandbox_md_has_every_line_check_prints() -> None:
    sample = re.search(r"```console\n\$ bridge-server check --workers 1\n(.*?)```",
                       SANDBOX_MD.read_text(), re.S)  # fmt: skip
    assert sample is not None, "docs/sandbox.md has no 'bridge-server check' sample"
    done = run_bridge_server("check", "--workers", "1")
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    if not any("seccomp: on" in line for line in printed):
        pytest.skip(f"this host does not reach the sample's level:\n{done.stdout}")
    assert shape(sample.group(1).splitlines()) == shape(printed)
