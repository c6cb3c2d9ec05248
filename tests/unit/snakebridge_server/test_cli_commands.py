"""The command line's commands (``cli.split_command``, ``cli._parser``): pure, no server."""

from __future__ import annotations

import pytest

import snakebridge
from snakebridge_server import cli


def test_the_first_word_names_the_command_else_serve() -> None:
    assert cli.split_command([]) == ("serve", [])
    assert cli.split_command(["--workers", "2"]) == ("serve", ["--workers", "2"])
    assert cli.split_command(["check", "--workers", "2"]) == ("check", ["--workers", "2"])
    assert cli.split_command(["serve"]) == ("serve", [])


def test_the_main_help_lists_every_command_and_each_has_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main = cli._parser().format_help()
    for name in cli.COMMANDS:
        assert f"\n  {name} " in main
        own = cli._parser(name).format_help()
        assert own.startswith(f"usage: bridge-server {name} ") and "commands:" not in own
    with pytest.raises(SystemExit) as done:
        cli._parser("check").parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"bridge-server {snakebridge.__version__}"
