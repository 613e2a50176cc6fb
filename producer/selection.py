"""``--only-episodes``: which data files and members a run covers when it annotates a selection.

A run over a selection annotates only the selected episodes; the writer keeps every other
episode of a rewritten shard exactly as it was (``writer.merge.untouched_episodes``). A data
file enters the run when it holds a selected episode, or when it lacks the language columns
(the commit declares them in ``meta/info.json`` for every shard, and LeRobot refuses a shard
whose columns info.json does not declare, so such a file is rewritten with its episodes'
existing rows, or empty lists). Every other file is not touched at all.

Invariants:
* Pure apart from reading parquet footers (schemas only) of files without a selected episode.
* An episode the dataset does not have is an error naming it, before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.config import format_episode_ranges
from narrator.common.contract import LANGUAGE_COLUMNS
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.errors import ConfigError, DatasetError


def check_selection(selection: Collection[int], episodes: Collection[int]) -> None:
    """Raise ConfigError when ``selection`` names an episode that is not in ``episodes``."""
    missing = sorted(set(selection) - set(episodes))
    if missing:
        have = ",".join(format_episode_ranges(sorted(episodes))) or "none"
        shown = ",".join(format_episode_ranges(missing[:1000]))
        raise ConfigError(
            f"--only-episodes names episode(s) {shown} that the dataset does not have (it has "
            f"{have}); pick episodes it has"
        )


def selected_members(
    files: Mapping[str, Sequence[int]],
    selection: Collection[int],
    needs_columns: Collection[str],
) -> dict[str, list[int]]:
    """data file -> its selected episodes, for the files the run covers (pure): those with a
    selected episode, and the files in ``needs_columns`` (no language columns yet; their
    list may be empty)."""
    chosen = set(selection)
    out: dict[str, list[int]] = {}
    for data_file, episodes in files.items():
        picked = [e for e in episodes if e in chosen]
        if picked or data_file in needs_columns:
            out[data_file] = picked
    return out


def _has_language_columns(schema: pa.Schema) -> bool:
    return all(schema.get_field_index(name) >= 0 for name in LANGUAGE_COLUMNS)


def files_without_language(meta: DatasetMeta, candidates: Collection[str]) -> set[str]:
    """The ``candidates`` that do not hold both language columns declared in info.json."""
    features = meta.info.get("features", {})
    if not all(name in features for name in LANGUAGE_COLUMNS):
        return set(candidates)  # info.json does not declare them: the commit will
    out: set[str] = set()
    for data_file in candidates:
        path = meta.root / data_file
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(path, f"cannot be read as parquet ({exc})") from exc
        if not _has_language_columns(schema):
            out.add(data_file)
    return out


def run_files(meta: DatasetMeta, selection: Collection[int] | None) -> dict[str, list[int]]:
    """data file -> the episodes the run annotates in it (every episode without a selection)."""
    if selection is None:
        return {f: list(eps) for f, eps in meta.files.items()}
    check_selection(selection, meta.episodes)
    chosen = set(selection)
    untouched = [f for f, eps in meta.files.items() if not chosen.intersection(eps)]
    return selected_members(meta.files, chosen, files_without_language(meta, untouched))
