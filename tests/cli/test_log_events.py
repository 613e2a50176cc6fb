"""Every log event name in the code is snake_case (``job_done``, not "job done"): event names
are an interface people search logs and build alerts on. Read from the source (every call
``<something>log(ger).<level>("event", ...)`` and every ``event = "..."`` string)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.processes import REPO_ROOT

LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}
SNAKE = re.compile(r"[a-z][a-z0-9_]*")
FOLDERS = ("common", "producer", "workers", "writer", "narrator")
ROLE_LINKS = {"common", "producer", "workers", "writer"}  # narrator/<role> are symlinks


def _sources() -> list[Path]:
    out = []
    for folder in FOLDERS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).parts
            if rel[0] == "narrator" and len(rel) > 1 and rel[1] in ROLE_LINKS:
                continue
            out.append(path)
    return out


def _logger_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _event_names(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and re.search(r"log(ger)?$", _logger_name(node.func.value))
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "event" for t in node.targets
        ):
            for const in ast.walk(node.value):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    found.append((node.lineno, const.value))
    return found


def test_every_log_event_name_is_snake_case() -> None:
    sources = _sources()
    assert len(sources) > 50  # the scan sees the code
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{line}: {name!r}"
        for path in sources
        for line, name in _event_names(ast.parse(path.read_text(), str(path)))
        if not SNAKE.fullmatch(name)
    ]
    assert not bad, "log events must be snake_case:\n" + "\n".join(bad)


def test_the_scan_finds_events_and_would_catch_a_sentence() -> None:
    tree = ast.parse('log.info("job done", x=1)\n_log.warning("ok_name")\nevent = "a b"\n')
    assert sorted(_event_names(tree)) == [(1, "job done"), (2, "ok_name"), (3, "a b")]
