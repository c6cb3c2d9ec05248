"""Hostile code for ``test_isolation.py``: what a client that runs code in its worker
(sandbox level standard; see docs/security.md) does to other clients of that worker.

Runs in a worker child. Each function is one attack, reaching only what any code in the
worker can: module state, ``gc``, threads, file descriptors.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import string
import threading
import time
from typing import Any

_SEEN: list[str] = []  # what the spy saw
_HELD: list[int] = []  # fds held by the starvation attack
_real_dumps = json.dumps


def install_spy() -> str:
    """Wrap ``json.dumps``: every later caller's argument is recorded here."""

    def spy(obj: Any, *args: Any, **kwargs: Any) -> str:
        _SEEN.append(repr(obj))
        return _real_dumps(obj, *args, **kwargs)

    json.dumps = spy
    return "spying"


def seen() -> list[str]:
    return list(_SEEN)


def rewrite_sqrt() -> str:
    """Make ``math.sqrt`` answer 42.0 to everyone."""
    math.sqrt = lambda x: 42.0
    return "rewritten"


def poison_capwords() -> str:
    """Poison ``string.capwords`` and leave: does it outlive the attacker's session?"""
    string.capwords = lambda s, sep=None: "poisoned"
    return "poisoned"


def _ref_table() -> Any:
    return next(o for o in gc.get_objects() if type(o).__name__ == "RefTable")


def dump_objects() -> list[str]:
    """Every object any session holds a ref to in this worker."""
    return [
        repr(vars(obj)) if hasattr(obj, "__dict__") else repr(obj)
        for obj, _ in _ref_table()._objects.values()
    ]


def read_ref(ref_id: str) -> str | None:
    """The object behind another session's ref id, read straight out of the table."""
    entry = _ref_table()._objects.get(ref_id.rsplit(".", 1)[-1])
    return None if entry is None else repr(vars(entry[0]))


def crash_later(delay: float) -> str:
    """Return at once; kill the worker ``delay`` seconds later, whoever's call runs then."""

    def die() -> None:
        time.sleep(delay)
        os._exit(9)

    threading.Thread(target=die, daemon=True).start()
    return "armed"


def wedge() -> str:
    """Leave a thread that holds the GIL for an hour: the worker answers nothing."""

    def hold() -> None:
        time.sleep(0.2)  # let this call's reply leave first
        ctypes.PyDLL(None).sleep(3600)  # PyDLL: the GIL stays held during the C call

    threading.Thread(target=hold, daemon=True).start()
    return "wedged"


def hog_fds(keep_free: int) -> int:
    """Hold every file descriptor the worker may open but ``keep_free``."""
    while True:
        try:
            _HELD.append(os.dup(0))
        except OSError:
            break
    for _ in range(min(keep_free, len(_HELD))):
        os.close(_HELD.pop())
    return len(_HELD)


def open_files(n: int) -> int:
    """An innocent call that needs ``n`` file descriptors at once."""
    fds = [os.dup(0) for _ in range(n)]
    for fd in fds:
        os.close(fd)
    return n
