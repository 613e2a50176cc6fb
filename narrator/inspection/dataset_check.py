"""On-disk check of an annotated LeRobot v3 dataset: the shell around :mod:`common.validation`.

:func:`check_annotated_dataset` reads ``meta/info.json`` and, from every data shard, only the
columns it needs (``episode_index``, ``frame_index``, ``timestamp`` and the two language
columns), checks what only the files can show (column types, info.json features, the ``say``
tool, no legacy ``subtask_index``, one identical persistent list per episode) and then runs
:func:`common.validation.validate_episode` on every episode, with the frame sizes as stored
(video stream headers, one embedded image per data file) so that VQA boxes and points are
checked against the frames, and :func:`common.validation.coverage_findings` (episodes
without subtasks). A stored frame size that differs from info.json is a warning.

Invariants:
* Read-only: nothing under the dataset root is written.
* Dataset-level and file-level findings carry ``episode=-1``; their rules are in
  :data:`DATASET_RULES`. Per-episode rules are those of :data:`common.validation.RULES`.
* An episode's frames are its rows in file order (LeRobot stores them by frame index); the
  episode-relative frame of a row is its position among them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.contract import (
    COLUMN_TYPES,
    EVENTS_COLUMN,
    LANGUAGE_COLUMNS,
    LANGUAGE_FEATURE,
    LEGACY_SUBTASK_COLUMN,
    PERSISTENT_COLUMN,
    SAY_TOOL,
    SAY_TOOL_NAME,
    LanguageRow,
    row_from_dict,
)
from narrator.common.dataset.frame_sizes import FrameSizeProbe
from narrator.common.dataset.meta import FrameSize
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import DatasetError
from narrator.common.logging import get_logger
from narrator.common.validation import (
    RULES,
    Finding,
    Severity,
    coverage_findings,
    validate_episode,
)

log = get_logger(__name__)

DATASET_RULES: dict[str, Severity] = {
    "unreadable": "error",
    "missing_column": "error",
    "column_type": "error",
    "null_list": "error",
    "info_feature": "error",
    "say_tool": "error",
    "legacy_subtask_index": "error",
    "persistent_not_constant": "error",
    "frame_size_mismatch": "warning",
    "frame_size_unknown": "warning",
}
FRAME_COLUMNS = ("episode_index", "frame_index", "timestamp")
DATASET_LEVEL = -1


@dataclass
class EpisodeStats:
    """What one episode holds and what was found in it."""

    frames: int = 0
    persistent_rows: int = 0
    event_rows: int = 0
    styles: Counter[str] = field(default_factory=Counter)  # "speech" for style null
    errors: int = 0
    warnings: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "persistent_rows": self.persistent_rows,
            "event_rows": self.event_rows,
            "styles": dict(sorted(self.styles.items())),
            "errors": self.errors,
            "warnings": self.warnings,
        }


@dataclass
class CheckReport:
    root: Path
    files_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    episodes: dict[int, EpisodeStats] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == "warning")

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def by_rule(self) -> dict[str, dict[str, int | str]]:
        counts: Counter[str] = Counter(f.rule for f in self.findings)
        severity = {**RULES, **DATASET_RULES}
        return {
            rule: {"severity": severity.get(rule, "error"), "count": n}
            for rule, n in sorted(counts.items())
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "files_checked": self.files_checked,
            "episodes_checked": len(self.episodes),
            "errors": self.errors,
            "warnings": self.warnings,
            "by_rule": self.by_rule(),
            "episodes": {str(e): s.to_dict() for e, s in sorted(self.episodes.items())},
            "findings": [f.to_dict() for f in self.findings],
        }


def _dataset_finding(rule: str, message: str) -> Finding:
    return Finding(DATASET_RULES[rule], rule, DATASET_LEVEL, None, None, message)


@dataclass
class _EpisodeData:
    timestamps: list[float] = field(default_factory=list)
    persistent: list[LanguageRow] | None = None
    events: dict[int, list[LanguageRow]] = field(default_factory=dict)


# --- meta/info.json ------------------------------------------------------------------------


def _check_info(root: Path, out: list[Finding]) -> list[str]:
    """Check info.json's language features, tools and legacy feature; return camera keys."""
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        out.append(_dataset_finding("unreadable", f"{path}: cannot read it ({exc})"))
        return []
    features = info.get("features") if isinstance(info, dict) else None
    if not isinstance(features, dict):
        out.append(_dataset_finding("unreadable", f"{path}: has no `features` object"))
        return []
    for name in LANGUAGE_COLUMNS:
        if features.get(name) != LANGUAGE_FEATURE:
            out.append(
                _dataset_finding(
                    "info_feature",
                    f"{path}: features[{name!r}] is {features.get(name)!r}, must be "
                    f"{LANGUAGE_FEATURE}; re-run `narrator annotate` to finish the commit",
                )
            )
    tools = info.get("tools")
    says = [
        t
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and t.get("function", {}).get("name") == SAY_TOOL_NAME
    ]
    if not says:
        out.append(
            _dataset_finding("say_tool", f"{path}: no `tools` entry named {SAY_TOOL_NAME!r}")
        )
    elif says[0] != SAY_TOOL:
        out.append(
            _dataset_finding(
                "say_tool", f"{path}: the {SAY_TOOL_NAME!r} tool differs from docs/CONTRACT.md §2"
            )
        )
    if LEGACY_SUBTASK_COLUMN in features:
        out.append(
            _dataset_finding(
                "legacy_subtask_index",
                f"{path}: still declares the legacy {LEGACY_SUBTASK_COLUMN!r} feature",
            )
        )
    return [
        k
        for k, v in features.items()
        if isinstance(v, dict) and v.get("dtype") in ("video", "image")
    ]


