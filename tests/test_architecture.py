"""The house rules of the code layout, checked by reading every import (``ast``), not by trust.

* The roles (``narrator.producer``, ``narrator.workers``, ``narrator.writer``) never import each
  other, nor the CLI-side rooms (``narrator.cli``, ``narrator.local``, ...): they meet only in
  Redis and in ``narrator.common``.
* ``narrator.common`` imports no role and no CLI-side room.
* Each CLI-side room (``narrator.local``, ``narrator.ops``, ...) imports only the rooms the
  table of docs/ARCHITECTURE.md gives it; ``narrator.cli`` may import everything.
* There is one import name: nothing imports the folders by their bare names (``common``,
  ``workers``, ...), which would break in an installed wheel.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROLES = ("producer", "workers", "writer")
PACKAGES = {"common": REPO / "common", **{role: REPO / role for role in ROLES}}
BARE_NAMES = {"common", "producer", "workers", "writer", "simvlm"}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, including lazy ones."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from narrator import workers` imports a package too
                yield node.lineno, f"{node.module}.{alias.name}"


def narrator_room(module: str) -> str | None:
    """``narrator.workers.jobs`` -> ``workers``; None for modules outside narrator."""
    parts = module.split(".")
    if parts[0] != "narrator" or len(parts) < 2:
        return None
    return parts[1]


def violations(directory: Path, allowed: set[str]) -> list[str]:
    """Imports of ``narrator.<room>`` under ``directory`` whose room is not in ``allowed``."""
    found = []
    for path in sorted(directory.rglob("*.py")):
        for line, module in imported_modules(path):
            room = narrator_room(module)
            if room is not None and room not in allowed:
                found.append(f"{path.name}:{line} imports {module}")
    return found


@pytest.mark.parametrize("role", ROLES)
def test_a_role_imports_only_itself_and_common(role: str) -> None:
    assert violations(PACKAGES[role], {role, "common"}) == []


def test_common_imports_no_role_and_no_cli_room() -> None:
    assert violations(PACKAGES["common"], {"common"}) == []


# The CLI-side rooms under narrator/ and what each may import besides itself (the table of
# docs/ARCHITECTURE.md); narrator/cli, the composition root, may import everything.
ROOMS: dict[str, set[str]] = {
    "local": {"common", "producer", "workers", "ops"},
    "ops": {"common", "producer"},
    "hub": {"common", "inspection"},
    "consumer": {"common"},
    "inspection": {"common"},
    "simulator": {"common", "samples"},
    "samples": {"common"},
}


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_a_cli_side_room_imports_only_what_the_architecture_page_says(room: str) -> None:
    assert violations(REPO / "narrator" / room, ROOMS[room] | {room}) == []


def test_every_room_under_narrator_has_its_rule() -> None:
    rooms = {
        p.name
        for p in (REPO / "narrator").iterdir()
        if p.is_dir() and not p.is_symlink() and p.name != "__pycache__"
    }
    assert rooms - {"cli"} == set(ROOMS)


def project_sources() -> Iterator[Path]:
    """Every Python file of the project once (the symlinks under ``narrator/`` not followed)."""
    for top in ("common", "producer", "workers", "writer", "narrator", "tests"):
        for folder, _dirs, files in os.walk(REPO / top):  # os.walk does not follow symlinks
            yield from (Path(folder) / name for name in sorted(files) if name.endswith(".py"))


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in project_sources()
        for line, module in imported_modules(path)
        if module.split(".")[0] in BARE_NAMES
    ]
    assert offenders == []


def test_the_rule_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker is not vacuous: plain, from-, package and function-local imports of another
    role are all reported; stdlib and own-room imports are not."""
    (tmp_path / "mod.py").write_text(
        "import os\n"
        "import narrator.writer.finalize\n"
        "from narrator.common import keys\n"
        "from narrator import producer\n"
        "def f():\n"
        "    from narrator.cli.main import main\n",
        encoding="utf-8",
    )
    assert violations(tmp_path, {"workers", "common"}) == [
        "mod.py:2 imports narrator.writer.finalize",
        "mod.py:4 imports narrator.producer",
        "mod.py:6 imports narrator.cli.main",
        "mod.py:6 imports narrator.cli.main.main",
    ]
