"""Synthetic LeRobot v3 datasets for tests, demos and benchmarks.

:func:`make_sample_dataset` writes a genuine v3 layout: ``meta/info.json``,
``meta/tasks.parquet`` (task text as the pandas index, as LeRobot writes it),
``meta/episodes/chunk-XXX/file-YYY.parquet``, data files holding several episodes each, and per
camera mp4 files holding several episodes back to back. Data and video files are grouped
differently on purpose (a video file holds one episode more than a data file), so readers
must follow the episodes table rather than assume the two line up.

Every video frame carries a code band (:mod:`narrator.samples.video`) that says which frame of
which episode it is, so decode tests can check they got the right frame.

Options the module tests need, all off by default (the defaults' bytes do not change):
``depth_camera`` adds ``observation.images.depth``, a video camera marked as LeRobot marks
depth maps (``info.is_depth_map``) whose frames are grey depth-like images (code band kept);
``placeholder_tasks`` names the tasks as careless recordings do (``"debug"``, ``"pick cube"``,
``"task_1"``...): placeholders and tasks shorter than three words.

Invariants:
* Deterministic: the same arguments give the same bytes (single-threaded x264; SVT-AV1 and
  parquet are deterministic as configured).
* Arrow schemas are declared explicitly; timestamps are ``frame_index / fps`` as float32.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.logging import get_logger
from narrator.samples.video import CODE_BAND_ROWS, CODE_BITS, pick_codec, scene_frame, write_video

_log = get_logger(__name__)

CAMERA_NAMES: tuple[str, ...] = ("top", "wrist", "left", "right")
TASKS: tuple[str, ...] = (
    "pick up the red cube and place it in the bowl",
    "open the top drawer",
    "stack the blue block on the green block",
    "wipe the table with the sponge",
    "press the yellow button",
)
# As many as TASKS, so the episodes draw the same task indices either way.
PLACEHOLDER_TASKS: tuple[str, ...] = ("debug", "pick cube", "task_1", "TODO", "open drawer")
DEPTH_CAMERA = "observation.images.depth"
SUBTASKS: tuple[str, ...] = ("reach", "grasp", "move", "release", "retract")
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PER_META_FILE = 1000
ROW_GROUP_SIZE = 32  # small on purpose: row groups straddle episodes
_STATE_DIM = 6


@dataclass(frozen=True)
class _EpisodePlan:
    index: int
    length: int
    task_index: int
    from_index: int
    data_number: int  # which data file, counting across chunks
    video_number: int  # which video file (per camera), counting across chunks
    video_offset: int  # frames before this episode in its video file


def _chunk_file(number: int, chunks_size: int) -> tuple[int, int]:
    return number // chunks_size, number % chunks_size


def _plan_episodes(
    rng: np.random.Generator, episodes: int, episodes_per_file: int, lengths: tuple[int, int]
) -> list[_EpisodePlan]:
    plans: list[_EpisodePlan] = []
    frames_so_far = 0
    video_offsets: dict[int, int] = {}
    for index in range(episodes):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        video_number = index // (episodes_per_file + 1)
        offset = video_offsets.get(video_number, 0)
        video_offsets[video_number] = offset + length
        plans.append(
            _EpisodePlan(
                index=index,
                length=length,
                task_index=int(rng.integers(0, len(TASKS))),
                from_index=frames_so_far,
                data_number=index // episodes_per_file,
                video_number=video_number,
                video_offset=offset,
            )
        )
        frames_so_far += length
    return plans


def _group(
    plans: list[_EpisodePlan], key: Callable[[_EpisodePlan], int]
) -> dict[int, list[_EpisodePlan]]:
    """Episodes by file number, files in order, episodes in order."""
    groups: dict[int, list[_EpisodePlan]] = {}
    for plan in plans:
        groups.setdefault(key(plan), []).append(plan)
    return groups


def _feature(dtype: str, shape: list[int], names: Any = None) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "names": names}


def _info(
    plans: list[_EpisodePlan],
    camera_keys: list[str],
    fps: int,
    chunks_size: int,
    width: int,
    height: int,
    codec_name: str | None,
    legacy: bool,
    total_tasks: int,
) -> dict[str, Any]:
    joints = [f"joint_{i}" for i in range(_STATE_DIM)]
    features: dict[str, Any] = {
        "action": _feature("float32", [_STATE_DIM], joints),
        "observation.state": _feature("float32", [_STATE_DIM], joints),
    }
    for key in camera_keys:
        features[key] = {
            **_feature("video", [height, width, 3], ["height", "width", "channels"]),
            "info": {
                "video.height": height,
                "video.width": width,
                "video.codec": codec_name,
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": key == DEPTH_CAMERA,
                "video.fps": fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    features["timestamp"] = _feature("float32", [1])
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = _feature("int64", [1])
    if legacy:
        features["subtask_index"] = _feature("int64", [1])
    return {
        "codebase_version": "v3.0",
        "robot_type": "synthetic_arm",
        "total_episodes": len(plans),
        "total_frames": sum(p.length for p in plans),
        "total_tasks": total_tasks,
        "chunks_size": chunks_size,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{len(plans)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if camera_keys else None,
        "features": features,
    }


def _fixed_list(values: np.ndarray) -> pa.Array:
    flat = pa.array(values.astype(np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, _STATE_DIM)


def _data_table(plans: list[_EpisodePlan], fps: int, legacy: bool) -> pa.Table:
    frame_index = np.concatenate([np.arange(p.length, dtype=np.int64) for p in plans])
    episode_index = np.concatenate([np.full(p.length, p.index, np.int64) for p in plans])
    task_index = np.concatenate([np.full(p.length, p.task_index, np.int64) for p in plans])
    start = plans[0].from_index
    index = np.arange(start, start + len(frame_index), dtype=np.int64)
    phase = np.arange(_STATE_DIM, dtype=np.float64) + episode_index[:, None] * 0.37
    state = np.sin(frame_index[:, None] / fps + phase)
    vector = pa.list_(pa.float32(), _STATE_DIM)
    columns: dict[str, tuple[pa.DataType, pa.Array]] = {
        "action": (vector, _fixed_list(state + 0.05)),
        "observation.state": (vector, _fixed_list(state)),
        "timestamp": (
            pa.float32(),
            pa.array((frame_index / fps).astype(np.float32), type=pa.float32()),
        ),
        "frame_index": (pa.int64(), pa.array(frame_index, type=pa.int64())),
        "episode_index": (pa.int64(), pa.array(episode_index, type=pa.int64())),
        "index": (pa.int64(), pa.array(index, type=pa.int64())),
        "task_index": (pa.int64(), pa.array(task_index, type=pa.int64())),
    }
    if legacy:
        lengths = np.concatenate([np.full(p.length, p.length) for p in plans])
        subtask = np.minimum(frame_index * 3 // lengths, 2) + task_index % 3
        columns["subtask_index"] = (pa.int64(), pa.array(subtask, type=pa.int64()))
    schema = pa.schema([pa.field(name, t) for name, (t, _) in columns.items()])
    return pa.Table.from_arrays([a for _, a in columns.values()], schema=schema)


def _text_index_table(texts: tuple[str, ...], index_name: str) -> pa.Table:
    """A table as pandas writes a DataFrame indexed by text: index column + pandas metadata."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": index_name,
                "field_name": index_name,
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": "19.0.0"},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema(
        [pa.field(index_name, pa.int64()), pa.field("__index_level_0__", pa.string())],
        metadata={"pandas": json.dumps(pandas_meta)},
    )
    indices = pa.array(range(len(texts)), type=pa.int64())
    return pa.Table.from_arrays([indices, pa.array(texts, type=pa.string())], schema=schema)


