"""Call policy: which names a client may reach, by sandbox level. Pure, no I/O.

The policy is checked twice: by the server on the names in the request (cheap, before any
worker is involved) and by the worker on the object the names resolved to (so
``logging.os.system`` or a ref to a module cannot route around a denied name). Neither is
the security boundary: higher-order calls (``map``, ``operator.call``) and libraries that
evaluate strings let a client run code no request names, so at ``standard`` a client is
assumed able to run arbitrary Python in its worker. The kernel layers are the boundary
(``docs/security.md``); the policy is defence in depth that turns the obvious ways in into
a clear ``PolicyError`` instead of an OS error mid-call.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from snakebridge.errors import PolicyError

LEVELS: Final = ("none", "standard", "strict")  # weakest first

# Reaching any of these (or anything under them) gives a caller the process, the file
# system, the network, code execution or a way around the private-name rule.
DEFAULT_DENY: Final = frozenset(
    {
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "_posixsubprocess",
        "ctypes",
        "_ctypes",
        "cffi",
        "_cffi_backend",
        "importlib",
        "imp",
        "pkgutil",
        "runpy",
        "zipimport",
        "code",
        "codeop",
        "pickle",
        "_pickle",
        "marshal",
        "shelve",
        "dill",
        "cloudpickle",
        "socket",
        "_socket",
        "ssl",
        "select",
        "selectors",
        "multiprocessing",
        "_multiprocessing",
        "concurrent.futures.process",
        "signal",
        "_signal",
        "pty",
        "tty",
        "termios",
        "fcntl",
        "resource",
        "mmap",
        "gc",
        "inspect",
        "shutil",
        "tempfile",
        "webbrowser",
        "urllib",
        "http",
        "ftplib",
        "smtplib",
        "telnetlib",
        "xmlrpc",
        "io.open",
        "io.open_code",
        "io.FileIO",
        "_io.FileIO",
        "_io.open",
        "builtins.eval",
        "builtins.exec",
        "builtins.compile",
        "builtins.open",
        "builtins.breakpoint",
        "builtins.input",
        "builtins.getattr",
        "builtins.setattr",
        "builtins.delattr",
        "builtins.globals",
        "builtins.locals",
        "builtins.vars",
        "builtins.help",
        "builtins.exit",
        "builtins.quit",
        "operator.attrgetter",
        "operator.methodcaller",
        # building and running code objects, or code given as strings
        "types.CodeType",
        "types.FunctionType",
        "types.LambdaType",
        "builtins.code",
        "builtins.function",
        "timeit",
        "doctest",
        "pdb",
        "bdb",
        "trace",
        "profile",
        "cProfile",
        "pydoc",
        "logging.config",
        # loaders that execute files (a client can write files into its scratch dir):
        # .pth lines, test discovery, setup scripts, the import system's own machinery
        "site",
        "unittest",
        "distutils",
        "setuptools",
        "_distutils_hack",
        "_frozen_importlib",
        "_frozen_importlib_external",
        "_imp",
        # the worker runtime itself: its call policy, ref table and helper loader
        "snakebridge_server",
        # setattr/getattr of any attribute names, dunders included, on any object
        "functools.update_wrapper",
        "functools.wraps",
        # evaluate strings as Python expressions (string annotations)
        "typing.get_type_hints",
        "typing.ForwardRef",
    }
)

# Harmless names under a denied module: path arithmetic and constants (``os.path`` is
# ``posixpath``). Only these exact names; what they resolve to is vetted by the worker.
SAFE_UNDER_DENIED: Final = frozenset(
    {"os.path", "os.sep", "os.altsep", "os.extsep", "os.pathsep", "os.linesep", "os.curdir"}
    | {"os.pardir", "os.devnull", "os.name", "sys.version", "sys.version_info", "sys.platform"}
    | {"sys.maxsize", "sys.byteorder", "sys.float_info", "sys.int_info", "sys.hash_info"}
)


def _safe(target: str) -> bool:
    if target in SAFE_UNDER_DENIED:
        return True
    parent, _, _ = target.rpartition(".")
    return parent == "os.path"  # os.path.join, os.path.basename, ...


# What ``strict`` lets a client call, besides helpers and ``--sandbox-allow-modules``:
# computation only.
STRICT_ALLOW: Final = frozenset(
    {
        "array",
        "base64",
        "binascii",
        "bisect",
        "builtins",
        "calendar",
        "cmath",
        "collections",
        "copy",
        "dataclasses",
        "datetime",
        "decimal",
        "difflib",
        "enum",
        "fractions",
        "functools",
        "hashlib",
        "heapq",
        "hmac",
        "html",
        "ipaddress",
        "itertools",
        "json",
        "math",
        "numbers",
        "operator",
        "random",
        "re",
        "statistics",
        "string",
        "textwrap",
        "time",
        "typing",
        "unicodedata",
        "uuid",
        "zlib",
    }
)


def level_at_least(level: str, minimum: str) -> bool:
    return LEVELS.index(level) >= LEVELS.index(minimum)


def _under(name: str, roots: frozenset[str]) -> str | None:
    """The entry of ``roots`` that ``name`` is or lies under (``os`` for ``os.path``)."""
    if name in roots:
        return name
    cut = name.rfind(".")
    while cut > 0:
        prefix = name[:cut]
        if prefix in roots:
            return prefix
        cut = name.rfind(".", 0, cut)
    return None


@dataclass(frozen=True, slots=True)
class CallPolicy:
    level: str = "standard"
    deny: frozenset[str] = DEFAULT_DENY
    allow: frozenset[str] = STRICT_ALLOW

    @classmethod
    def build(
        cls,
        level: str,
        *,
        extra_deny: Iterable[str] = (),
        extra_allow: Iterable[str] = (),
    ) -> CallPolicy:
        if level not in LEVELS:
            raise ValueError(f"unknown sandbox level {level!r}")
        return cls(level, DEFAULT_DENY | frozenset(extra_deny), STRICT_ALLOW | set(extra_allow))

    @property
    def enforced(self) -> bool:
        return self.level != "none"

    def check_path(self, module: str, name: str) -> None:
        """A module-level target (``call``, ``call_class``, ``get_module_attr``, streams).
        ``module`` may be empty (then ``name`` is the whole dotted path)."""
        if not self.enforced:
            return
        target = f"{module}.{name}" if module and name else module or name
        self._check_private(target)
        denied = None if _safe(target) else _under(target, self.deny)
        if denied is not None:
            raise PolicyError(
                f"{target!r} is not allowed at sandbox level {self.level!r} "
                f"({denied!r} is denied); wrap what you need in a helper"
            )
        if self.level == "strict" and _under(target, self.allow) is None:
            raise PolicyError(
                f"{target!r} is not in the strict sandbox's module allowlist; "
                "the operator can add it with --sandbox-allow-modules"
            )

    def check_attr(self, name: str) -> None:
        """An attribute path on a ref (``call_method``, ``get_attr``, ``set_attr``)."""
        if self.enforced:
            self._check_private(name)

    def check_qualified(self, qualified: str) -> None:
        """The ``module.qualname`` of the object a name resolved to (worker side)."""
        if not self.enforced:
            return
        denied = _under(qualified, self.deny)
        if denied is not None:
            raise PolicyError(
                f"this resolves to {qualified!r}, which is not allowed at sandbox level "
                f"{self.level!r} ({denied!r} is denied)"
            )

    def check_routine(self, qualified: str, name: object) -> None:
        """A function or method handed over as a ref (a result, a target or an argument):
        its own name obeys the private-name rule too, so a dunder method got without
        naming it (``Formatter().get_field("0.__subclasses__", ...)``) cannot be passed
        to ``map`` or ``operator.call``."""
        if self.enforced and isinstance(name, str) and name.startswith("_"):
            raise PolicyError(
                f"{qualified or name!r} is a private or dunder function; it cannot be "
                f"handed over as a ref at sandbox level {self.level!r}"
            )

    def check_format(self, text: str, *, field_name: bool = False) -> None:
        """A format string given to a formatter (``str.format``, ``string.Formatter``), or
        a bare field name (``Formatter.get_field``): no replacement field may walk an
        attribute (``{0.__globals__}``, ``{0.os}``), which reads what no name may reach.
        Indexing (``{0[key]}``) stays allowed."""
        if self.enforced:
            walk = _field_walk(text) if field_name else _attribute_walk(text, depth=0)
            if walk is not None:
                raise PolicyError(
                    f"format field {walk!r} walks an attribute, which is not allowed at "
                    f"sandbox level {self.level!r}; format on the client instead"
                )

    def _check_private(self, dotted: str) -> None:
        for part in dotted.split("."):
            if part.startswith("_"):
                raise PolicyError(
                    f"{dotted!r}: private and dunder names ({part!r}) are not reachable at "
                    f"sandbox level {self.level!r}{_instead(part)}"
                )


#: Dunder methods and the public callable that does the same through the protocol.
_PUBLIC_FORMS: Final = {
    "__getitem__": ("operator", "getitem", "[ref, key]"),
    "__setitem__": ("operator", "setitem", "[ref, key, value]"),
    "__delitem__": ("operator", "delitem", "[ref, key]"),
    "__contains__": ("operator", "contains", "[ref, item]"),
    "__len__": ("builtins", "len", "[ref]"),
    "__iter__": ("builtins", "iter", "[ref]"),
    "__next__": ("builtins", "next", "[ref]"),
    "__call__": ("operator", "call", "[ref, *args]"),
    "__eq__": ("operator", "eq", "[ref, other]"),
    "__add__": ("operator", "add", "[ref, other]"),
    "__mul__": ("operator", "mul", "[ref, other]"),
    "__str__": ("builtins", "str", "[ref]"),
    "__repr__": ("builtins", "repr", "[ref]"),
}


def _instead(name: str) -> str:
    """A hint naming the public call that does what dunder ``name`` does, if there is one:
    ``df["a"]`` is ``client.call("operator", "getitem", [df, "a"])``."""
    found = _PUBLIC_FORMS.get(name)
    if found is None:
        return ""
    module, function, args = found
    return f"; call it through the protocol instead: client.call({module!r}, {function!r}, {args})"


def _field_walk(name: str) -> str | None:
    """``name`` if the field name reads an attribute (``0.__globals__``), else None. As
    the formatter parses it: a dot outside ``[...]`` starts an attribute name."""
    in_key = False
    for char in name:
        if char == "[":
            in_key = True
        elif char == "]":
            in_key = False
        elif char == "." and not in_key:
            return name
    return None


def _attribute_walk(text: str, depth: int) -> str | None:
    """The first replacement field of format string ``text`` that reads an attribute,
    or None. A string that does not parse is one the formatter rejects too."""
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(text)]
    except ValueError:
        return None
    for name, spec in fields:
        if name and _field_walk(name) is not None:
            return name
        # Nested fields in a format spec ("{0:{1.x}}") are read too; Python allows two
        # levels, the bound keeps a hostile string from recursing deeper.
        if spec and depth < 2:
            nested = _attribute_walk(spec, depth + 1)
            if nested is not None:
                return nested
    return None
