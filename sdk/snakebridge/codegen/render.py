"""Source text of generated bindings, from module descriptions. Client process.

Pure: ``package_files`` turns ``ModuleInfo``s into ``{relative path: text}`` and does no
I/O (the CLI, ``codegen.cli``, writes the files). The same descriptions and options give
the same bytes: members are sorted, nothing depends on the time, the address or the
output directory. Lines are laid out as ``ruff format`` lays them out (at most 100
characters, a call or a signature split at its outer brackets), so the output passes
``ruff check`` and ``ruff format --check`` as written, and ``mypy --strict``.

Each wrapper keeps the remote signature: positional-only, positional, ``*args``,
keyword-only and ``**kwargs`` parameters in the same order, every default replaced by
``_sb.OMIT`` (not sent: the remote default applies), then a keyword-only ``client=``.
Its docstring ends with the remote signature, defaults included, to check it by eye.
"""

from __future__ import annotations

import keyword
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .. import __version__
from .literals import literal, one_line
from .model import ClassInfo, ConstantInfo, FunctionInfo, ModuleInfo, Param
from .types import Imports, Scope, constant_type, item_type, resolve, shadows_builtin

LINE: int = 100
INDENT = "    "
#: Attributes every generated class has already (``Ref``'s and ``create``): a remote
#: method or property of the same name is generated with a trailing underscore.
RESERVED_IN_CLASS = frozenset(
    {"create", "id", "pool", "release", "released", "session_id", "type_name", "__slots__"}
)
#: Module-level names of the generated code itself.
RESERVED_IN_MODULE = frozenset(
    {"Any", "AsyncIterator", "Awaitable", "Literal", "annotations", "builtins"}
)


# -- layout (what ruff format would do) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    """A bracketed, comma-separated list (a call's arguments, a tuple, a dict)."""

    open: str  # "f(", "(", "{"
    items: tuple[Item, ...]
    close: str  # ")", "}"
    one_tuple: bool = False  # "(x,)": its comma is not optional


Item = str | Group


def flat(item: Item) -> str:
    if isinstance(item, str):
        return item
    inner = ", ".join(flat(i) for i in item.items)
    if item.one_tuple:
        inner += ","
    return f"{item.open}{inner}{item.close}"


def layout(head: str, group: Group, tail: str, indent: str, *, hug: bool = True) -> list[str]:
    """``head`` + ``group`` + ``tail`` on one line if it fits, else split at the group's
    brackets: its items on one indented line if they fit (``hug``), else one per line,
    each split the same way in turn, with a trailing comma."""
    one = f"{indent}{head}{flat(group)}{tail}"
    if len(one) <= LINE or not group.items:
        return [one]
    inner = indent + INDENT
    opening = f"{indent}{head}{group.open}"
    closing = f"{indent}{group.close}{tail}"
    body = ", ".join(flat(i) for i in group.items)
    if hug and len(inner) + len(body) <= LINE and not group.one_tuple:
        return [opening, inner + body, closing]
    lines = [opening]
    for item in group.items:
        if isinstance(item, Group):
            lines += layout("", item, ",", inner)
        else:
            lines.append(f"{inner}{item},")
    lines.append(closing)
    return lines


# -- docstrings -----------------------------------------------------------------------


def _escape(text: str) -> str:
    out = []
    for ch in text.replace("\t", "    "):
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n" or (ch.isascii() and ch.isprintable()):
            out.append(ch)  # the rest escaped: no confusable unicode (ruff RUF002)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out).replace('"""', '\\"\\"\\"')


