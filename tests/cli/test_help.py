"""`narrator --help` and `narrator SUBCOMMAND --help` are fast (none of pyarrow, PyAV, aiohttp,
redis is imported) and every argument's help says its default (and the unit where there
is one: the config flags take theirs from the config model's descriptions)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from narrator.cli.main import SUBCOMMANDS, build_parser
from tests.support.processes import REPO_ROOT

HEAVY = ("pyarrow", "av", "aiohttp", "redis", "numpy", "PIL", "rq")
PROBE = """
import sys
from narrator.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
print("HEAVY=" + ",".join(heavy))
"""


def _heavy_imports(*argv: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,), *argv],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if x.startswith("HEAVY="))
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def test_top_level_help_imports_no_heavy_library() -> None:
    assert _heavy_imports("--help") == []


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_subcommand_help_imports_no_heavy_library(command: str) -> None:
    assert _heavy_imports(command, "--help") == []


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_argument_has_help_with_its_default(command: str) -> None:
    parser = _subparsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{command} {name} has no help"
        assert "\n" not in action.help, f"{command} {name}: help is one line"
        optional = bool(action.option_strings) and not action.required
        if optional:
            assert "default" in action.help, f"{command} {name}: say the default"


def test_the_help_lines_of_the_listing_match_the_subcommands() -> None:
    parsers = _subparsers()
    assert set(parsers) == set(SUBCOMMANDS)
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    shown = {a.dest: a.help for a in action._choices_actions}
    for name, (_, help_text) in SUBCOMMANDS.items():
        assert shown[name] == help_text