def _episodes_table(
    plans: list[_EpisodePlan],
    camera_keys: list[str],
    fps: int,
    chunks_size: int,
    meta_file: int,
    tasks: tuple[str, ...],
) -> pa.Table:
    fields: list[tuple[str, pa.DataType, list[Any]]] = [
        ("episode_index", pa.int64(), [p.index for p in plans]),
        ("tasks", pa.list_(pa.string()), [[tasks[p.task_index]] for p in plans]),
        ("length", pa.int64(), [p.length for p in plans]),
        (
            "data/chunk_index",
            pa.int64(),
            [_chunk_file(p.data_number, chunks_size)[0] for p in plans],
        ),
        (
            "data/file_index",
            pa.int64(),
            [_chunk_file(p.data_number, chunks_size)[1] for p in plans],
        ),
        ("dataset_from_index", pa.int64(), [p.from_index for p in plans]),
        ("dataset_to_index", pa.int64(), [p.from_index + p.length for p in plans]),
    ]
    for key in camera_keys:
        chunk_files = [_chunk_file(p.video_number, chunks_size) for p in plans]
        fields += [
            (f"videos/{key}/chunk_index", pa.int64(), [c for c, _ in chunk_files]),
            (f"videos/{key}/file_index", pa.int64(), [f for _, f in chunk_files]),
            (f"videos/{key}/from_timestamp", pa.float64(), [p.video_offset / fps for p in plans]),
            (
                f"videos/{key}/to_timestamp",
                pa.float64(),
                [(p.video_offset + p.length) / fps for p in plans],
            ),
        ]
    meta_chunk, meta_index = _chunk_file(meta_file, chunks_size)
    fields += [
        ("meta/episodes/chunk_index", pa.int64(), [meta_chunk] * len(plans)),
        ("meta/episodes/file_index", pa.int64(), [meta_index] * len(plans)),
    ]
    schema = pa.schema([pa.field(name, t) for name, t, _ in fields])
    return pa.Table.from_arrays([pa.array(v, type=t) for _, t, v in fields], schema=schema)


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE)


