"""How a ``--helpers`` entry is named: a file or a module, and the module it loads as.

Runs in both processes: the server's configuration and policy name helper modules before
any worker exists, and the worker child (``worker.helpers``) loads them under these
names. Stdlib only.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Final

_NOT_IDENTIFIER: Final = re.compile(r"[^A-Za-z0-9_]")


def is_helper_file(entry: str) -> bool:
    """Whether a ``--helpers`` entry names a file (rather than a module): it contains a
    ``/`` or ends with ``.py``."""
    return "/" in entry or entry.endswith(".py")


def file_module_name(path: str) -> str:
    """The module name a helper file is loaded as: stable for one path, distinct across
    paths (two ``helpers.py`` in different directories do not collide)."""
    stem = _NOT_IDENTIFIER.sub("_", os.path.basename(path).removesuffix(".py"))
    digest = hashlib.sha256(path.encode()).hexdigest()[:10]
    return f"snakebridge_helper_{stem}_{digest}"


def source_module_name(entry: str) -> str:
    """The module name a ``--helpers`` entry ends up as in the worker."""
    return file_module_name(entry) if is_helper_file(entry) else entry
