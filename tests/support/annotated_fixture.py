"""A small annotated LeRobot v3 dataset for the consumer-side tests, and broken copies of it.

:func:`make_annotated_dataset` writes a sample dataset (``narrator.samples.dataset``) and then
language columns of its own, built with ``common.contract`` (not by the pipeline), so tests of
validation, rendering and the report do not depend on the annotation run. Every episode gets:
three subtasks covering it, a plan at the first frame, two task rephrasings, memory at the
two later boundaries, a speech atom at the first frame, an interjection (with its speech
answer and a refreshed plan) at the last boundary, and one vqa question/answer per camera
every ``vqa_every`` frames, cycling through the five answer types with coordinates inside the
stored frame.

:func:`break_dataset` damages a copy in one named way (see :data:`BREAKAGES`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
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
    LanguageRow,
    row_from_dict,
    rows_to_struct_array,
    say_tool_call,
    sort_events,
    sort_persistent,
    speech_atom,
)
from narrator.samples.dataset import make_sample_dataset

SUBTASK_LABELS = (
    "reach toward the object with the open gripper",
    "grasp the object firmly",
    "carry the object to the target and release it",
)
QUESTION_TYPES = ("bbox", "keypoint", "count", "attribute", "spatial")

Rows = list[LanguageRow]


def _p(style: str, t: float, content: str, role: str = "assistant") -> LanguageRow:
    return LanguageRow(role, content, style, t, None, None)


def _e(style: str, content: str, role: str, camera: str | None = None) -> LanguageRow:
    return LanguageRow(role, content, style, None, camera, None)


def vqa_answer(qtype: str, width: int, height: int, k: int) -> tuple[str, dict[str, Any]]:
    """A question and an answer of ``qtype`` with coordinates inside a width x height frame."""
    x0, y0 = (k * 7) % (width // 2), (k * 5) % (height // 2)
    answers: dict[str, tuple[str, dict[str, Any]]] = {
        "bbox": (
            "Where is the object? Give a bounding box.",
            {
                "detections": [
                    {
                        "label": "object",
                        "bbox_format": "xyxy",
                        "bbox": [x0, y0, x0 + width // 3, y0 + height // 3],
                    }
                ]
            },
        ),
        "keypoint": (
            "Point at the gripper.",
            {"label": "gripper", "point_format": "xy", "point": [x0 + 5, y0 + 5]},
        ),
        "count": ("How many objects are on the table?", {"label": "object", "count": 1 + k % 3}),
        "attribute": (
            "What colour is the object?",
            {"label": "object", "attribute": "colour", "value": "red"},
        ),
        "spatial": (
            "Where is the gripper relative to the object?",
            {"subject": "gripper", "relation": "above", "object": "object"},
        ),
    }
    return answers[qtype]


def episode_rows(
    timestamps: list[float],
    cameras: dict[str, tuple[int, int]],
    *,
    vqa_every: int,
    episode: int,
) -> tuple[Rows, dict[int, Rows]]:
    """Persistent rows and events-by-frame for one episode (timestamps as stored)."""
    n = len(timestamps)
    starts = [0, n // 3, (2 * n) // 3]
    persistent: Rows = [
        _p("plan", timestamps[0], "1. reach the object\n2. grasp it\n3. carry and release it"),
        _p("task_aug", timestamps[0], f"please do task number {episode}", role="user"),
        _p("task_aug", timestamps[0], f"could you handle job {episode}", role="user"),
    ]
    for i, start in enumerate(starts):
        persistent.append(_p("subtask", timestamps[start], SUBTASK_LABELS[i]))
    persistent.append(_p("memory", timestamps[starts[1]], "The gripper is at the object."))
    persistent.append(_p("memory", timestamps[starts[2]], "The object is held."))
    last = starts[2]
    persistent.append(_p("plan", timestamps[last], "1. carry it slowly\n2. release it gently"))
    events: dict[int, Rows] = {0: [speech_atom("Okay, starting now.")]}
    events.setdefault(last, []).extend(
        [_e("interjection", "Slowly please, it is fragile.", "user"), speech_atom("Sure, slowly.")]
    )
    k = 0
    for frame in range(vqa_every // 2, n, vqa_every):
        for camera, (width, height) in cameras.items():
            qtype = QUESTION_TYPES[(k + episode) % len(QUESTION_TYPES)]
            question, answer = vqa_answer(qtype, width, height, k)
            events.setdefault(frame, []).extend(
                [
                    _e("vqa", question, "user", camera),
                    _e("vqa", orjson.dumps(answer).decode(), "assistant", camera),
                ]
            )
            k += 1
    return sort_persistent(persistent), {f: sort_events(r) for f, r in events.items()}


def list_column(per_frame: list[Rows], name: str) -> pa.Array:
    """A language column of the declared type from one list of rows per frame."""
    offsets = [0]
    flat: Rows = []
    for rows in per_frame:
        flat.extend(rows)
        offsets.append(len(flat))
    values = rows_to_struct_array(flat, persistent=name == PERSISTENT_COLUMN)
    return pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()), values, type=COLUMN_TYPES[name]
    )


def _cameras(info: dict[str, Any]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for key, feature in info["features"].items():
        if feature.get("dtype") in ("video", "image"):
            height, width = feature["shape"][0], feature["shape"][1]
            out[key] = (width, height)
    return out


def read_language(path: Path) -> tuple[pa.Table, list[Rows], list[Rows]]:
    """A shard, and its two language columns as rows per frame."""
    table = pq.read_table(path)
    persistent = [[row_from_dict(d) for d in v] for v in table[PERSISTENT_COLUMN].to_pylist()]
    events = [[row_from_dict(d) for d in v] for v in table[EVENTS_COLUMN].to_pylist()]
    return table, persistent, events


def write_language(path: Path, table: pa.Table, persistent: list[Rows], events: list[Rows]) -> None:
    """Rewrite a shard with the given language rows per frame (other columns untouched)."""
    keep = [c for c in table.column_names if c not in (*LANGUAGE_COLUMNS, LEGACY_SUBTASK_COLUMN)]
    out = table.select(keep)
    out = out.append_column(
        pa.field(PERSISTENT_COLUMN, COLUMN_TYPES[PERSISTENT_COLUMN]),
        list_column(persistent, PERSISTENT_COLUMN),
    )
    out = out.append_column(
        pa.field(EVENTS_COLUMN, COLUMN_TYPES[EVENTS_COLUMN]), list_column(events, EVENTS_COLUMN)
    )
    pq.write_table(out, path)


def annotate_in_place(root: Path, *, vqa_every: int = 10) -> None:
    """Add the fixture's language columns to every shard and declare them in info.json."""
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    cameras = _cameras(info)
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        episodes = table["episode_index"].to_pylist()
        timestamps = [float(t) for t in table["timestamp"].to_pylist()]
        persistent: list[Rows] = []
        events: list[Rows] = []
        start = 0
        while start < len(episodes):
            stop = start
            while stop < len(episodes) and episodes[stop] == episodes[start]:
                stop += 1
            ep_persistent, ep_events = episode_rows(
                timestamps[start:stop], cameras, vqa_every=vqa_every, episode=episodes[start]
            )
            for frame in range(stop - start):
                persistent.append(ep_persistent)
                events.append(ep_events.get(frame, []))
            start = stop
        write_language(path, table, persistent, events)
    info["features"].pop(LEGACY_SUBTASK_COLUMN, None)
    for name in LANGUAGE_COLUMNS:
        info["features"][name] = dict(LANGUAGE_FEATURE)
    tools = info.setdefault("tools", [])
    if not any(t.get("function", {}).get("name") == "say" for t in tools):
        tools.append(SAY_TOOL)
    info_path.write_text(json.dumps(info, indent=4), encoding="utf-8")


