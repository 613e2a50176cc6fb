"""common.dataset on real files: good datasets load and map episodes to the right files, rows
and timestamps (checked against the parquet files read directly); every malformed copy of
tests/bad_datasets.py fails with a DatasetError naming the file and the problem, and leaves
the dataset's bytes as they were."""

from __future__ import annotations

import hashlib
import json
import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from narrator.common.contract import COLUMN_TYPES, LANGUAGE_COLUMNS, SAY_TOOL, empty_column
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import (
    check_language_columns,
    load_dataset_meta,
    read_episode_frames,
    read_file_frames,
)
from narrator.common.errors import DatasetError
from narrator.samples.dataset import TASKS, make_sample_dataset
from narrator.workers.frames import decode_video_frames
from tests.support.bad_datasets import CASES


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(tmp_path_factory.mktemp("good") / "ds")


def _copy(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "copy"))


def open_fully(root: Path) -> DatasetMeta:
    """Everything a run reads: metadata, every row, the first and last frame of every span."""
    meta = load_dataset_meta(root)
    check_language_columns(meta)
    for data_file in meta.files:
        read_file_frames(meta, data_file)
    for index in meta.episodes:
        read_episode_frames(meta, index)
    for ep in meta.episodes.values():
        for span in ep.videos.values():
            last = span.from_timestamp_s + (ep.length - 1) / meta.fps
            decode_video_frames(span.path, [span.from_timestamp_s, last])
    return meta


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- good datasets -------------------------------------------------------------------------


def test_good_dataset_loads_with_cameras_tasks_and_files(good: Path) -> None:
    meta = open_fully(good)
    info = json.loads((good / "meta/info.json").read_text(encoding="utf-8"))
    assert meta.root == good.absolute()
    assert meta.fps == info["fps"] == 10
    assert [(c.key, c.dtype, c.height, c.width) for c in meta.cameras] == [
        ("observation.images.top", "video", 72, 96),
        ("observation.images.wrist", "video", 72, 96),
    ]
    assert dict(meta.tasks) == dict(enumerate(TASKS))
    assert sorted(meta.episodes) == list(range(10))
    assert meta.language_columns_state == "absent"
    assert not meta.has_legacy_subtask_index
    # data file -> episodes, as the data files themselves hold them, in row order
    on_disk = {}
    for path in sorted((good / "data").rglob("*.parquet")):
        column = pq.read_table(path, columns=["episode_index"]).column("episode_index")
        on_disk[path.relative_to(good).as_posix()] = tuple(dict.fromkeys(column.to_pylist()))
    assert dict(meta.files) == on_disk
    assert len({Path(f).parent for f in meta.files}) >= 2  # several chunks


def test_episodes_map_to_their_rows_and_timestamps(good: Path) -> None:
    meta = load_dataset_meta(good)
    for data_file, indices in meta.files.items():
        table = pq.read_table(good / data_file)
        by_file = read_file_frames(meta, data_file)
        assert sorted(by_file) == sorted(indices)
        episode_column = table.column("episode_index").to_numpy()
        for index in indices:
            rows = np.flatnonzero(episode_column == index)
            frames = read_episode_frames(meta, index)
            ep = meta.episodes[index]
            assert ep.data_file == data_file
            assert frames.row_start == rows[0] == by_file[index].row_start
            assert len(rows) == ep.length == ep.to_index - ep.from_index
            assert table.column("index").to_numpy()[rows[0]] == ep.from_index
            expected_ts = table.column("timestamp").to_numpy()[rows]
            assert frames.timestamp.dtype == np.float32
            np.testing.assert_array_equal(frames.timestamp, expected_ts)
            np.testing.assert_array_equal(by_file[index].timestamp, expected_ts)
            np.testing.assert_array_equal(frames.frame_index, np.arange(ep.length))
            np.testing.assert_array_equal(
                frames.task_index, table.column("task_index").to_numpy()[rows]
            )
            assert ep.tasks == (meta.tasks[int(frames.task_index[0])],)


def test_video_spans_follow_each_other_inside_a_file(good: Path) -> None:
    meta = load_dataset_meta(good)
    for camera in ("observation.images.top", "observation.images.wrist"):
        spans = sorted(
            (ep.videos[camera] for ep in meta.episodes.values()),
            key=lambda s: (s.path, s.from_timestamp_s),
        )
        assert len({s.path for s in spans}) >= 3
        for before, after in pairwise(spans):
            assert before.path.is_file()
            if before.path == after.path:
                assert after.from_timestamp_s == pytest.approx(before.to_timestamp_s)
            else:
                assert after.from_timestamp_s == 0.0
    for ep in meta.episodes.values():
        span = ep.videos["observation.images.top"]
        assert span.to_timestamp_s - span.from_timestamp_s == pytest.approx(ep.length / meta.fps)


