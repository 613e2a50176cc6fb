"""The writer's pure column building and atomic shard rewrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from narrator.common.contract import (
    EVENTS_COLUMN,
    EVENTS_COLUMN_TYPE,
    PERSISTENT_COLUMN,
    PERSISTENT_COLUMN_TYPE,
    LanguageRow,
    speech_atom,
)
from narrator.writer.shard import EpisodeRange, build_language_columns, rewrite_shard


def _subtask(text: str, t: float) -> LanguageRow:
    return LanguageRow("assistant", text, "subtask", t, None, None)


def _source_table(n0: int, n1: int) -> pa.Table:
    n = n0 + n1
    return pa.table(
        {
            "episode_index": pa.array([3] * n0 + [4] * n1, pa.int64()),
            "frame_index": pa.array(list(range(n0)) + list(range(n1)), pa.int64()),
            "timestamp": pa.array(
                [i / 10 for i in range(n0)] + [i / 10 for i in range(n1)], pa.float32()
            ),
            "observation.state": pa.array(
                np.arange(n * 3, dtype=np.float32).reshape(n, 3).tolist(),
                pa.list_(pa.float32(), 3),
            ),
            "subtask_index": pa.array([0] * n, pa.int64()),
        }
    )


def test_columns_repeat_persistent_lists_and_place_events_on_their_frame() -> None:
    persistent = {3: [_subtask("a", 0.0), _subtask("b", 0.2)], 4: [_subtask("c", 0.0)]}
    events = {4: {1: [speech_atom("hello")]}}
    p_col, e_col = build_language_columns(
        7, [EpisodeRange(3, 0, 4), EpisodeRange(4, 4, 3)], persistent, events
    )
    assert p_col.type == PERSISTENT_COLUMN_TYPE
    assert e_col.type == EVENTS_COLUMN_TYPE
    p = p_col.to_pylist()
    assert all([r["content"] for r in p[i]] == ["a", "b"] for i in range(4))
    assert all([r["content"] for r in p[i]] == ["c"] for i in range(4, 7))
    e = e_col.to_pylist()
    assert [len(x) for x in e] == [0, 0, 0, 0, 0, 1, 0]
    assert e[5][0]["tool_calls"][0].startswith('{"type":"function"')


def test_rewrite_keeps_other_columns_row_groups_and_codec(tmp_path: Path) -> None:
    src = tmp_path / "file-000.parquet"
    table = _source_table(5, 7)
    pq.write_table(table, src, row_group_size=5, compression="zstd")
    p_col, e_col = build_language_columns(
        12,
        [EpisodeRange(3, 0, 5), EpisodeRange(4, 5, 7)],
        {3: [_subtask("x", 0.0)], 4: []},
        {},
    )
    dst = tmp_path / "out" / "file-000.parquet"
    rewrite_shard(src, dst, p_col, e_col)
    out = pq.ParquetFile(dst)
    assert [out.metadata.row_group(i).num_rows for i in range(out.num_row_groups)] == [5, 5, 2]
    assert out.metadata.row_group(0).column(0).compression == "ZSTD"
    got = out.read()
    assert "subtask_index" not in got.column_names
    for name in ("episode_index", "frame_index", "timestamp", "observation.state"):
        assert got.column(name).equals(table.column(name)), name
    assert got.schema.field(PERSISTENT_COLUMN).type == PERSISTENT_COLUMN_TYPE
    assert got.column(EVENTS_COLUMN).to_pylist() == [[]] * 12
    assert not any(p.name.startswith(".") for p in dst.parent.iterdir())


def test_rewrite_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "s.parquet"
    pq.write_table(_source_table(3, 3), src)
    args = build_language_columns(
        6, [EpisodeRange(3, 0, 3), EpisodeRange(4, 3, 3)], {3: [_subtask("y", 0.0)]}, {}
    )
    rewrite_shard(src, tmp_path / "a.parquet", *args)
    rewrite_shard(src, tmp_path / "b.parquet", *args)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_rewrite_refuses_columns_of_the_wrong_length(tmp_path: Path) -> None:
    src = tmp_path / "s.parquet"
    pq.write_table(_source_table(2, 2), src)
    p_col, e_col = build_language_columns(3, [EpisodeRange(3, 0, 3)], {}, {})
    with pytest.raises(ValueError, match="do not match"):
        rewrite_shard(src, tmp_path / "o.parquet", p_col, e_col)
    assert not (tmp_path / "o.parquet").exists()


def _leaf_codecs(path: Path) -> dict[str, str]:
    meta = pq.ParquetFile(path).metadata
    group = meta.row_group(0)
    return {
        group.column(i).path_in_schema: group.column(i).compression
        for i in range(group.num_columns)
    }


def test_per_column_codecs_are_kept_and_every_new_leaf_gets_the_shards_codec(
    tmp_path: Path,
) -> None:
    """A shard whose columns carry their own codecs: each keeps it, and every leaf of the two
    new columns gets the codec most of the shard's columns use (docs/DECISIONS.md)."""
    src = tmp_path / "s.parquet"
    table = _source_table(4, 4)
    codecs = {
        "episode_index": "zstd",
        "frame_index": "zstd",
        "timestamp": "zstd",
        "observation.state.list.element": "snappy",
        "subtask_index": "gzip",
    }
    pq.write_table(table, src, compression=codecs)
    before = _leaf_codecs(src)
    assert before["observation.state.list.element"] == "SNAPPY"
    args = build_language_columns(
        8, [EpisodeRange(3, 0, 4), EpisodeRange(4, 4, 4)], {3: [_subtask("y", 0.0)]}, {}
    )
    dst = tmp_path / "o.parquet"
    rewrite_shard(src, dst, *args)
    after = _leaf_codecs(dst)
    for leaf, codec in before.items():
        if not leaf.startswith("subtask_index"):
            assert after[leaf] == codec, leaf
    new_leaves = {
        k: v for k, v in after.items() if k.startswith(("language_persistent", "language_events"))
    }
    assert len(new_leaves) == 11  # 6 persistent fields + 5 event fields (tool_calls: one leaf)
    assert set(new_leaves.values()) == {"ZSTD"}, new_leaves


def test_rewrite_keeps_the_file_mode(tmp_path: Path) -> None:
    src = tmp_path / "s.parquet"
    pq.write_table(_source_table(2, 2), src)
    src.chmod(0o640)
    args = build_language_columns(4, [EpisodeRange(3, 0, 2), EpisodeRange(4, 2, 2)], {}, {})
    rewrite_shard(src, src, *args)
    assert src.stat().st_mode & 0o7777 == 0o640
