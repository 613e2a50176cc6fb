"""The value types of a LeRobot v3 dataset and the pure rules that derive them from its metadata.

``common.dataset`` reads the files; this module turns what was read into typed values:
``meta/info.json`` into fps, cameras and path templates; Arrow schemas into "has the columns
it needs, with usable types"; the metadata bytes into the dataset fingerprint; the data
files' schemas into the state of existing language columns.

Invariants:
* No I/O here except :func:`fingerprint_of_root` (reads the three metadata inputs of the
  fingerprint when a :class:`DatasetMeta` was built by hand without one).
* Every problem is a :class:`~common.errors.DatasetError` naming the file, the problem and
  what the user can do about it.
* The fingerprint ignores what annotating changes (the two language features, the legacy
  ``subtask_index`` feature, the top-level ``tools``), so a run keeps its id across commits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from narrator.common.contract import COLUMN_TYPES, LANGUAGE_COLUMNS, LEGACY_SUBTASK_COLUMN
from narrator.common.errors import DatasetError

INFO_FILE = "meta/info.json"
TASKS_FILE = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
FRAME_COLUMNS: tuple[str, ...] = ("episode_index", "frame_index", "timestamp", "task_index")
REQUIRED_FEATURES: dict[str, str] = {
    "episode_index": "int64",
    "frame_index": "int64",
    "timestamp": "float32",
    "index": "int64",
    "task_index": "int64",
}
CAMERA_DTYPES: tuple[str, str] = ("video", "image")
_FINGERPRINT_IGNORED_FEATURES: frozenset[str] = frozenset(
    {*LANGUAGE_COLUMNS, LEGACY_SUBTASK_COLUMN}
)

LanguageState = Literal["absent", "current", "legacy"]
ColumnKind = Literal["int", "float", "float32", "string", "string_list"]


@dataclass(frozen=True)
class CameraInfo:
    key: str  # "observation.images.top"
    dtype: Literal["video", "image"]
    height: int  # pixels of the frame as stored (from info.json shape/names)
    width: int
    depth: bool = False  # a depth map (is_depth_map in the feature's info): no RGB prompts


@dataclass(frozen=True)
class VideoSpan:
    camera: str
    path: Path  # absolute path of the mp4
    from_timestamp_s: float  # the episode's first frame is at from_timestamp_s in the file
    to_timestamp_s: float


@dataclass(frozen=True)
class Episode:
    index: int
    length: int
    tasks: tuple[str, ...]
    data_file: str  # relative to root, e.g. "data/chunk-000/file-000.parquet"
    from_index: int  # global frame index range [from_index, to_index)
    to_index: int
    videos: Mapping[str, VideoSpan]  # camera key -> span (video cameras only)


@dataclass(frozen=True)
class EpisodeFrames:
    episode: int
    row_start: int  # first row of the episode inside its data file
    frame_index: np.ndarray  # int64
    timestamp: np.ndarray  # float32, as stored, seconds from episode start
    task_index: np.ndarray  # int64


@dataclass(frozen=True)
class DatasetMeta:
    root: Path
    info: dict[str, Any]  # meta/info.json as loaded
    fps: float
    cameras: tuple[CameraInfo, ...]
    tasks: Mapping[int, str]  # task_index -> task text
    episodes: Mapping[int, Episode]
    files: Mapping[str, tuple[int, ...]]  # data file -> its episodes, in row order
    language_columns_state: LanguageState = "absent"
    # (file, problem) explaining a "legacy" state; None otherwise
    language_columns_issue: tuple[str, str] | None = None
    has_legacy_subtask_index: bool = False
    fingerprint_hex: str = field(default="", repr=False)

    def fingerprint(self) -> str:
        """Stable across annotation: ignores the language columns, tools and subtask_index."""
        return self.fingerprint_hex or fingerprint_of_root(self.root, self.info)

    def camera(self, key: str) -> CameraInfo:
        for cam in self.cameras:
            if cam.key == key:
                return cam
        known = ", ".join(c.key for c in self.cameras) or "none"
        raise DatasetError(self.root / INFO_FILE, f"no camera {key!r} (cameras: {known})")

    def episode(self, index: int) -> Episode:
        try:
            return self.episodes[index]
        except KeyError:
            raise DatasetError(
                self.root / EPISODES_DIR,
                f"episode {index} is not in the episodes table "
                f"({len(self.episodes)} episodes are); pick an episode the dataset has",
            ) from None

    def row_start(self, episode: Episode) -> int:
        """First row of ``episode`` inside its data file (rows lie in global-index order)."""
        first = self.episodes[self.files[episode.data_file][0]]
        return episode.from_index - first.from_index


# --- meta/info.json ------------------------------------------------------------------------


def parse_info(raw: bytes, path: Path) -> dict[str, Any]:
    """Decode and check ``meta/info.json``; returns it as loaded."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            path, f"is not UTF-8 text (bad byte at offset {exc.start}); re-save it as UTF-8"
        ) from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            path,
            f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "restore it from the dataset's source",
        ) from None
    if not isinstance(info, dict):
        raise DatasetError(path, "must hold a JSON object at top level")
    _check_info_keys(info, path)
    return info


