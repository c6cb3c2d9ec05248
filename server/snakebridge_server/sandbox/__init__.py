"""Worker sandbox: what the server decides before a worker starts (``spawn``), what the
worker applies to itself before any user code runs (``apply``), the kernel layers
(``landlock``, ``seccomp``) and the call policy (``policy``). See docs/sandbox.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What one worker is told to apply; travels as JSON on its command line."""

    level: str = "none"
    scratch: str = ""
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    deny_modules: tuple[str, ...] = ()
    allow_modules: tuple[str, ...] = ()
    max_memory: int = 0
    max_call_cpu: float = 0.0
    max_open_files: int = 0
    max_file_size: int = 0
    max_threads: int = 0
    uid: int = 0  # the worker was started as this uid (0: as the server's user)
    notes: tuple[str, ...] = field(default=())  # the server's own findings (uid skipped...)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SandboxSpec:
        raw = json.loads(text)
        for key, value in raw.items():
            if isinstance(value, list):
                raw[key] = tuple(value)
        return cls(**raw)