# --- data shards ---------------------------------------------------------------------------


def _schema_ok(path: Path, schema: pa.Schema, out: list[Finding]) -> bool:
    ok = True
    for name in FRAME_COLUMNS:
        if schema.get_field_index(name) < 0:
            out.append(_dataset_finding("missing_column", f"{path}: has no {name!r} column"))
            ok = False
    for name in LANGUAGE_COLUMNS:
        index = schema.get_field_index(name)
        if index < 0:
            out.append(
                _dataset_finding(
                    "missing_column",
                    f"{path}: has no {name!r} column; every shard needs both language columns",
                )
            )
            ok = False
        elif schema.field(name).type != COLUMN_TYPES[name]:
            out.append(
                _dataset_finding(
                    "column_type",
                    f"{path}: column {name!r} has type {schema.field(name).type}, expected "
                    f"{COLUMN_TYPES[name]}",
                )
            )
            ok = False
    if schema.get_field_index(LEGACY_SUBTASK_COLUMN) >= 0:
        out.append(
            _dataset_finding(
                "legacy_subtask_index", f"{path}: still has the {LEGACY_SUBTASK_COLUMN!r} column"
            )
        )
    return ok


def _rows(list_array: pa.ListArray, start: int, length: int) -> list[LanguageRow]:
    return [row_from_dict(item) for item in list_array.values.slice(start, length).to_pylist()]


def _read_shard(path: Path, rel: str, data: dict[int, _EpisodeData], out: list[Finding]) -> None:
    try:
        schema = pq.read_schema(path)
        if not _schema_ok(path, schema, out):
            return
        table = pq.read_table(path, columns=[*FRAME_COLUMNS, *LANGUAGE_COLUMNS])
    except (OSError, pa.ArrowException) as exc:
        out.append(_dataset_finding("unreadable", f"{path}: cannot read it ({exc})"))
        return
    episodes = table.column("episode_index").to_numpy()
    timestamps = table.column("timestamp").to_numpy()
    persistent = table.column(PERSISTENT_COLUMN).combine_chunks()
    events = table.column(EVENTS_COLUMN).combine_chunks()
    for name, column in ((PERSISTENT_COLUMN, persistent), (EVENTS_COLUMN, events)):
        if column.null_count:
            out.append(
                _dataset_finding(
                    "null_list",
                    f"{path}: {column.null_count} row(s) of {name!r} are null; "
                    "frames without rows must hold an empty list",
                )
            )
    p_offsets = persistent.offsets.to_numpy()
    e_offsets = events.offsets.to_numpy()
    change = np.flatnonzero(np.diff(episodes)) + 1
    for start, stop in zip(
        np.concatenate([[0], change]), np.concatenate([change, [len(episodes)]]), strict=True
    ):
        episode = int(episodes[start])
        ep = data.setdefault(episode, _EpisodeData())
        base = len(ep.timestamps)
        ep.timestamps.extend(float(t) for t in timestamps[start:stop])
        _collect_persistent(rel, episode, ep, persistent, p_offsets, int(start), int(stop), out)
        for row in range(int(start), int(stop)):
            n = int(e_offsets[row + 1] - e_offsets[row])
            if n:
                frame = base + row - int(start)
                ep.events[frame] = _rows(events, int(e_offsets[row]), n)


