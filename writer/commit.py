"""Swap a run's staged shards into the dataset and update ``meta/info.json``, resumably.

The commit is driven by a journal (``COMMIT.json`` in the run's staging directory) written
atomically before anything in the dataset changes. It lists the shards to swap in and holds
the complete new ``meta/info.json`` text. Applying it is idempotent: a shard still in
staging is renamed over the original (same filesystem, ``os.replace``), one already moved is
skipped, then info.json is written atomically (temp files of an interrupted earlier attempt
are removed, so nothing is left in ``meta/``) and the journal removed. A writer that dies
anywhere in between finishes the job on its next start (:func:`resume_commits`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson

from narrator.common.contract import (
    LANGUAGE_COLUMNS,
    LANGUAGE_FEATURE,
    LEGACY_SUBTASK_COLUMN,
    SAY_TOOL,
)
from narrator.common.errors import DatasetError
from narrator.common.logging import get_logger
from narrator.writer.shard import fsync_path, remove_stale_temp_files, write_bytes_atomically

log = get_logger(__name__)

JOURNAL = "COMMIT.json"


def updated_info(info: dict[str, Any]) -> dict[str, Any]:
    """info.json with both language features, the ``say`` tool, and no ``subtask_index``."""
    out = dict(info)
    features = {k: v for k, v in info.get("features", {}).items() if k != LEGACY_SUBTASK_COLUMN}
    for name in LANGUAGE_COLUMNS:
        features[name] = dict(LANGUAGE_FEATURE)
    out["features"] = features
    tools = list(info.get("tools") or [])
    if not any(isinstance(t, dict) and t.get("function", {}).get("name") == "say" for t in tools):
        tools.append(SAY_TOOL)
    out["tools"] = tools
    return out


def info_text(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=4, ensure_ascii=False) + "\n"


def stage_dir(staging_dir: Path, run_id: str, generation: str) -> Path:
    return Path(staging_dir) / run_id / generation


def prepare_journal(root: Path, stage: Path, files: list[str]) -> Path:
    journal = stage / JOURNAL
    if journal.exists():
        return journal
    info_path = root / "meta" / "info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(info_path, f"cannot read info.json before commit: {exc}") from exc
    payload = {"files": sorted(files), "info_json": info_text(updated_info(info))}
    stage.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(journal, orjson.dumps(payload))
    return journal


def apply_journal(root: Path, stage: Path) -> None:
    journal = stage / JOURNAL
    payload = orjson.loads(journal.read_bytes())
    for rel in payload["files"]:
        staged = stage / rel
        target = root / rel
        if staged.exists():
            staged.replace(target)
            fsync_path(target.parent)
        elif not target.exists():
            raise DatasetError(target, "neither the staged nor the original shard exists")
    info_path = root / "meta" / "info.json"
    write_bytes_atomically(info_path, payload["info_json"].encode("utf-8"))
    # A writer killed inside an earlier attempt of this write left its temp file in meta/.
    remove_stale_temp_files(info_path)
    journal.unlink()
    fsync_path(stage)
    shutil.rmtree(stage, ignore_errors=True)
    log.info("run_committed", root=str(root), files=len(payload["files"]))


def commit(root: Path, stage: Path, files: list[str]) -> None:
    prepare_journal(root, stage, files)
    apply_journal(root, stage)


def resume_commits(root: Path, staging_dir: Path, run_id: str) -> bool:
    """Finish any interrupted commit of ``run_id``; True if one was finished."""
    run_dir = Path(staging_dir) / run_id
    done = False
    if run_dir.is_dir():
        for stage in sorted(run_dir.iterdir()):
            if (stage / JOURNAL).exists():
                log.info("commit_resuming_interrupted", stage=str(stage))
                apply_journal(root, stage)
                done = True
    return done
