"""The ``narrator`` command: one subcommand per role plus the one-machine runner and tools.

Errors that narrator raises on purpose (bad dataset, bad config, unreachable server, a bad
flag) end with a one-line message on stderr and exit code 2, before any work; tracebacks are
for bugs. Ctrl-C, SIGTERM and SIGHUP stop a command cleanly (exit 128 + the signal).

Start-up is kept light: each subcommand lives in its own module, and only the module of the
subcommand being run is imported (``narrator --help`` imports none of them); the modules
import pyarrow, PyAV, aiohttp and redis inside their command functions, never at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from narrator.common.errors import NarratorError

# name -> (module that adds its parser with ``add_parser(subparsers)``, one-line help shown
# by `narrator --help` without importing the module).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "annotate": ("narrator.cli.cmd_annotate", "annotate a dataset on this machine, end to end"),
    "enqueue": ("narrator.cli.cmd_roles", "register a run and enqueue its jobs (the producer)"),
    "worker": ("narrator.cli.cmd_roles", "run rq worker processes for the module queue"),
    "writer": ("narrator.cli.cmd_roles", "run the writer (finalizes shards, commits runs)"),
    "status": ("narrator.cli.cmd_status", "progress, failures, throughput and ETA of runs"),
    "retry-failed": ("narrator.cli.cmd_status", "re-enqueue the failed jobs of a run"),
    "demo": ("narrator.cli.cmd_demo", "sample dataset + simulated VLM + annotate, end to end"),
    "sample-dataset": ("narrator.cli.cmd_sample", "write a synthetic LeRobot v3 dataset"),
    "validate": (
        "narrator.cli.cmd_validate",
        "check an annotated dataset's language columns against the contract",
    ),
    "render": (
        "narrator.cli.cmd_render",
        "print the chat samples LeRobot trains on, rendered with a recipe",
    ),
    "report": ("narrator.cli.cmd_report", "write a self-contained HTML report of annotations"),
}
# Commands whose output is for people: readable log lines even when stderr is a file.
HUMAN_COMMANDS = frozenset(SUBCOMMANDS) - {"enqueue", "worker", "writer"}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) that says where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _chosen(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the chosen subcommand's module is imported (the others
    get a placeholder that shows their help line), without it every module is."""
    parser = OneLineParser(
        prog="narrator",
        description="Language annotations for LeRobot v3 datasets, asked of a vision-language "
        "model served by vLLM (or any OpenAI-compatible server).",
        epilog="Start with `narrator demo` (no GPU, no model download), then `narrator "
        "annotate ROOT --vlm-url http://HOST:8000/v1`. `narrator COMMAND --help` lists a "
        "command's flags, each with its default and environment variable.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else _chosen(argv)
    wanted = {m for n, (m, _) in SUBCOMMANDS.items() if argv is None or n == chosen}
    added: set[str] = set()
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if module_name not in wanted:
            sub.add_parser(name, help=help_text)  # a placeholder: its module is not needed
        elif module_name not in added:
            added.add(module_name)
            importlib.import_module(module_name).add_parser(sub)
    return parser


def configure_for(args: argparse.Namespace) -> None:
    from narrator.common.logging import configure_logging

    configure_logging(
        level=getattr(args, "cfg__log_level", None) or os.environ.get("NARRATOR_LOG_LEVEL") or "",
        fmt=getattr(args, "cfg__log_format", None),
        human=args.command in HUMAN_COMMANDS,
    )


def _known_error(exc: BaseException) -> str | None:
    """The one-line message of a failure that is the user's to fix (None: a bug)."""
    if isinstance(exc, NarratorError):
        from narrator.common.logging import redact_text

        return redact_text(str(exc))
    if "redis" in sys.modules:  # only a process that imported redis can raise its errors
        from narrator.cli.redis_errors import redis_error_message

        return redis_error_message(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    from narrator.common.lifecycle import die_with_parent_from_env, exit_code_of

    die_with_parent_from_env()  # a child of `narrator annotate` ends when annotate does
    configure_for(args)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt as exc:
        sys.stderr.write("narrator: interrupted; run the same command again to resume\n")
        return exit_code_of(exc)
    except Exception as exc:
        message = _known_error(exc)
        if message is None:
            raise
        sys.stderr.write(f"narrator: {' '.join(message.split())}\n")
        return 2


def run() -> NoReturn:
    """The console-script entry: :func:`main`, then exit without interpreter teardown.

    Native thread pools (pyarrow's) can abort a process that exits while they are torn down
    (``terminate called without an active exception``, SIGABRT; apache/arrow#34314), which
    would turn a clean exit 2 into 134. Everything narrator needs at exit (children stopped,
    files closed) is done by the time ``main`` returns, so flush and leave.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
