"""An enum only the worker loads (the typed-values test never imports this module)."""

import enum


class LocalOnly(enum.Enum):
    A = 1