def _check_info_keys(info: dict[str, Any], path: Path) -> None:
    missing = [k for k in ("fps", "features", "data_path") if k not in info]
    if missing:
        raise DatasetError(
            path,
            f"missing required key(s) {missing}; a LeRobot v3 info.json has fps, features, "
            "data_path and video_path: convert the dataset to LeRobot v3 first",
        )
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0:
        raise DatasetError(path, f"fps must be a positive number, found {fps!r}")
    features = info["features"]
    if not isinstance(features, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("dtype"), str) for v in features.values()
    ):
        raise DatasetError(path, "features must map each feature key to an object with a dtype")
    for key, dtype in REQUIRED_FEATURES.items():
        if key not in features:
            raise DatasetError(
                path,
                f"features lacks the required key {key!r}; every LeRobot v3 dataset declares "
                f"{sorted(REQUIRED_FEATURES)}",
            )
        if features[key]["dtype"] != dtype:
            raise DatasetError(
                path, f"feature {key!r} has dtype {features[key]['dtype']!r}, expected {dtype!r}"
            )
    if not isinstance(info["data_path"], str):
        raise DatasetError(path, "data_path must be a path template string")
    if any(f["dtype"] == "video" for f in features.values()) and not isinstance(
        info.get("video_path"), str
    ):
        raise DatasetError(path, "declares video features but has no video_path template")


def cameras_from_info(info: Mapping[str, Any], path: Path) -> tuple[CameraInfo, ...]:
    """Every feature of dtype video or image, in info.json order."""
    cams: list[CameraInfo] = []
    for key, feature in info["features"].items():
        dtype = feature["dtype"]
        if dtype not in CAMERA_DTYPES:
            continue
        height, width = _frame_size(key, feature, path)
        depth = is_depth_map(feature)
        cams.append(CameraInfo(key=key, dtype=dtype, height=height, width=width, depth=depth))
    return tuple(cams)


def is_depth_map(feature: Mapping[str, Any]) -> bool:
    """Whether a camera feature holds depth maps, as LeRobot marks them: ``is_depth_map`` in
    the feature's ``info``, or the older ``video.is_depth_map`` there or in ``video_info``."""
    info = feature.get("info")
    video_info = feature.get("video_info")
    marks = []
    if isinstance(info, Mapping):
        marks += [info.get("is_depth_map"), info.get("video.is_depth_map")]
    if isinstance(video_info, Mapping):
        marks.append(video_info.get("video.is_depth_map"))
    return any(mark is True for mark in marks)


def _frame_size(key: str, feature: Mapping[str, Any], path: Path) -> tuple[int, int]:
    shape = feature.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(s, int) and s > 0 for s in shape)
    ):
        raise DatasetError(
            path, f"camera {key!r} needs a shape of three positive integers, found {shape!r}"
        )
    names = feature.get("names")
    if isinstance(names, list) and len(names) == 3 and all(isinstance(n, str) for n in names):
        lowered = [n.lower() for n in names]
        h_axis = next((i for i, n in enumerate(lowered) if n in ("height", "h")), None)
        w_axis = next((i for i, n in enumerate(lowered) if n in ("width", "w")), None)
        if h_axis is None or w_axis is None:
            raise DatasetError(
                path, f"camera {key!r} names {names!r} do not say which axes are height, width"
            )
        return shape[h_axis], shape[w_axis]
    # No names: channels-last when the last axis looks like channels, else channels-first.
    if shape[2] in (1, 3, 4):
        return shape[0], shape[1]
    return shape[1], shape[2]


