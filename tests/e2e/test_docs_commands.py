"""Every command the docs show exists: each ``bridge-server``, ``snakebridge`` and
``make`` command line in README.md and docs/*.md, with its subcommand and every
``--flag``, and every ``--flag`` named in prose. Compared against what the programs
themselves say (``--help`` of each console script that pyproject.toml declares, of the
worker and of ``bench``) and the Makefile's targets. A renamed flag or target fails here
until the docs follow."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the real programs (--help)

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("sh", "bash", "shell", "console")
PROGRAMS = ("bridge-server", "snakebridge", "make")
_FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.M | re.S)  # list items indent
_SPAN = re.compile(r"`([^`\n]+)`")
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_ASSIGN = re.compile(r"^[A-Z_][A-Z0-9_]*=")
_TARGET = re.compile(r"^([A-Za-z][\w.-]*)\s*:(?!=)", re.M)


def _scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


@functools.cache
def help_text(*command: str) -> str:
    """``--help`` of a console script (run from its entry point, so a script added to
    pyproject.toml counts before the venv is reinstalled), of the worker or of bench."""
    if command[0] in ("worker", "bench"):
        module = "snakebridge_server.worker" if command[0] == "worker" else "bench"
        argv = [sys.executable, "-m", module, *command[1:], "--help"]
    else:
        module, _, func = _scripts()[command[0]].partition(":")
        code = f"import sys; sys.argv = sys.argv[1:]; from {module} import {func}; {func}()"
        argv = [sys.executable, "-c", code, *command, "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert done.returncode == 0, f"{' '.join(command)} --help failed:\n{done.stderr}"
    return done.stdout


def flags_of(*command: str) -> set[str]:
    return set(_FLAG.findall(help_text(*command)))


def make_targets() -> set[str]:
    return set(_TARGET.findall((ROOT / "Makefile").read_text()))


def command_lines() -> Iterator[tuple[str, str]]:
    """(where, command line) for every shell line and inline code span of the docs (a
    span may be a log line instead: ``commands`` tells)."""
    for doc in DOCS:
        text = doc.read_text()
        for lang, body in _FENCE.findall(text):
            if lang not in SHELL_BLOCKS:
                continue
            for line in body.replace("\\\n", " ").splitlines():  # continued lines
                line = line.strip()
                if lang == "console":
                    if not line.startswith("$ "):
                        continue  # output, not a command
                    line = line[2:]
                yield doc.name, line.split(" # ")[0].strip()
        for span in _SPAN.findall(_FENCE.sub("", text)):
            yield doc.name + " (inline)", span.strip()


def _tokens(line: str) -> list[str]:
    try:
        tokens = shlex.split(line)
    except ValueError:  # an unbalanced quote in prose
        tokens = line.split()
    while tokens and _ASSIGN.match(tokens[0]):
        tokens.pop(0)  # SNAKEBRIDGE_WORKERS=4 bridge-server
    return tokens


_WORD = re.compile(r"^[a-z][a-z0-9-]*$")


def _log_text(line: str, tokens: list[str]) -> bool:
    """Whether an inline span that starts with a program's name quotes its output
    (``bridge-server SERVING on …``, ``bridge-server check: FAILED``) rather than a
    command: the word after the name is not a subcommand-like word or a flag, or the span
    elides (``…``) or remarks (``(up to 10s)``)."""
    first = tokens[1]
    if "…" in line or "(" in line:
        return True
    return not (first.startswith("-") or _ASSIGN.match(first) or _WORD.match(first))


def commands() -> list[tuple[str, list[str]]]:
    """(where, tokens) of each command of a program in ``PROGRAMS``."""
    found = []
    for where, line in command_lines():
        tokens = _tokens(line)
        if len(tokens) < 2 or Path(tokens[0]).name not in PROGRAMS:
            continue
        if where.endswith("(inline)") and _log_text(line, tokens):
            continue
        found.append((where, [Path(tokens[0]).name, *tokens[1:]]))
    return found


def _flags(tokens: list[str]) -> list[str]:
    return [t.split("=")[0] for t in tokens if t.startswith("--")]


def problems_of(tokens: list[str]) -> list[str]:
    """What in one command line does not exist."""
    program, rest = tokens[0], tokens[1:]
    if program == "make":
        problems = [f"no make target {t!r}" for t in rest if not t.startswith("-")
                    and "=" not in t and t not in make_targets()]  # fmt: skip
        targets = [t for t in rest if t in make_targets()]
        args = [t.split("=", 1)[1] for t in rest if t.startswith("ARGS=")]
        inner = {"run": ("bridge-server",), "bench": ("bench",)}
        for target in targets:
            if target in inner and args:
                problems += problems_of([*inner[target], *shlex.split(args[0])])
        return problems
    if program not in _scripts() and program != "bench":
        return [f"pyproject.toml declares no {program!r} command"]
    command: tuple[str, ...] = (program,)
    if rest and not rest[0].startswith("-"):
        if not re.search(rf"\b{re.escape(rest[0])}\b", help_text(program)):
            return [f"{program} --help does not mention a subcommand {rest[0]!r}"]
        command = (program, rest[0])
    known = flags_of(*command)
    return [f"{' '.join(command)} has no flag {f}" for f in _flags(rest) if f not in known]


def test_the_docs_show_commands_at_all() -> None:
    shown = {tokens[0] for _, tokens in commands()}
    assert {"bridge-server", "make"} <= shown


@pytest.mark.parametrize(
    ("where", "tokens"), commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)
)
def test_every_command_shown_exists_with_its_flags(where: str, tokens: list[str]) -> None:
    assert problems_of(tokens) == [], f"{where}: {' '.join(tokens)}"


def test_every_flag_named_in_prose_exists() -> None:
    programs = [("bridge-server",), ("bridge-server", "check"), ("worker",), ("bench",)]
    programs += [("snakebridge", "generate")]
    programs += [(name,) for name in _scripts() if name != "bridge-server"]
    known = set().union(*(flags_of(*p) for p in programs))
    missing = set()
    for where, line in command_lines():
        match = re.match(r"(--[a-z][a-z0-9-]*)(\*?)", line)
        if match is None:
            continue
        flag, wildcard = match.groups()
        if wildcard and any(k.startswith(flag) for k in known):
            continue  # `--sandbox-*`
        if flag not in known:
            missing.add(f"{where}: {flag}")
    assert not missing


def test_a_renamed_flag_or_target_is_caught() -> None:
    assert problems_of(["bridge-server", "--workerz", "2"]) == [
        "bridge-server has no flag --workerz"
    ]
    assert problems_of(["make", "runn"]) == ["no make target 'runn'"]
    assert problems_of(["make", "run", "ARGS=--nope"]) == ["bridge-server has no flag --nope"]
    assert problems_of(["bridge-server", "chek"])[0].startswith("bridge-server --help does not")


def test_the_readme_layout_names_real_files_each_once() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = re.search(r"## Layout\n.*?```\n(.*?)```", readme, re.S)
    assert layout is not None
    named = re.findall(r"[\w/]+\.(?:py|proto)\b", layout.group(1))
    tops = ("sdk", "server", "protos", "tests", "bench", "examples")
    sources = [p for top in tops for p in (ROOT / top).rglob("*")]
    for name in named:
        files = sum(str(p).endswith("/" + name) for p in sources)
        assert files, f"Layout: no file {name}"
        # Twice only when there are two files of that name (supervisor/ and worker/output.py).
        assert named.count(name) <= files, f"Layout names {name} {named.count(name)} times"
