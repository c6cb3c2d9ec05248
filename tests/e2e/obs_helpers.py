"""Worker-side code for the observability tests: writes to stdout, stderr and logging."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("obs.user")


def chatter(tag: str) -> str:
    print(f"stdout says {tag}")
    print(f"stderr says {tag}", file=sys.stderr)
    log.info("logging says %s", tag)
    return tag


def chatter_then_fail(tag: str) -> None:
    chatter(tag)
    raise ValueError(f"failed {tag}")


def flood(lines: int, long_line: int) -> int:
    """``lines`` short lines, then one line of ``long_line`` characters."""
    for i in range(lines):
        print(f"flood line {i}")
    sys.stdout.write("z" * long_line + "\n")
    return lines