def _write_videos(
    root: Path,
    plans: list[_EpisodePlan],
    camera_keys: list[str],
    *,
    fps: int,
    chunks_size: int,
    width: int,
    height: int,
    codec: str,
) -> None:
    for number, members in _group(plans, lambda p: p.video_number).items():
        chunk, file = _chunk_file(number, chunks_size)
        for camera, key in enumerate(camera_keys):
            frames = (
                _frame(
                    key,
                    width,
                    height,
                    file_frame=p.video_offset + i,
                    episode=p.index,
                    progress=i / max(1, p.length - 1),
                    task_index=p.task_index,
                    camera=camera,
                )
                for p in members
                for i in range(p.length)
            )
            rel = VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            write_video(root / rel, frames, fps=fps, codec=codec)


def _frame(key: str, width: int, height: int, **scene: Any) -> np.ndarray:
    """A camera's frame; the depth camera's is grey, brighter where the scene is nearer (the
    code band survives: its bits are black and white)."""
    image = scene_frame(width, height, **scene)
    if key != DEPTH_CAMERA:
        return image
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _check_arguments(arguments: dict[str, int]) -> None:
    for name, value in arguments.items():
        minimum = 0 if name == "cameras" else 1
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if arguments["cameras"] > len(CAMERA_NAMES):
        raise ValueError(f"cameras must be at most {len(CAMERA_NAMES)}")
    if arguments["min_length"] > arguments["max_length"]:
        raise ValueError("min_length must not exceed max_length")
    width, height = arguments["width"], arguments["height"]
    if width % 2 or height % 2 or width < 4 * CODE_BITS or height < 4 * CODE_BAND_ROWS:
        raise ValueError(
            f"frame size {width}x{height} must be even, at least {4 * CODE_BITS} wide and "
            f"{4 * CODE_BAND_ROWS} high"
        )


def make_sample_dataset(
    root: Path,
    *,
    episodes: int = 10,
    cameras: int = 2,
    fps: int = 10,
    episodes_per_file: int = 3,
    chunks_size: int = 2,
    min_length: int = 25,
    max_length: int = 90,
    width: int = 96,
    height: int = 72,
    codec: str | None = None,
    seed: int = 0,
    with_legacy_subtask_index: bool = False,
    metadata_only: bool = False,
    depth_camera: bool = False,
    placeholder_tasks: bool = False,
) -> Path:
    """Write a synthetic LeRobot v3 dataset at ``root`` (absent or empty) and return ``root``.

    ``metadata_only`` writes meta/ and data/ only and declares no cameras. ``depth_camera``
    adds a depth camera after the ``cameras`` RGB ones; ``placeholder_tasks`` uses
    :data:`PLACEHOLDER_TASKS` as the task texts (see the module doc).
    """
    _check_arguments(
        {
            "episodes": episodes,
            "cameras": cameras,
            "fps": fps,
            "episodes_per_file": episodes_per_file,
            "chunks_size": chunks_size,
            "min_length": min_length,
            "max_length": max_length,
            "width": width,
            "height": height,
        }
    )
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; pick a new directory")
    rng = np.random.default_rng(seed)
    plans = _plan_episodes(rng, episodes, episodes_per_file, (min_length, max_length))
    keys = [] if metadata_only else [f"observation.images.{n}" for n in CAMERA_NAMES[:cameras]]
    if depth_camera and not metadata_only:
        keys.append(DEPTH_CAMERA)
    tasks = PLACEHOLDER_TASKS if placeholder_tasks else TASKS
    encoder = pick_codec(codec) if keys else None
    codec_name = av.codec.Codec(encoder, "w").canonical_name if encoder else None
    info = _info(
        plans,
        keys,
        fps,
        chunks_size,
        width,
        height,
        codec_name,
        with_legacy_subtask_index,
        len(tasks),
    )
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4) + "\n", encoding="utf-8")
    _write_parquet(_text_index_table(tasks, "task_index"), root / "meta" / "tasks.parquet")
    if with_legacy_subtask_index:
        subtasks = _text_index_table(SUBTASKS, "subtask_index")
        _write_parquet(subtasks, root / "meta" / "subtasks.parquet")
    for meta_file, first in enumerate(range(0, episodes, EPISODES_PER_META_FILE)):
        chunk, file = _chunk_file(meta_file, chunks_size)
        table = _episodes_table(
            plans[first : first + EPISODES_PER_META_FILE], keys, fps, chunks_size, meta_file, tasks
        )
        _write_parquet(table, root / EPISODES_PATH.format(chunk_index=chunk, file_index=file))
    for number, members in _group(plans, lambda p: p.data_number).items():
        chunk, file = _chunk_file(number, chunks_size)
        table = _data_table(members, fps, with_legacy_subtask_index)
        _write_parquet(table, root / DATA_PATH.format(chunk_index=chunk, file_index=file))
    if encoder is not None:
        _write_videos(
            root,
            plans,
            keys,
            fps=fps,
            chunks_size=chunks_size,
            width=width,
            height=height,
            codec=encoder,
        )
    _log.info(
        "sample_dataset_written",
        root=str(root),
        episodes=episodes,
        cameras=len(keys),
        codec=encoder,
    )
    return root
