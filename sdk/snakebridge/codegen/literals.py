"""Text from a worker as Python source: string literals and comments. Client process.

Pure. A description comes from a worker, whose user code chooses its versions, names and
docstrings: whatever of it the generated code carries goes through here (or through the
renderer's ``docstring``), so that no text ever becomes code.
"""

from __future__ import annotations


def literal(text: str) -> str:
    """A double-quoted string literal of ``text`` (the quotes ruff format keeps), every
    character it cannot hold as is escaped: text from a worker never becomes code."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isascii() and ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return '"' + "".join(out) + '"'


def one_line(text: str) -> str:
    """``text`` fit for a ``#`` comment: one line of printable ASCII."""
    return "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in text)
