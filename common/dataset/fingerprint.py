"""The dataset fingerprint: what identifies a dataset's content across annotation runs.

sha256 over the bytes of ``meta/tasks.parquet``, every episodes table and ``meta/info.json``
without what annotating changes (the two language features, the legacy ``subtask_index``
feature, the top-level ``tools``), so a run keeps its id across its own commits. The data
files, the videos and narrator's state directory are not part of it.

Invariants: :func:`compute_fingerprint` is pure; :func:`fingerprint_of_root` reads only the
files named above.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from narrator.common.contract import LANGUAGE_COLUMNS, LEGACY_SUBTASK_COLUMN
from narrator.common.dataset.files import EPISODES_DIR, TASKS_FILE

_IGNORED_FEATURES: frozenset[str] = frozenset({*LANGUAGE_COLUMNS, LEGACY_SUBTASK_COLUMN})


def fingerprint_info_text(info: Mapping[str, Any]) -> bytes:
    """info.json without what annotating changes, as canonical JSON bytes."""
    reduced = {k: v for k, v in info.items() if k != "tools"}
    features = info.get("features")
    if isinstance(features, dict):
        reduced["features"] = {k: v for k, v in features.items() if k not in _IGNORED_FEATURES}
    return json.dumps(reduced, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_fingerprint(info: Mapping[str, Any], meta_files: Sequence[tuple[str, bytes]]) -> str:
    """sha256 over the named metadata files' bytes (sorted by name) and the reduced info.json."""
    digest = hashlib.sha256()
    for name, blob in sorted(meta_files):
        digest.update(f"{name}\0{len(blob)}\0".encode())
        digest.update(blob)
    digest.update(b"meta/info.json\0")
    digest.update(fingerprint_info_text(info))
    return digest.hexdigest()[:16]


def fingerprint_of_root(root: Path, info: Mapping[str, Any]) -> str:
    """Read the fingerprint's inputs (episodes files, tasks file) from disk and hash them."""
    blobs = [(TASKS_FILE, (root / TASKS_FILE).read_bytes())]
    for path in sorted((root / EPISODES_DIR).rglob("*.parquet")):
        blobs.append((path.relative_to(root).as_posix(), path.read_bytes()))
    return compute_fingerprint(info, blobs)