def format_path(template: str, info_path: Path, **fields: Any) -> str:
    """Fill a data_path/video_path template; a template with unknown fields is a DatasetError."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise DatasetError(
            info_path,
            f"path template {template!r} cannot be filled ({exc!r}); it may use only "
            f"{sorted(fields)}",
        ) from None


# --- Arrow schemas -------------------------------------------------------------------------


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def column_kind_matches(t: pa.DataType, kind: ColumnKind) -> bool:
    if kind == "int":
        return bool(pa.types.is_integer(t))
    if kind == "float":
        return bool(pa.types.is_floating(t))
    if kind == "float32":
        return bool(t == pa.float32())
    if kind == "string":
        return _is_string(t)
    return bool((pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_string(t.value_type))


_KIND_WORDS: dict[str, str] = {
    "int": "an integer type",
    "float": "a floating-point type",
    "float32": "float32",
    "string": "string",
    "string_list": "list<string>",
}


def require_columns(schema: pa.Schema, required: Mapping[str, ColumnKind], path: Path) -> None:
    """Raise if a required column is missing or has an unusable type."""
    missing = [name for name in required if schema.get_field_index(name) < 0]
    if missing:
        raise DatasetError(
            path,
            f"missing required column(s) {missing}; a LeRobot v3 file of this kind has "
            f"{sorted(required)}. Re-export or convert the dataset with LeRobot v3 tooling",
        )
    for name, kind in required.items():
        found = schema.field(name).type
        if not column_kind_matches(found, kind):
            raise DatasetError(
                path,
                f"column {name!r} has type {found} but must be {_KIND_WORDS[kind]}; "
                "convert the column (LeRobot v3 stores it that way)",
            )


def language_state(
    info: Mapping[str, Any], schemas: Mapping[str, pa.Schema]
) -> tuple[LanguageState, tuple[str, str] | None]:
    """Whether the data files already hold language columns of the current contract types.

    ``schemas`` maps a data file (relative path) to its Arrow schema. "legacy" comes with the
    file and the problem, worded for the user.
    """
    advice = (
        "this dataset was annotated by an older schema. Remove the language_persistent and "
        "language_events columns from the data files and their entries from meta/info.json "
        "features (or start again from the un-annotated dataset), then run narrator again"
    )
    features = info.get("features", {})
    for name in LANGUAGE_COLUMNS:
        declared = features.get(name)
        if declared is not None and declared.get("dtype") != "language":
            problem = f"feature {name!r} has dtype {declared.get('dtype')!r}, not 'language'"
            return "legacy", (INFO_FILE, f"{problem}; {advice}")
    present = any(name in features for name in LANGUAGE_COLUMNS)
    for rel, schema in sorted(schemas.items()):
        for name in LANGUAGE_COLUMNS:
            index = schema.get_field_index(name)
            if index < 0:
                continue
            present = True
            found = schema.field(name).type
            if found != COLUMN_TYPES[name]:
                problem = f"column {name!r} has type {found}, expected {COLUMN_TYPES[name]}"
                return "legacy", (rel, f"{problem}; {advice}")
    return ("current" if present else "absent"), None


# --- fingerprint ---------------------------------------------------------------------------


def fingerprint_info_text(info: Mapping[str, Any]) -> bytes:
    """info.json without what annotating changes, as canonical JSON bytes."""
    reduced = {k: v for k, v in info.items() if k != "tools"}
    features = info.get("features")
    if isinstance(features, dict):
        reduced["features"] = {
            k: v for k, v in features.items() if k not in _FINGERPRINT_IGNORED_FEATURES
        }
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
