"""Error text as it may travel: cut to a limit, never padded. Pure; every process."""

from __future__ import annotations


def clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was cut, with no
    leading or trailing whitespace: error text ends up in the ``grpc-message`` header,
    where grpclib leaves spaces unescaped and strict HTTP/2 peers reject a value that
    begins or ends with one. Every error text the server and its workers send goes
    through here."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    note = f"...[{cut} characters cut]..."
    return note + text[-limit:].lstrip() if keep_end else text[:limit].rstrip() + note


def call_label(kind_name: str, module: str, name: str) -> str:
    """How error text names a call: ``call math.sqrt``, ``method most_common``."""
    kind = "call" if kind_name in ("function", "") else kind_name
    target = f"{module}.{name}" if module and name else module or name
    return f"{kind} {target}"


def timed_out(what: str, timeout: float | None) -> str:
    """The message of a call or stream that ran out of time, on either side."""
    limit = f" ({timeout:g}s)" if timeout is not None else ""
    return f"{what} did not finish within its timeout{limit}"
