"""``python -m snakebridge_server.worker``: the worker child process's entry point (the
server's ``supervisor`` spawns it)."""

from __future__ import annotations

from .main import main

main()