def docstring(text: str, indent: str) -> list[str]:
    """A docstring literal for ``text``, indented, with its lines' own indentation kept
    and trailing spaces dropped (as ``ruff format`` leaves it)."""
    lines = [line.rstrip() for line in _escape(text).strip().split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not lines[0]:
        lines = ["(no docstring)", *lines]
    first = lines[0].lstrip()
    if first.startswith('"'):
        first = " " + first  # not four quotes in a row (ruff format adds the same space)
    if len(lines) == 1:
        if first.endswith('"'):
            first += " "  # not four quotes in a row
        return [f'{indent}"""{first}"""']
    # Continuation lines keep their indentation relative to each other only (as ruff
    # format leaves them): their common margin goes.
    margin = min((len(line) - len(line.lstrip()) for line in lines[1:] if line), default=0)
    rest = [f"{indent}{line[margin:]}" if line else "" for line in lines[1:]]
    return [f'{indent}"""{first}', *rest, f'{indent}"""']


_NO_SIGNATURE = "Remote signature unknown: arguments go as given."


def _doc_with_signature(doc: str, remote: str) -> str:
    note = f"Remote: ``{remote}``" if remote else _NO_SIGNATURE
    return f"{doc.strip()}\n\n{note}" if doc.strip() else note


# -- names ----------------------------------------------------------------------------


def _identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _python_name(name: str, taken: frozenset[str]) -> str:
    return f"{name}_" if name in taken else name


@dataclass(frozen=True, slots=True)
class _Signature:
    """A wrapper's parameters, rendered, and how it passes them on."""

    params: tuple[str, ...]  # "x: int", "/", "*", "*args: Any", "client: _sb.Caller = None"
    positional: Item  # the tuple of positional values
    keywords: Item  # the dict of keyword values
    client: str  # the name of the client= parameter


def _signature(params: tuple[Param, ...] | None, scope: Scope, imports: Imports) -> _Signature:
    """The wrapper's parameter list for ``params`` (None: unknown, ``*args, **kwargs``)."""
    if params is None or not _usable(params):
        imports.typing.add("Any")
        return _Signature(
            ("*args: Any", "client: _sb.Caller = None", "**kwargs: Any"),
            "args",
            "kwargs",
            "client",
        )
    names = {p.name for p in params}
    client = next(n for n in ("client", "_client", "sb_client") if n not in names)
    has_star = any(p.kind == "var_positional" for p in params)
    rendered: list[str] = []
    positional: list[str] = []
    keywords: list[str] = []
    for at, p in enumerate(params):
        kind = p.kind
        if kind == "keyword_only" and not has_star and (at == 0 or params[at - 1].kind != kind):
            rendered.append("*")
        if kind == "var_keyword":
            if not has_star and not any(q.kind == "keyword_only" for q in params):
                rendered.append("*")
            rendered.append(f"{client}: _sb.Caller = None")
        annotation = resolve(p.annotation, scope, imports)
        if kind == "var_positional":
            rendered.append(f"*{p.name}: {annotation}")
            positional.append(f"*{p.name}")
        elif kind == "var_keyword":
            rendered.append(f"**{p.name}: {annotation}")
            keywords.append(f"**{p.name}")
        else:
            default = " = _sb.OMIT" if p.default is not None else ""
            rendered.append(f"{p.name}: {annotation}{default}")
            if kind == "positional_only" or (kind == "positional_or_keyword" and has_star):
                positional.append(p.name)
            else:
                keywords.append(f'"{p.name}": {p.name}')
        if kind == "positional_only" and (at + 1 == len(params) or params[at + 1].kind != kind):
            rendered.append("/")
    if not any(p.kind == "var_keyword" for p in params):
        if not has_star and not any(p.kind == "keyword_only" for p in params):
            rendered.append("*")
        rendered.append(f"{client}: _sb.Caller = None")
    return _Signature(
        tuple(rendered),
        Group("(", tuple(positional), ")", one_tuple=len(positional) == 1),
        Group("{", tuple(keywords), "}"),
        client,
    )


# Names the wrapper's body uses; "sb_client" is the last name client= may take.
_BODY_NAMES = frozenset({"_LIB", "_sb", "self", "cls", "result", "sb_client"})


def _usable(params: tuple[Param, ...]) -> bool:
    """Whether ``params`` can be written as a Python signature as they are."""
    seen: set[str] = set()
    order = ("positional_only", "positional_or_keyword", "var_positional", "keyword_only")
    last = 0
    defaulted = False
    for p in params:
        if not _identifier(p.name) or p.name in seen or p.name in _BODY_NAMES:
            return False
        seen.add(p.name)
        if p.kind == "var_keyword":
            continue
        rank = order.index(p.kind)
        if rank < last:
            return False
        last = rank
        if p.kind in ("positional_only", "positional_or_keyword"):
            if defaulted and p.default is None:
                return False
            defaulted = defaulted or p.default is not None
    kinds = [p.kind for p in params]
    return (
        kinds.count("var_positional") <= 1
        and kinds.count("var_keyword") <= 1
        and ("var_keyword" not in kinds or kinds[-1] == "var_keyword")
    )


# -- members --------------------------------------------------------------------------


def _result(fn: FunctionInfo, scope: Scope, imports: Imports) -> tuple[str, bool]:
    """The wrapper's return type and whether the value is a stream."""
    if fn.streams:
        return f"_sb.Stream[{item_type(fn.returns, scope, imports)}]", True
    return resolve(fn.returns, scope, imports, result=True), False


def _call_lines(
    returns: str, target: str, args: Sequence[Item], scope: Scope, indent: str, *, streams: bool
) -> list[str]:
    """The body that passes the arguments on and returns the result, typed."""
    group = Group(f"{target}(", tuple(args), ")")
    if streams or returns == "Any":
        prefix = "return " if streams else "return await "
        return layout(prefix, group, "", indent)
    if returns in scope.classes:  # a ref to a generated class: retyped on arrival
        lines = layout("result = await ", group, "", indent)
        return [*lines, f"{indent}return _sb.typed({returns}, result)"]
    return [*layout(f"result: {returns} = await ", group, "", indent), f"{indent}return result"]


def _decorator(name: str, scope: Scope, imports: Imports) -> str:
    """``@name``, or ``@builtins.name`` where a member of that name shadows it (the
    ``builtins`` module's own ``classmethod`` and ``property`` classes)."""
    if name in scope.shadowed:
        imports.builtins = True
        return f"@builtins.{name}"
    return f"@{name}"


def _def_lines(
    decorators: Iterable[str],
    name: str,
    params: Sequence[str],
    returns: str,
    indent: str,
    *,
    is_async: bool,
    imports: Imports,
) -> list[str]:
    if is_async and any(p.startswith("timeout:") for p in params):
        imports.noqa.add("ASYNC109")  # the remote signature has it: kept as it is
    head = f"{'async def' if is_async else 'def'} {name}("
    return [
        *(f"{indent}{d}" for d in decorators),
        *layout(head[:-1], Group("(", tuple(params), ")"), f" -> {returns}:", indent),
    ]


def _function(fn: FunctionInfo, python_name: str, scope: Scope, imports: Imports) -> list[str]:
    sig = _signature(fn.params, scope, imports)
    returns, streams = _result(fn, scope, imports)
    lines = _def_lines(
        (), python_name, sig.params, returns, "", is_async=not streams, imports=imports
    )
    lines += docstring(_doc_with_signature(fn.doc, _remote(fn.name, fn.signature)), INDENT)
    target = "_LIB.stream" if streams else "_LIB.call"
    args = (sig.client, f'"{fn.name}"', sig.positional, sig.keywords)
    return lines + _call_lines(returns, target, args, scope, INDENT, streams=streams)


def _remote(name: str, signature: str) -> str:
    return f"{name}{signature}" if signature else ""


def _method(
    cls: ClassInfo, fn: FunctionInfo, python_name: str, scope: Scope, imports: Imports
) -> list[str]:
    indent = INDENT * 2
    sig = _signature(fn.params, scope, imports)
    returns, streams = _result(fn, scope, imports)
    doc = _doc_with_signature(fn.doc, _remote(f"{cls.name}.{fn.name}", fn.signature))
    if fn.binding == "instance":
        # No client= on a method: it runs through the ref's own client and session.
        kept = [p for p in sig.params if not p.startswith(f"{sig.client}: ")]
        params = tuple(
            p
            for at, p in enumerate(kept)
            if p != "*" or (at + 1 < len(kept) and not kept[at + 1].startswith("**"))
        )
        lines = _def_lines(
            (), python_name, ("self", *params), returns, INDENT, is_async=not streams,
            imports=imports,
        )  # fmt: skip
        target = "_sb.method_stream" if streams else "_sb.method"
        args: tuple[Item, ...] = ("self", f'"{fn.name}"', sig.positional, sig.keywords)
    else:
        lines = _def_lines(
            (_decorator("classmethod", scope, imports),), python_name, ("cls", *sig.params),
            returns, INDENT,
            is_async=not streams, imports=imports,
        )  # fmt: skip
        target = "_LIB.stream" if streams else "_LIB.call"
        args = (sig.client, f'"{cls.name}.{fn.name}"', sig.positional, sig.keywords)
    lines += docstring(doc, indent)
    return lines + _call_lines(returns, target, args, scope, indent, streams=streams)


def _class(cls: ClassInfo, python_name: str, scope: Scope, imports: Imports) -> list[str]:
    base = "_sb.RemoteIterable" if cls.iterable else "_sb.RemoteObject"
    lines = [f"class {python_name}({base}):"]
    doc = cls.doc.strip() or f"A remote ``{scope.module}.{cls.name}``."
    if cls.truncated:
        doc += "\n\n(Some members were left out: the description was cut at its size limit.)"
    lines += docstring(doc, INDENT)
    lines += [
        "",
        f"{INDENT}__slots__ = ()  # a retyped Ref: the same object layout",
        f"{INDENT}_sb_library = _LIB",
        f'{INDENT}_sb_name = "{cls.name}"',
        "",
    ]
    init = cls.init
    sig = _signature(init.params, scope, imports)
    lines += _def_lines(
        (_decorator("classmethod", scope, imports),), "create", ("cls", *sig.params),
        python_name, INDENT, is_async=True,
        imports=imports,
    )  # fmt: skip
    remote = _remote(cls.name, init.signature)
    note = f"A new remote ``{scope.module}.{cls.name}``, as a typed ref."
    lines += docstring(_doc_with_signature(note, remote), INDENT * 2)
    args = (sig.client, sig.positional, sig.keywords)
    lines += layout("return await _LIB.create(", Group("", ("cls", *args), ""), ")", INDENT * 2)
    for fn in sorted(cls.methods, key=lambda f: f.name):
        if _identifier(fn.name):
            name = _python_name(fn.name, RESERVED_IN_CLASS)
            lines += ["", *_method(cls, fn, name, scope, imports)]
    for prop in sorted(cls.properties, key=lambda p: p.name):
        if not _identifier(prop.name):
            continue
        name = _python_name(prop.name, RESERVED_IN_CLASS)
        imports.abc.add("Awaitable")
        returns = resolve(prop.annotation, scope, imports, result=True)
        if returns in scope.classes:
            imports.typing.add("Any")
            returns = "Any"  # a property's ref is not retyped
        lines += [
            "",
            f"{INDENT}{_decorator('property', scope, imports)}",
            f"{INDENT}def {name}(self) -> Awaitable[{returns}]:",
        ]
        doc = prop.doc.strip() or f"The remote attribute ``{prop.name}``"
        lines += docstring(f"{doc}\n\nAwait it: ``await obj.{name}``.", INDENT * 2)
        lines.append(f'{INDENT * 2}return _sb.attr(self, "{prop.name}")')
    return lines


def _constant(const: ConstantInfo, python_name: str, scope: Scope, imports: Imports) -> list[str]:
    kind = constant_type(const.type_name, scope, imports)
    args = Group("(", ("_LIB", literal(const.name)), ")")
    return layout(f"{python_name}: _sb.Constant[{kind}] = _sb.Constant", args, "", "")


# -- modules and packages -------------------------------------------------------------


def _comment(text: str) -> list[str]:
    return textwrap.wrap(
        one_line(text),
        LINE,
        initial_indent="# ",
        subsequent_indent="#   ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _header(info: ModuleInfo, command: str) -> list[str]:
    version = info.version or "no version"
    return [
        *_comment(f"Generated by snakebridge {__version__} from {info.module} ({version})."),
        "# Do not edit: regenerate it.",
        *_comment(f"Command: {command}"),
    ]


def _imports(imports: Imports) -> list[str]:
    lines = ["from __future__ import annotations", ""]
    if imports.builtins:
        lines.append("import builtins")
    if imports.abc:
        lines.append(f"from collections.abc import {', '.join(sorted(imports.abc))}")
    if imports.typing:
        lines.append(f"from typing import {', '.join(sorted(imports.typing))}")
    if len(lines) > 2:
        lines.append("")
    lines.append("from snakebridge import bindings as _sb")
    return lines


def module_source(info: ModuleInfo, *, command: str, pool: str | None = None) -> str:
    """The generated module for ``info`` (one remote module; its submodules are separate
    modules, see ``package_files``)."""
    members = [
        *(c.name for c in info.constants),
        *(f.name for f in info.functions),
        *(c.name for c in info.classes),
    ]
    taken = RESERVED_IN_MODULE | {"_LIB", "_sb"}
    python = {n: _python_name(n, taken) for n in members if _identifier(n)}
    class_names = frozenset(python[c.name] for c in info.classes if c.name in python)
    scope = Scope(info.module, class_names, shadows_builtin(python.values()))
    imports = Imports()
    body: list[list[str]] = []
    constants = [
        line
        for const in sorted(info.constants, key=lambda c: c.name)
        if const.name in python
        for line in _constant(const, python[const.name], scope, imports)
    ]
    body += [
        _function(fn, python[fn.name], scope, imports)
        for fn in sorted(info.functions, key=lambda f: f.name)
        if fn.name in python
    ]
    for cls in sorted(info.classes, key=lambda c: c.name):
        if cls.name in python:
            # A class's own member names shadow builtins in its body, as module names do.
            names = {m.name for m in cls.methods} | {p.name for p in cls.properties}
            inner = Scope(scope.module, scope.classes, scope.shadowed | shadows_builtin(names))
            body.append(_class(cls, python[cls.name], inner, imports))
    doc = f"Async bindings of the remote module ``{info.module}``"
    doc += f" ({info.version})." if info.version else "."
    if info.doc.strip():
        doc += "\n\n" + info.doc.strip()
    if info.truncated:
        doc += "\n\n(Some members were left out: the description was cut at its size limit.)"
    check_module_name(info.module)
    pool_arg = f", pool={literal(pool)}" if pool else ""
    library = f"_LIB = _sb.Library({literal(info.module)}, {literal(info.version)}{pool_arg})"
    lines = [*_header(info, command), *docstring(doc, ""), "", *_imports(imports), "", library]
    if constants:
        lines += ["", *constants]
    for block in body:
        lines += ["", "", *block]
    text = "\n".join(lines) + "\n"
    return _noqa(text, imports.noqa)


# A parameter, class or function named l, I or O (numpy's matrix.I).
_AMBIGUOUS = (
    ("E741", re.compile(r"[(\s,*][lIO]: |^[lIO]: ", re.MULTILINE)),
    ("E742", re.compile(r"\bclass [lIO]\(")),
    ("E743", re.compile(r"\bdef [lIO]\(")),
)


def _noqa(text: str, also: Iterable[str] = ()) -> str:
    """A file-level ``# ruff: noqa`` for what docstrings carried verbatim may contain
    (long lines, ambiguous unicode), placed after the header."""
    codes = []
    if any(len(line) > LINE for line in text.split("\n")):
        codes.append("E501")
    codes += [code for code, pattern in _AMBIGUOUS if pattern.search(text)]
    codes += sorted(also)
    if not codes:
        return text
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines.insert(at, f"# ruff: noqa: {', '.join(codes)}")
    return "\n".join(lines)


def check_module_name(name: str) -> None:
    """``ValueError`` unless ``name`` is a dotted Python name: it becomes file paths and
    code, and comes from the server."""
    if not name or not all(_identifier(part) for part in name.split(".")):
        raise ValueError(f"{name!r} is not a dotted module name")


def _package_doc(package: str, modules: Sequence[str], command: str) -> str:
    text = f"Generated snakebridge bindings of {', '.join(modules)}.\n\n" + textwrap.fill(
        f"Import a module from it (``from {package} import {modules[0].split('.')[0]}``)"
        " and await its functions inside ``async with snakebridge.Client(...)``, or"
        " pass ``client=``. See docs/codegen.md of snakebridge.",
        LINE - 4,
        break_long_words=False,
        break_on_hyphens=False,
    )
    lines = [
        *_comment(f"Generated by snakebridge {__version__}."),
        "# Do not edit: regenerate it.",
        *_comment(f"Command: {command}"),
        *docstring(text, ""),
    ]
    return _noqa("\n".join(lines) + "\n")


def package_files(
    infos: Sequence[ModuleInfo], *, package: str, command: str, pool: str | None = None
) -> dict[str, str]:
    """Every file of the generated package, by path relative to the output directory:
    ``os.path`` becomes ``<package>/os/path.py``, or ``<package>/os/path/__init__.py``
    when another requested module lies under it; ``py.typed`` marks it typed."""
    if not _identifier(package):
        raise ValueError(f"{package!r} is not a Python name")
    by_name = {}
    for info in infos:
        for one in (info, *info.submodules):
            by_name[one.module] = one
    names = sorted(by_name)
    for name in names:
        check_module_name(name)
    files: dict[str, str] = {f"{package}/py.typed": ""}
    parents = {n.rsplit(".", k)[0] for n in names for k in range(1, n.count(".") + 1)}
    for name in names:
        parts = name.split(".")
        path = "/".join([package, *parts])
        is_package = name in parents
        rel = f"{path}/__init__.py" if is_package else f"{path}.py"
        files[rel] = module_source(by_name[name], command=command, pool=pool)
    for parent in sorted(parents - set(names)):
        rel = "/".join([package, *parent.split(".")]) + "/__init__.py"
        under = [n for n in names if n.startswith(parent + ".")]
        files[rel] = _package_doc(package, under, command)
    files[f"{package}/__init__.py"] = _package_doc(package, names, command)
    return dict(sorted(files.items()))
