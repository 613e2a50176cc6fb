"""Which files of an annotated dataset ``--push-to-hub`` uploads (pure core, one listing shell).

Uploaded: every file under the dataset root, except
* anything under a hidden directory or with a hidden name (a path part starting with ``.``):
  narrator's state directory ``ROOT/.narrator/`` (embedded Redis, staged shards, logs, the
  run lock), the ``.cache/huggingface/`` bookkeeping a download leaves, temp files of atomic
  writes (``.file.tmp-PID``), ``.git``;
* the state and staging directories when they were placed inside the root under another name
  (``--state-dir``, ``--staging-dir``);
* the top-level ``README.md``: the dataset card is generated (:mod:`narrator.hub.card`) and
  uploaded in the same commit instead.

Invariant: the result is sorted and holds POSIX paths relative to the root.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path, PurePosixPath

CARD = "README.md"


def upload_paths(listing: Iterable[str], excluded_dirs: Collection[str] = ()) -> list[str]:
    """The paths of ``listing`` (relative POSIX paths of files) that an upload holds."""
    excluded = [PurePosixPath(d) for d in excluded_dirs]
    out: list[str] = []
    for rel in listing:
        path = PurePosixPath(rel)
        if rel == CARD or any(part.startswith(".") for part in path.parts):
            continue
        if any(path.is_relative_to(d) for d in excluded):
            continue
        out.append(rel)
    return sorted(out)


def inside(root: Path, directory: Path | None) -> str | None:
    """``directory`` relative to ``root`` when it lies inside it (POSIX), else None."""
    if directory is None:
        return None
    try:
        rel = Path(directory).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else None


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (symlinks to files count), relative, POSIX."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # never walk into hidden trees
        base = Path(folder)
        for name in files:
            if (base / name).is_file():
                found.append((base / name).relative_to(root).as_posix())
    return found