def make_annotated_dataset(
    root: Path, *, episodes: int = 4, cameras: int = 2, vqa_every: int = 10, **sample: Any
) -> Path:
    """A sample dataset with the fixture's annotations; returns ``root``."""
    make_sample_dataset(root, episodes=episodes, cameras=cameras, **sample)
    annotate_in_place(root, vqa_every=vqa_every)
    return root


# --- broken copies -------------------------------------------------------------------------


def _first_shard(root: Path) -> Path:
    return sorted((root / "data").rglob("*.parquet"))[0]


def _edit_events(root: Path, edit: Callable[[list[Rows], list[Rows]], None]) -> None:
    path = _first_shard(root)
    table, persistent, events = read_language(path)
    edit(persistent, events)
    write_language(path, table, persistent, events)


def _break_column_type(root: Path) -> None:
    path = _first_shard(root)
    table = pq.read_table(path)
    as_text = pa.array([orjson.dumps(v).decode() for v in table[EVENTS_COLUMN].to_pylist()])
    index = table.column_names.index(EVENTS_COLUMN)
    pq.write_table(table.set_column(index, EVENTS_COLUMN, as_text), path)


def _move_interjection(persistent: list[Rows], events: list[Rows]) -> None:
    frame = next(i for i, rows in enumerate(events) if any(r.style == "interjection" for r in rows))
    moved = [r for r in events[frame] if r.style == "interjection"]
    events[frame] = [r for r in events[frame] if r.style != "interjection"]
    events[frame + 1] = sort_events([*events[frame + 1], *moved])