def test_fingerprint_is_stable_across_annotation_and_changes_with_tasks(
    good: Path, tmp_path: Path
) -> None:
    root = _copy(good, tmp_path)
    before = load_dataset_meta(root).fingerprint()
    assert before == load_dataset_meta(good).fingerprint()
    assert len(before) == 16 and int(before, 16) >= 0
    # annotate the way the writer does: columns of the contract types, info.json features, tools
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        for name in LANGUAGE_COLUMNS:
            column = empty_column(name, table.num_rows)
            table = table.append_column(pa.field(name, COLUMN_TYPES[name]), column)
        pq.write_table(table, path)
    info = json.loads((root / "meta/info.json").read_text(encoding="utf-8"))
    for name in LANGUAGE_COLUMNS:
        info["features"][name] = {"dtype": "language", "shape": [1], "names": None}
    info["tools"] = [SAY_TOOL]
    (root / "meta/info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    annotated = load_dataset_meta(root)
    assert annotated.language_columns_state == "current"
    check_language_columns(annotated)  # current columns are not an error
    assert annotated.fingerprint() == before
    # hand-built metas (no stored value) compute the same fingerprint from disk
    assert DatasetMeta(root, info, 10.0, (), {}, {}, {}).fingerprint() == before
    # a different task list is a different dataset
    tasks = pq.read_table(root / "meta/tasks.parquet")
    pq.write_table(tasks.slice(0, tasks.num_rows), root / "meta/tasks.parquet", compression="gzip")
    assert load_dataset_meta(root).fingerprint() != before


def test_tasks_as_a_plain_task_column(good: Path, tmp_path: Path) -> None:
    root = _copy(good, tmp_path)
    table = pa.table(
        {"task": pa.array(list(reversed(TASKS))), "task_index": pa.array(range(4, -1, -1))},
        schema=pa.schema([("task", pa.string()), ("task_index", pa.int64())]),
    )
    pq.write_table(table, root / "meta/tasks.parquet")
    assert dict(load_dataset_meta(root).tasks) == dict(enumerate(TASKS))


def test_camera_size_follows_the_names_order(good: Path, tmp_path: Path) -> None:
    root = _copy(good, tmp_path)
    info = json.loads((root / "meta/info.json").read_text(encoding="utf-8"))
    feature = info["features"]["observation.images.wrist"]
    feature["shape"], feature["names"] = [3, 72, 96], ["channels", "height", "width"]
    (root / "meta/info.json").write_text(json.dumps(info), encoding="utf-8")
    cams = {c.key: (c.height, c.width) for c in load_dataset_meta(root).cameras}
    assert cams == {"observation.images.top": (72, 96), "observation.images.wrist": (72, 96)}


def test_metadata_only_and_legacy_subtask_datasets_load(tmp_path: Path) -> None:
    plain = make_sample_dataset(tmp_path / "plain", episodes=7, metadata_only=True)
    meta = open_fully(plain)
    assert meta.cameras == () and all(not ep.videos for ep in meta.episodes.values())
    legacy = make_sample_dataset(
        tmp_path / "legacy", episodes=4, cameras=0, with_legacy_subtask_index=True
    )
    assert load_dataset_meta(legacy).has_legacy_subtask_index


def test_unknown_episode_is_a_dataset_error(good: Path) -> None:
    meta = load_dataset_meta(good)
    with pytest.raises(DatasetError, match="episode 99 is not in the episodes table"):
        read_episode_frames(meta, 99)
    with pytest.raises(DatasetError, match="not a data file"):
        read_file_frames(meta, "data/chunk-009/file-000.parquet")


# --- malformed datasets --------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_dataset_names_the_file_and_the_problem(
    case: str, good: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    expected = CASES[case](good, bad)
    before = _digests(bad)
    with pytest.raises(DatasetError) as caught:
        open_fully(bad)
    error = caught.value
    assert Path(error.path) == bad.absolute() / expected.file, str(error)
    assert expected.problem in error.problem, str(error)
    assert str(bad.absolute() / expected.file) in str(error)
    assert _digests(bad) == before  # reading never writes


def test_legacy_language_columns_load_but_are_flagged(good: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    CASES["legacy_language_columns"](good, bad)
    meta = load_dataset_meta(bad)
    assert meta.language_columns_state == "legacy"
    assert read_file_frames(meta, "data/chunk-000/file-000.parquet")  # still readable


def test_episode_reads_touch_only_its_row_groups(good: Path, tmp_path: Path) -> None:
    """Zero the bytes of the last row group's timestamp chunk: the first episode still reads
    (its row groups are intact), the whole file does not, and the error names the file."""
    root = _copy(good, tmp_path)
    rel = "data/chunk-000/file-000.parquet"
    path = root / rel
    metadata = pq.ParquetFile(path).metadata
    last = metadata.row_group(metadata.num_row_groups - 1)
    chunk = next(
        last.column(i)
        for i in range(last.num_columns)
        if last.column(i).path_in_schema == "timestamp"
    )
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + chunk.total_compressed_size] = bytes(chunk.total_compressed_size)
    path.write_bytes(bytes(data))
    meta = load_dataset_meta(root)
    first = meta.files[rel][0]
    assert read_episode_frames(meta, first).timestamp.shape == (meta.episodes[first].length,)
    with pytest.raises(DatasetError, match="truncated or corrupt") as caught:
        read_file_frames(meta, rel)
    assert caught.value.path == str(path)
