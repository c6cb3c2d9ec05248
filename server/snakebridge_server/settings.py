"""The settings table: what one setting is, and everything derived from its declaration.

Each setting is declared once, as a field of ``config.ServerConfig`` (a server-level
setting) or ``config.PoolConfig`` (a pool-level one: every pool has its own value)::

    max_queued: int = setting(4096, "calls queued per pool before PoolSaturated", at_least(1))

From that one line come its default, its checks (run by ``check_fields`` in one loop, the
error naming the field), its ``--max-queued`` flag with the help text, its
``SNAKEBRIDGE_MAX_QUEUED`` variable, its ``max_queued`` TOML key, its scope (which class
declares it) and how text and TOML values are converted, which follows the field's
annotation (``_KINDS``: int, float, str, ``str | None``, a comma list
``tuple[str, ...]``, a switch ``bool``, a file-only table). ``SupervisionPolicy`` and
other code that needs a default reads it with ``config.default_of``.

Adding a setting:

1. one ``setting(default, help, *checks)`` field in ``PoolConfig`` or ``ServerConfig``;
   a check takes the value and returns the reason it is wrong, or None (reuse the ones
   below: ``at_least``, ``in_range``, ``positive_seconds``, ``one_of``, ``each``, …);
2. a rule that relates it to another setting, if any: a small function returning
   ``(key, reason)`` or None, listed in ``config.POOL_RULES`` or ``config.SERVER_RULES``;
3. its row in docs/configuration.md (``tests/unit/snakebridge_server/test_settings.py``
   fails until it is).

Porting one added the old way (a field, a ``cli._FLAGS`` entry, lines in ``validate``):
keep the field, move the help text and the check into ``setting(...)``, and drop the
``_FLAGS`` entry and the ``validate`` lines.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, Final, Literal

ENV_PREFIX: Final = "SNAKEBRIDGE_"
_TRUE: Final = ("1", "true", "yes")
MODULE_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

Check = Callable[[Any], str | None]
Scope = Literal["server", "pool"]


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the reason. ``bridge-server``
    prints it and exits with status 2: the operator fixes the flag, variable or file."""


def fail(key: str, reason: str) -> None:
    raise ConfigError(f"invalid config {key}: {reason}")


# -- the kinds of value, from the field's annotation --