def _bad_speech(persistent: list[Rows], events: list[Rows]) -> None:
    bad = LanguageRow(
        "assistant", None, None, None, None, (say_tool_call("hi"), say_tool_call("x"))
    )
    events[0] = [bad if r.style is None else r for r in events[0]]


def _bad_vqa(persistent: list[Rows], events: list[Rows]) -> None:
    frame = next(i for i, rows in enumerate(events) if any(r.style == "vqa" for r in rows))
    events[frame] = [
        LanguageRow(r.role, '{"label": "object", "count": "three"}', r.style, None, r.camera, None)
        if r.style == "vqa" and r.role == "assistant"
        else r
        for r in events[frame]
    ]


def _vqa_outside_frame(persistent: list[Rows], events: list[Rows]) -> None:
    """On the first vqa frame: a box past the right edge of the 96x72 frame (first camera)
    and a box with x1 > x2 (second camera)."""
    boxes = iter([[10, 10, 200, 20], [40, 10, 30, 20]])
    frame = next(i for i, rows in enumerate(events) if any(r.style == "vqa" for r in rows))

    def moved(row: LanguageRow) -> LanguageRow:
        if row.style != "vqa" or row.role != "assistant":
            return row
        detection = {"label": "object", "bbox_format": "xyxy", "bbox": next(boxes)}
        content = orjson.dumps({"detections": [detection]}).decode()
        return LanguageRow(row.role, content, "vqa", None, row.camera, None)

    events[frame] = [moved(r) for r in events[frame]]


def _off_frame_persistent(persistent: list[Rows], events: list[Rows]) -> None:
    episode_rows_ = persistent[0]
    extra = _p("motion", (episode_rows_[0].timestamp or 0.0) + 0.0123, "move slowly")
    fixed = sort_persistent([*episode_rows_, extra])
    for i, rows in enumerate(persistent):
        if rows == episode_rows_:
            persistent[i] = fixed


def _drop_info_features(root: Path) -> None:
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    for name in LANGUAGE_COLUMNS:
        info["features"].pop(name, None)
    info.pop("tools", None)
    info_path.write_text(json.dumps(info, indent=4), encoding="utf-8")


def _vary_persistent(persistent: list[Rows], events: list[Rows]) -> None:
    persistent[1] = persistent[1][1:]  # the second frame lost a row the first frame has


def _declare_legacy(root: Path) -> None:
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["features"][LEGACY_SUBTASK_COLUMN] = {"dtype": "int64", "shape": [1], "names": None}
    info_path.write_text(json.dumps(info, indent=4), encoding="utf-8")


BREAKAGES: dict[str, Callable[[Path], None]] = {
    "persistent_not_constant": lambda root: _edit_events(root, _vary_persistent),
    "legacy_subtask_index": _declare_legacy,
    "column_type": _break_column_type,
    "event_off_frame": lambda root: _edit_events(root, _move_interjection),
    "speech_atom": lambda root: _edit_events(root, _bad_speech),
    "vqa_shape": lambda root: _edit_events(root, _bad_vqa),
    "vqa_out_of_frame": lambda root: _edit_events(root, _vqa_outside_frame),
    "persistent_off_frame": lambda root: _edit_events(root, _off_frame_persistent),
    "info_features": _drop_info_features,
}


def break_dataset(source: Path, target: Path, kind: str) -> Path:
    """Copy ``source`` to ``target`` and damage the copy in the way named by ``kind``."""
    shutil.copytree(source, target)
    BREAKAGES[kind](target)
    return target