def _collect_persistent(
    rel: str,
    episode: int,
    ep: _EpisodeData,
    column: pa.ListArray,
    offsets: np.ndarray,
    start: int,
    stop: int,
    out: list[Finding],
) -> None:
    lengths = np.diff(offsets[start : stop + 1])
    first_len = int(lengths[0])
    first = column.values.slice(int(offsets[start]), first_len)
    same = bool((lengths == first_len).all()) and all(
        column.values.slice(int(offsets[r]), first_len).equals(first) for r in range(start, stop)
    )
    rows = [row_from_dict(item) for item in first.to_pylist()]
    if ep.persistent is not None and rows != ep.persistent:
        same = False
    if not same:
        out.append(
            Finding(
                "error",
                "persistent_not_constant",
                episode,
                None,
                None,
                f"{rel}: episode {episode} does not carry one identical language_persistent "
                "list on every frame",
            )
        )
    if ep.persistent is None:
        ep.persistent = rows


def _stats(ep: _EpisodeData) -> EpisodeStats:
    stats = EpisodeStats(frames=len(ep.timestamps))
    persistent = ep.persistent or []
    stats.persistent_rows = len(persistent)
    for row in persistent:
        stats.styles[row.style or "speech"] += 1
    for rows in ep.events.values():
        stats.event_rows += len(rows)
        for row in rows:
            stats.styles[row.style or "speech"] += 1
    return stats


def _frame_sizes(root: Path, out: list[Finding]) -> dict[int, dict[str, FrameSize]] | None:
    """Stored frame sizes per episode and camera (for the VQA coordinate rule), with a warning
    per camera and file whose stored size differs from info.json; None when the dataset's
    layout cannot be read (its other findings say why)."""
    try:
        meta = load_dataset_meta(root)
    except DatasetError as exc:
        out.append(_dataset_finding("frame_size_unknown", f"frame sizes not checked: {exc}"))
        return None
    probe = FrameSizeProbe(meta)
    sizes = {episode: probe.sizes(episode) for episode in meta.episodes}
    for message in probe.mismatches(meta.episodes):
        out.append(_dataset_finding("frame_size_mismatch", message))
    for problem in probe.problems:
        out.append(_dataset_finding("frame_size_unknown", f"frame size not read: {problem}"))
    return sizes


def check_annotated_dataset(root: Path) -> CheckReport:
    """Check every data shard and ``meta/info.json`` of the dataset at ``root``."""
    root = Path(root)
    report = CheckReport(root=root)
    cameras = _check_info(root, report.findings)
    shards = sorted((root / "data").rglob("*.parquet"))
    if not shards:
        report.findings.append(
            _dataset_finding("unreadable", f"{root / 'data'}: no data shards (*.parquet) found")
        )
    data: dict[int, _EpisodeData] = {}
    for path in shards:
        _read_shard(path, path.relative_to(root).as_posix(), data, report.findings)
        report.files_checked += 1
    sizes = _frame_sizes(root, report.findings) if cameras and data else None
    for episode in sorted(data):
        ep = data[episode]
        report.findings.extend(
            validate_episode(
                episode=episode,
                frame_timestamps=ep.timestamps,
                persistent=ep.persistent or [],
                events_by_frame=ep.events,
                cameras=cameras,
                # The run's --no-plan is not recorded in the dataset: an episode with no plan
                # row at all was annotated with plans off (with plans on, every subtask start
                # has one), so its interjections need none.
                plans=any(r.style == "plan" for r in ep.persistent or []),
                frame_sizes=(sizes or {}).get(episode),
            )
        )
        report.findings.extend(
            coverage_findings(
                episode=episode, frames=len(ep.timestamps), persistent=ep.persistent or []
            )
        )
        report.episodes[episode] = _stats(ep)
    for finding in report.findings:
        stats = report.episodes.get(finding.episode)
        if stats is not None and finding.severity == "error":
            stats.errors += 1
        elif stats is not None:
            stats.warnings += 1
    log.info(
        "dataset_checked",
        root=str(root),
        files=report.files_checked,
        episodes=len(report.episodes),
        errors=report.errors,
        warnings=report.warnings,
    )
    return report
