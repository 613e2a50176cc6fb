"""Malformed copies of a good sample dataset, one kind of damage each.

Every maker takes the good dataset's root and a destination (absent), copies the dataset
there, damages the copy, and returns :class:`Expected`: the file (relative to the copy's
root) that the resulting ``DatasetError`` must name and a substring of its problem.
``CASES`` lists them all by name.

The good dataset must come from ``make_sample_dataset`` with at least two cameras, two
chunks and three episodes per data file (the defaults).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from narrator.samples.video import pick_codec, write_video

TOP = "observation.images.top"
WRIST = "observation.images.wrist"
FIRST_DATA = "data/chunk-000/file-000.parquet"
SECOND_DATA = "data/chunk-000/file-001.parquet"
THIRD_DATA = "data/chunk-001/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


@dataclass(frozen=True)
class Expected:
    file: str  # relative to the dataset root
    problem: str  # substring of the DatasetError's problem


def _copy(good: Path, bad: Path) -> Path:
    shutil.copytree(good, bad)
    return bad


def _edit_table(path: Path, edit: Callable[[pa.Table], pa.Table]) -> None:
    table = pq.read_table(path)
    pq.write_table(edit(table), path)


def _replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    index = table.column_names.index(name)
    return table.set_column(index, pa.field(name, values.type), values)


def _edit_info(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = root / "meta/info.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    edit(info)
    path.write_text(json.dumps(info, indent=4), encoding="utf-8")


def _edit_values(table: pa.Table, name: str, edit: Callable[[list[Any]], None]) -> pa.Table:
    values = table.column(name).to_pylist()
    edit(values)
    return _replace_column(table, name, pa.array(values, table.column(name).type))


def _episodes_in(path: Path) -> list[int]:
    column = pq.read_table(path, columns=["episode_index"]).column("episode_index")
    return sorted(set(column.to_pylist()))


# --- metadata ------------------------------------------------------------------------------


def missing_info_json(good: Path, bad: Path) -> Expected:
    (_copy(good, bad) / "meta/info.json").unlink()
    return Expected("meta/info.json", "is missing")


def codebase_version_v21(good: Path, bad: Path) -> Expected:
    """info.json of a LeRobot v2.1 dataset (narrator reads v3.x only)."""
    _edit_info(_copy(good, bad), lambda info: info.update(codebase_version="v2.1"))
    return Expected("meta/info.json", "lerobot.datasets.v30.convert_dataset_v21_to_v30")


def invalid_info_json(good: Path, bad: Path) -> Expected:
    path = _copy(good, bad) / "meta/info.json"
    path.write_text(path.read_text(encoding="utf-8")[:-20], encoding="utf-8")
    return Expected("meta/info.json", "is not valid JSON")


def missing_tasks_parquet(good: Path, bad: Path) -> Expected:
    (_copy(good, bad) / "meta/tasks.parquet").unlink()
    return Expected("meta/tasks.parquet", "is missing")


def missing_episodes_parquet(good: Path, bad: Path) -> Expected:
    shutil.rmtree(_copy(good, bad) / "meta/episodes")
    return Expected("meta/episodes", "holds no episodes table")


def non_utf8_task_text(good: Path, bad: Path) -> Expected:
    path = _copy(good, bad) / "meta/tasks.parquet"
    table = pq.read_table(path)
    texts = [t.encode() for t in table.column("__index_level_0__").to_pylist()]
    texts[1] = b"open the \xff\xfe drawer"
    offsets = np.cumsum([0] + [len(t) for t in texts]).astype(np.int32)
    broken = pa.Array.from_buffers(
        pa.string(),
        len(texts),
        [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(texts))],
    )
    pq.write_table(_replace_column(table, "__index_level_0__", broken), path)
    return Expected("meta/tasks.parquet", "not valid UTF-8")


def missing_required_column(good: Path, bad: Path) -> Expected:
    _edit_table(_copy(good, bad) / EPISODES, lambda t: t.drop_columns(["dataset_from_index"]))
    return Expected(EPISODES, "missing required column(s) ['dataset_from_index']")


def undeclared_camera(good: Path, bad: Path) -> Expected:
    def add_ghost(table: pa.Table) -> pa.Table:
        for name in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
            table = table.append_column(
                f"videos/observation.images.ghost/{name}", table.column(f"videos/{TOP}/{name}")
            )
        return table

    _edit_table(_copy(good, bad) / EPISODES, add_ghost)
    return Expected(EPISODES, "['observation.images.ghost'] that meta/info.json does not declare")


def episode_length_mismatch(good: Path, bad: Path) -> Expected:
    def stretch(table: pa.Table) -> pa.Table:
        lengths = table.column("length").to_pylist()
        lengths[4] += 1
        return _replace_column(table, "length", pa.array(lengths, pa.int64()))

    _edit_table(_copy(good, bad) / EPISODES, stretch)
    return Expected(EPISODES, "dataset_to_index - dataset_from_index")


def info_json_without_fps(good: Path, bad: Path) -> Expected:
    _edit_info(_copy(good, bad), lambda info: info.pop("fps"))
    return Expected("meta/info.json", "missing required key(s) ['fps']")


def non_positive_fps(good: Path, bad: Path) -> Expected:
    _edit_info(_copy(good, bad), lambda info: info.update(fps=0))
    return Expected("meta/info.json", "fps must be a positive number")


def info_json_not_an_object(good: Path, bad: Path) -> Expected:
    (_copy(good, bad) / "meta/info.json").write_text("[10, 20]", encoding="utf-8")
    return Expected("meta/info.json", "must hold a JSON object at top level")


def camera_with_bad_shape(good: Path, bad: Path) -> Expected:
    _edit_info(_copy(good, bad), lambda info: info["features"][TOP].update(shape=[3]))
    return Expected("meta/info.json", f"camera '{TOP}' needs a shape of three positive integers")


def camera_without_video_columns(good: Path, bad: Path) -> Expected:
    """info.json declares a camera the episodes table has no video columns for."""
    ghost = "observation.images.ghost"
    _edit_info(
        _copy(good, bad), lambda info: info["features"].update({ghost: info["features"][TOP]})
    )
    return Expected(EPISODES, f"missing required column(s) ['videos/{ghost}/chunk_index'")


def duplicate_episode_row(good: Path, bad: Path) -> Expected:
    def repeat_first(values: list[Any]) -> None:
        values[1] = values[0]

    _edit_table(
        _copy(good, bad) / EPISODES, lambda t: _edit_values(t, "episode_index", repeat_first)
    )
    return Expected(EPISODES, "lists episode 0 more than once")


# --- data files ----------------------------------------------------------------------------


def truncated_data_parquet(good: Path, bad: Path) -> Expected:
    path = _copy(good, bad) / SECOND_DATA
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return Expected(SECOND_DATA, "truncated or corrupt")


def missing_data_column(good: Path, bad: Path) -> Expected:
    _edit_table(_copy(good, bad) / THIRD_DATA, lambda t: t.drop_columns(["frame_index"]))
    return Expected(THIRD_DATA, "missing required column(s) ['frame_index']")


def wrong_timestamp_dtype(good: Path, bad: Path) -> Expected:
    def widen(table: pa.Table) -> pa.Table:
        return _replace_column(table, "timestamp", table.column("timestamp").cast(pa.float64()))

    _edit_table(_copy(good, bad) / FIRST_DATA, widen)
    return Expected(FIRST_DATA, "column 'timestamp' has type double but must be float32")


def non_monotonic_timestamps(good: Path, bad: Path) -> Expected:
    def swap(table: pa.Table) -> pa.Table:
        stamps = table.column("timestamp").to_numpy().copy()
        stamps[5], stamps[6] = stamps[6], stamps[5]
        return _replace_column(table, "timestamp", pa.array(stamps, pa.float32()))

    path = _copy(good, bad) / SECOND_DATA
    episode = _episodes_in(path)[0]
    _edit_table(path, swap)
    return Expected(SECOND_DATA, f"timestamps of episode {episode} are not strictly increasing")


def episode_split_across_files(good: Path, bad: Path) -> Expected:
    """The last five rows of the first file's last episode move to the second file's front."""
    root = _copy(good, bad)
    first, second = pq.read_table(root / FIRST_DATA), pq.read_table(root / SECOND_DATA)
    moved = first.slice(first.num_rows - 5)
    pq.write_table(first.slice(0, first.num_rows - 5), root / FIRST_DATA)
    pq.write_table(pa.concat_tables([moved, second]), root / SECOND_DATA)
    episode = moved.column("episode_index")[0].as_py()
    return Expected(FIRST_DATA, f"rows of episode {episode}; the episode is split across")


def episode_missing_from_table(good: Path, bad: Path) -> Expected:
    """The episodes table loses the middle episode of the first data file."""
    root = _copy(good, bad)
    victim = _episodes_in(root / FIRST_DATA)[1]
    _edit_table(
        root / EPISODES,
        lambda t: t.filter(pc.not_equal(t.column("episode_index"), victim)),
    )
    return Expected(FIRST_DATA, f"episode {victim}, which is missing from the episodes table")


def missing_data_file(good: Path, bad: Path) -> Expected:
    (_copy(good, bad) / SECOND_DATA).unlink()
    return Expected(SECOND_DATA, "data file is missing")


def episode_index_as_text(good: Path, bad: Path) -> Expected:
    def to_text(table: pa.Table) -> pa.Table:
        return _replace_column(
            table, "episode_index", table.column("episode_index").cast(pa.string())
        )

    _edit_table(_copy(good, bad) / FIRST_DATA, to_text)
    return Expected(FIRST_DATA, "column 'episode_index' has type string but must be an integer")


def unknown_task_index(good: Path, bad: Path) -> Expected:
    """One frame of episode 0 names a task that meta/tasks.parquet does not list."""

    def point_nowhere(values: list[Any]) -> None:
        values[3] = 99

    _edit_table(
        _copy(good, bad) / FIRST_DATA, lambda t: _edit_values(t, "task_index", point_nowhere)
    )
    return Expected(FIRST_DATA, "episode 0 uses task_index [99] that meta/tasks.parquet")


def frame_index_gap(good: Path, bad: Path) -> Expected:
    def skip(values: list[Any]) -> None:
        values[3] += 100

    _edit_table(_copy(good, bad) / FIRST_DATA, lambda t: _edit_values(t, "frame_index", skip))
    return Expected(FIRST_DATA, "frame_index of episode 0 must count 0..")


def legacy_language_columns(good: Path, bad: Path) -> Expected:
    """Language columns of an older schema (float64 timestamps, no camera, no tool calls)."""
    root = _copy(good, bad)
    old_row = pa.struct([("role", pa.string()), ("content", pa.string()), ("style", pa.string())])
    old_persistent = pa.list_(pa.struct([*old_row, pa.field("timestamp", pa.float64())]))
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        empty: list[list[Any]] = [[] for _ in range(table.num_rows)]
        table = table.append_column(
            pa.field("language_persistent", old_persistent), pa.array(empty, old_persistent)
        )
        table = table.append_column(
            pa.field("language_events", pa.list_(old_row)), pa.array(empty, pa.list_(old_row))
        )
        pq.write_table(table, path)
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    for name in ("language_persistent", "language_events"):
        info["features"][name] = {"dtype": "language", "shape": [1], "names": None}
    info_path.write_text(json.dumps(info, indent=4), encoding="utf-8")
    return Expected(FIRST_DATA, "annotated by an older schema")


# --- videos --------------------------------------------------------------------------------


def missing_video_file(good: Path, bad: Path) -> Expected:
    rel = f"videos/{TOP}/chunk-000/file-001.mp4"
    (_copy(good, bad) / rel).unlink()
    return Expected(rel, "video file is missing")


def undecodable_video(good: Path, bad: Path) -> Expected:
    rel = f"videos/{WRIST}/chunk-000/file-001.mp4"
    path = _copy(good, bad) / rel
    noise = np.random.default_rng(7).integers(0, 256, path.stat().st_size, dtype=np.uint8)
    path.write_bytes(noise.tobytes())
    return Expected(rel, "cannot be opened as a video")


def video_shorter_than_episodes(good: Path, bad: Path) -> Expected:
    """The first top-camera video loses its last ten frames (re-encoded)."""
    rel = f"videos/{TOP}/chunk-000/file-000.mp4"
    path = _copy(good, bad) / rel
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate is not None, f"{path} declares no frame rate"
        fps = int(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    write_video(path, frames[:-10], fps=fps, codec=pick_codec())
    return Expected(rel, "video is shorter than the episodes table says")


def empty_video_file(good: Path, bad: Path) -> Expected:
    rel = f"videos/{TOP}/chunk-000/file-000.mp4"
    (_copy(good, bad) / rel).write_bytes(b"")
    return Expected(rel, "cannot be opened as a video")


def video_span_past_the_end(good: Path, bad: Path) -> Expected:
    """The episodes table places episode 0's top-camera frames far beyond the video's end."""

    def shift(values: list[Any]) -> None:
        values[0] += 1000.0

    def move(table: pa.Table) -> pa.Table:
        for name in ("from_timestamp", "to_timestamp"):
            table = _edit_values(table, f"videos/{TOP}/{name}", shift)
        return table

    _edit_table(_copy(good, bad) / EPISODES, move)
    return Expected(f"videos/{TOP}/chunk-000/file-000.mp4", "has no frame at 1000")


CASES: dict[str, Callable[[Path, Path], Expected]] = {
    f.__name__: f
    for f in (
        missing_info_json,
        invalid_info_json,
        info_json_not_an_object,
        info_json_without_fps,
        non_positive_fps,
        camera_with_bad_shape,
        camera_without_video_columns,
        missing_tasks_parquet,
        missing_episodes_parquet,
        non_utf8_task_text,
        missing_required_column,
        undeclared_camera,
        codebase_version_v21,
        episode_length_mismatch,
        duplicate_episode_row,
        truncated_data_parquet,
        missing_data_file,
        missing_data_column,
        wrong_timestamp_dtype,
        episode_index_as_text,
        non_monotonic_timestamps,
        frame_index_gap,
        unknown_task_index,
        episode_split_across_files,
        episode_missing_from_table,
        legacy_language_columns,
        missing_video_file,
        empty_video_file,
        undecodable_video,
        video_shorter_than_episodes,
        video_span_past_the_end,
    )
}
