"""``python -m snakebridge COMMAND`` (also the ``snakebridge`` console script). Client process.

Commands: ``generate`` (typed bindings of remote modules, ``snakebridge.codegen``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_USAGE = "usage: snakebridge generate MODULE [MODULE ...] --out DIR [options]  (see --help)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "generate":
        from .codegen.cli import main as generate

        return generate(rest)
    print(f"snakebridge: unknown command {command!r}\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
