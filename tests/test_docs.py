"""The docs say only true things about the code: every repository path and every dotted
``narrator.`` name that docs/ARCHITECTURE.md writes in backticks exists, and no source or doc
file cites the contract as a file outside the repository (it is docs/CONTRACT.md).

Paths inside a dataset (``ROOT/...``, ``meta/...``, ``data/...``, ``videos/...``) are not
repository paths and are not checked; a file the page proposes to create is written in
italics, not in backticks."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
DATASET_PREFIXES = ("ROOT/", "meta/", "data/", "videos/")
FILE_SUFFIXES = (".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".json", ".html", ".css", ".js")
DOTTED = re.compile(r"narrator(\.[A-Za-z_]\w*)+")
OUTSIDE_CONTRACT = "shared" + "/SPEC"  # split so that this file does not match itself
SKIPPED_DIRS = {".venv", "build", "dist", "node_modules", "__pycache__"}


def backticked(markdown: str) -> list[str]:
    """The inline code spans of ``markdown`` (fenced blocks left out), one per span."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def is_repo_path(span: str) -> bool:
    if " " in span or "://" in span or span.startswith(("-", "$")):
        return False
    if span.startswith(DATASET_PREFIXES):
        return False
    return "/" in span or span.endswith(FILE_SUFFIXES)


def missing_paths(markdown: str, root: Path) -> list[str]:
    """Backticked repository paths (globs must match something) that ``root`` lacks."""
    out = []
    for span in backticked(markdown):
        if not is_repo_path(span):
            continue
        found = any(root.glob(span)) if "*" in span else (root / span).exists()
        if not found:
            out.append(span)
    return out


def resolves(dotted: str) -> bool:
    """``narrator.a.b.c``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def unresolved_names(markdown: str) -> list[str]:
    return [s for s in backticked(markdown) if DOTTED.fullmatch(s) and not resolves(s)]


def test_every_path_in_the_architecture_page_exists() -> None:
    assert missing_paths(ARCHITECTURE.read_text(encoding="utf-8"), REPO) == []


def test_every_dotted_name_in_the_architecture_page_resolves() -> None:
    assert unresolved_names(ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_the_page_names_every_package_of_the_house() -> None:
    spans = set(backticked(ARCHITECTURE.read_text(encoding="utf-8")))
    packages = [
        "common/", "producer/", "workers/", "writer/", "deploy/", "conformance/", "tests/",
        *(f"narrator/{p.name}/" for p in sorted((REPO / "narrator").iterdir())
          if p.is_dir() and not p.is_symlink() and p.name != "__pycache__"),
    ]  # fmt: skip
    assert [p for p in packages if p not in spans] == []


def test_the_checkers_report_what_is_wrong(tmp_path: Path) -> None:
    """Not vacuous: a missing file, an unmatched glob and an unknown name are reported;
    dataset paths, flags, prose and real names are not."""
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "keys.py").write_text("", encoding="utf-8")
    page = (
        "See `common/keys.py`, `common/nope.py`, `common/*.txt`, `meta/info.json`,\n"
        "`--state-dir`, `os.replace`, `ROOT/.narrator/`, `StagedRow(role=\n'x')`.\n"
        "```\nnot/checked.py\n```\n"
        "Names: `narrator.common.keys.job_id`, `narrator.common.keys.no_such`, `narrator.nope`."
    )
    assert missing_paths(page, tmp_path) == ["common/nope.py", "common/*.txt"]
    assert unresolved_names(page) == ["narrator.common.keys.no_such", "narrator.nope"]


def text_sources() -> Iterator[Path]:
    """Every .py and .md file of the checkout (virtual environments and builds left out)."""
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [
            d for d in dirs
            if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
            and not (Path(folder) / d).is_symlink()
        ]  # fmt: skip
        yield from (Path(folder) / f for f in sorted(files) if f.endswith((".py", ".md")))


def test_no_file_cites_the_contract_outside_the_repository() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in text_sources()
        if OUTSIDE_CONTRACT in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == [], "cite docs/CONTRACT.md §N instead"


CITATION = re.compile(r"CONTRACT\.md\)? (§\d+)((?:(?:,| and| or) §\d+)*)")


def cited_sections() -> set[str]:
    """Every ``§N`` cited after ``CONTRACT.md`` in the sources and docs."""
    found: set[str] = set()
    for path in text_sources():
        for first, more in CITATION.findall(path.read_text(encoding="utf-8", errors="replace")):
            found |= {first, *re.findall(r"§\d+", more)}
    return found


def test_every_cited_contract_section_exists() -> None:
    headings = {
        line.split()[1]
        for line in (REPO / "docs" / "CONTRACT.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("## §")
    }
    cited = cited_sections()
    assert {"§2", "§3", "§4"} <= cited  # the code does cite it
    assert sorted(cited - headings) == []