def _split(raw: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def _wrong(where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"invalid config {where}: {value!r} is not {expected}")


def _toml_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(where, value, "an integer")
    return value


def _toml_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(where, value, "a number")
    return float(value)


def _toml_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _wrong(where, value, "a string")
    return value


def _toml_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):  # a comma list, as on the command line
        return _split(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _wrong(where, value, "a list of strings")
    return tuple(value)


def _toml_switch(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(where, value, "true or false")
    return value


def _toml_table(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _wrong(where, value, 'a table of NAME = "value"')
    for name, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _wrong(f"{where}.{name}", item, "a string")
    return tuple((name, str(item)) for name, item in value.items())


@dataclass(frozen=True, slots=True)
class Kind:
    """How a setting's value is read from TOML and from text (a flag or a variable).
    ``from_text`` None: the setting is file-only; a switch is a flag without a value."""

    from_toml: Callable[[Any, str], Any]
    from_text: Callable[[str], Any] | None
    switch: bool = False


_KINDS: Final = {
    "int": Kind(_toml_int, int),
    "float": Kind(_toml_float, float),
    "str": Kind(_toml_str, str),
    "str | None": Kind(_toml_str, str),
    "tuple[str, ...]": Kind(_toml_list, _split),
    "tuple[tuple[str, str], ...]": Kind(_toml_table, None),
    "bool": Kind(_toml_switch, lambda raw: raw.lower() in _TRUE, switch=True),
}


# -- the declaration --


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting, declared in its config field's metadata by ``setting()``; ``bind``
    fills in ``field``, ``scope``, ``kind`` and ``default`` once the config class exists."""

    help: str
    checks: tuple[Check, ...] = ()
    # Its flag, variable and TOML name when not the field's (``listen`` sets host and port);
    # "" for a field no source names directly (``port``).
    name: str | None = None
    # Turns the value read into fields (``listen`` -> host, port); default: the field.
    unpack: Callable[[Any], dict[str, Any]] | None = None
    field: str = ""
    scope: Scope = "server"
    kind: Kind = _KINDS["str"]
    default: Any = None

    @property
    def key(self) -> str:
        """The TOML key, the stem of the flag and the variable."""
        return self.field if self.name is None else self.name

    @property
    def texts(self) -> bool:
        """Whether a flag and a variable set it (else it is file-only, or unnamed)."""
        return bool(self.key) and self.kind.from_text is not None

    @property
    def flag(self) -> str:
        """The command-line flag (if ``texts``)."""
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable (if ``texts``)."""
        return ENV_PREFIX + self.key.upper()

    def from_text(self, raw: str, source: str) -> Any:
        """A flag's or variable's text as this setting's value; ``source`` names it."""
        assert self.kind.from_text is not None
        try:
            return self.kind.from_text(raw)
        except ValueError:
            raise ConfigError(
                f"invalid config {source}: {raw!r} is not a valid {self.key}"
            ) from None

    def from_toml(self, value: Any, where: str) -> Any:
        return self.kind.from_toml(value, where)

    def fields_of(self, value: Any) -> dict[str, Any]:
        """The config fields that ``value`` (of this setting) sets."""
        return {self.field: value} if self.unpack is None else self.unpack(value)


def setting(
    default: Any,
    help: str,
    *checks: Check,
    name: str | None = None,
    unpack: Callable[[Any], dict[str, Any]] | None = None,
) -> Any:
    """A dataclass field declaring a setting (``Any``, so that it types as the default)."""
    declared = Setting(help=help, checks=checks, name=name, unpack=unpack)
    return field(default=default, metadata={"setting": declared})


def bind(cls: type, scope: Scope) -> tuple[Setting, ...]:
    """The settings declared on the dataclass ``cls``, completed from their fields."""
    return tuple(
        replace(
            f.metadata["setting"],
            field=f.name,
            scope=scope,
            kind=_kind(f),
            default=f.default,
        )
        for f in fields(cls)
        if "setting" in f.metadata
    )


def _kind(f: Field[Any]) -> Kind:
    try:
        return _KINDS[str(f.type)]
    except KeyError:
        raise TypeError(f"setting {f.name}: no kind for the type {f.type}") from None


def check_fields(config: object, settings: Iterable[Setting], where: str = "") -> None:
    """Every setting's checks on ``config``, in declaration order; the first problem of
    a setting raises ``ConfigError`` naming its field (plus ``where``)."""
    for s in settings:
        value = getattr(config, s.field)
        for check in s.checks:
            reason = check(value)
            if reason is not None:
                fail(s.field + where, reason)
                break


# -- checks --


def _finite(value: float) -> bool:
    return math.isfinite(value)


def at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def in_range(low: int, high: int) -> Check:
    """An integer in ``low..high``; the reason shows the value."""
    return lambda v: None if low <= v <= high else f"{v} is not in {low}..{high}"


def within(low: int, high: int, note: str = "") -> Check:
    """An integer in ``low..high``; the reason shows the bounds."""
    return lambda v: None if low <= v <= high else f"must be in {low}..{high}{note}"


def non_negative(note: str) -> Check:
    return lambda v: None if v >= 0 else f"must be >= 0 ({note})"


def positive_seconds(value: float) -> str | None:
    return None if value > 0 and _finite(value) else "must be a finite number > 0"


def seconds_or_zero(note: str) -> Check:
    """A finite number >= 0 (NaN fails)."""
    return lambda v: None if v >= 0 and _finite(v) else f"must be a finite number >= 0 ({note})"


def one_of(choices: Sequence[str], text: str) -> Check:
    return lambda v: None if v in choices else f"{v!r} is not {text}"


def not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def given_not_empty(omit: str) -> Check:
    """None (not given) or a non-empty string: an empty path is refused rather than read
    as "off"; ``omit`` says what leaving it out does."""
    return lambda v: None if v is None or v else f"must not be empty ({omit})"


def each(check: Check) -> Check:
    """``check`` on every item of a list setting."""

    def check_each(values: Sequence[Any]) -> str | None:
        return next((r for r in map(check, values) if r is not None), None)

    return check_each


def unique(values: Sequence[str]) -> str | None:
    return next((f"{v!r} is listed more than once" for v in values if values.count(v) > 1), None)


def dotted_module(name: str) -> str | None:
    return None if MODULE_RE.match(name) else f"{name!r} is not a dotted module name"


def absolute_path(path: str | None) -> str | None:
    return None if path is None or os.path.isabs(path) else f"{path!r} must be an absolute path"


def matches(pattern: re.Pattern[str]) -> Check:
    return lambda v: None if pattern.match(v) else f"{v!r} must match {pattern.pattern}"
