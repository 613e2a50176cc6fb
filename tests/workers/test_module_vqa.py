"""The vqa module: tick snapping, seeded question types, coordinate mapping and answer parsing
(pure), and whole episodes against the simulated VLM fleet over real HTTP."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from narrator.common.config import AnnotationSettings, VQASettings
from narrator.common.validation import vqa_answer_problem
from narrator.workers.modules.coordinates import ImageGeometry, map_box, map_point
from narrator.workers.modules.schemas import vqa_schema
from narrator.workers.modules.ticks import nearest_frames, tick_frames, tick_times
from narrator.workers.modules.vqa import question_type_for, run_vqa
from narrator.workers.modules.vqa_answers import answer_text, parse_vqa_answer
from tests.support.module_support import (
    PillowFrameSource,
    contract_findings,
    errors,
    make_context,
    sim_client,
)

CAMERAS = ("observation.images.top", "observation.images.wrist")

# --- ticks ---------------------------------------------------------------------------------


def test_tick_times_and_frames_regular() -> None:
    assert tick_times(11.9, 0.5) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert tick_times(4.0, 0.5) == [0.0, 2.0, 4.0]
    stamps = (np.arange(120) / 10.0).astype(np.float32)
    assert tick_frames(stamps, 0.5) == [0, 20, 40, 60, 80, 100]


def test_ticks_snap_to_nearest_stored_timestamp_distinct() -> None:
    stamps = np.array([0.0, 0.26, 0.49, 0.77, 1.02, 1.24], dtype=np.float32)
    assert nearest_frames(stamps, [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]) == [0, 1, 2, 3, 4, 5]
    # ticks faster than frames hit each frame once
    assert tick_frames(stamps, 100.0) == [0, 1, 2, 3, 4, 5]
    # exactly between two frames: the earlier one
    assert nearest_frames(np.array([0.0, 1.0], dtype=np.float32), [0.5]) == [0]


def test_tick_frames_are_nearest_over_random_episodes() -> None:
    rng = random.Random(5)
    for _case in range(200):
        n = rng.randint(1, 300)
        steps = [rng.uniform(0.01, 0.2) for _ in range(n - 1)]
        stamps = np.concatenate([[0.0], np.cumsum(steps)]).astype(np.float32)
        hz = rng.choice([0.2, 0.5, 1.0, 3.0, 50.0])
        frames = tick_frames(stamps, hz)
        assert frames == sorted(set(frames)) and frames[0] == 0
        assert all(0 <= f < n for f in frames)
        for t in tick_times(float(stamps[-1]), hz):
            best = float(np.min(np.abs(stamps.astype(np.float64) - t)))
            assert any(abs(float(stamps[f]) - t) <= best + 1e-9 for f in frames)


# --- seeded question types -------------------------------------------------------------------


def test_question_types_are_seeded_and_stay_in_the_configured_set() -> None:
    types = ("count", "spatial")
    settings = AnnotationSettings(vqa=VQASettings(question_types=types), seed=1)
    ctx = make_context(settings=settings)
    drawn = [question_type_for(ctx, CAMERAS[0], f) for f in range(200)]
    assert drawn == [question_type_for(ctx, CAMERAS[0], f) for f in range(200)]
    assert set(drawn) == set(types)
    other = make_context(settings=AnnotationSettings(vqa=VQASettings(question_types=types)))
    assert drawn != [question_type_for(other, CAMERAS[0], f) for f in range(200)]


# --- coordinates -----------------------------------------------------------------------------

GEOMETRY = ImageGeometry(sent_width=160, sent_height=120, stored_width=640, stored_height=480)


def test_boxes_scale_to_stored_pixels_and_clip() -> None:
    assert map_box([10, 20, 40, 60], GEOMETRY) == (40, 80, 160, 240)
    assert map_box([150, 100, 170, 130], GEOMETRY) == (600, 400, 640, 480)
    assert map_box([40, 20, 10, 60], GEOMETRY) is None, "x2 <= x1"
    assert map_box([10, 60, 40, 60], GEOMETRY) is None, "y2 <= y1"
    assert map_box([170, 10, 190, 30], GEOMETRY) is None, "empty after clipping"


def test_points_scale_clip_or_reject() -> None:
    assert map_point([80, 60], GEOMETRY) == (320, 240)
    assert map_point([160, 120], GEOMETRY) == (639, 479), "on the far edge: last pixel"
    assert map_point([163, 60], GEOMETRY) == (639, 240), "slightly outside: clipped"
    assert map_point([200, 60], GEOMETRY) is None, "far outside: rejected"
    assert map_point([80, -20], GEOMETRY) is None


def test_random_coordinates_always_land_inside_the_stored_image() -> None:
    rng = random.Random(11)
    for _case in range(500):
        g = ImageGeometry(
            rng.randint(16, 500), rng.randint(16, 500), rng.randint(16, 2000), rng.randint(16, 2000)
        )
        box = [rng.uniform(-50, 600) for _ in range(4)]
        mapped = map_box(box, g)
        if mapped is not None:
            x1, y1, x2, y2 = mapped
            assert 0 <= x1 < x2 <= g.stored_width and 0 <= y1 < y2 <= g.stored_height
        point = map_point([rng.uniform(-50, 600), rng.uniform(-50, 600)], g)
        if point is not None:
            assert 0 <= point[0] < g.stored_width and 0 <= point[1] < g.stored_height


# --- answer parsing --------------------------------------------------------------------------

GOOD = {
    "bbox": {
        "detections": [
            {"label": "cup", "bbox_format": "xyxy", "bbox": [10, 20, 40, 60]},
            {"label": "ghost", "bbox_format": "xyxy", "bbox": [50, 50, 50, 70]},
        ]
    },
    "keypoint": {"label": "handle", "point_format": "xy", "point": [80, 60]},
    "count": {"label": "cups", "count": 3},
    "attribute": {"label": "cup", "attribute": "colour", "value": "red"},
    "spatial": {"subject": "cup", "relation": "on", "object": "tray"},
}


@pytest.mark.parametrize("qtype", sorted(GOOD))
def test_parsed_answers_have_the_exact_shape_in_order(qtype: str) -> None:
    reordered = dict(reversed(list(GOOD[qtype].items())))
    parsed = parse_vqa_answer(qtype, {"answer": reordered, "question": " Where? "}, GEOMETRY)
    assert parsed.question == "Where?"
    text = answer_text(parsed.answer)
    assert vqa_answer_problem(text, qtype) is None
    assert list(orjson.loads(text)) == list(GOOD[qtype]), "keys in the shape's order"
    assert " " not in text.replace("colour", "").replace(": ", ""), "compact JSON"
    for other in GOOD:
        if other != qtype:
            with pytest.raises(ValueError):
                parse_vqa_answer(other, {"question": "q?", "answer": GOOD[qtype]}, GEOMETRY)


def test_bbox_answer_maps_and_drops_empty_boxes() -> None:
    parsed = parse_vqa_answer("bbox", {"question": "Where?", "answer": GOOD["bbox"]}, GEOMETRY)
    assert parsed.answer == {
        "detections": [{"label": "cup", "bbox_format": "xyxy", "bbox": [40, 80, 160, 240]}]
    }
    only_empty = {"detections": [GOOD["bbox"]["detections"][1]]}
    with pytest.raises(ValueError, match="every box is empty"):
        parse_vqa_answer("bbox", {"question": "Where?", "answer": only_empty}, GEOMETRY)


@pytest.mark.parametrize(
    ("qtype", "answer"),
    [
        ("count", {"label": "cups", "count": -1}),
        ("count", {"label": "cups", "count": True}),
        ("count", {"label": "", "count": 2}),
        ("spatial", {"subject": "cup", "relation": "inside", "object": "tray"}),
        ("keypoint", {"label": "x", "point_format": "yx", "point": [1, 2]}),
        ("keypoint", {"label": "x", "point_format": "xy", "point": [1, 2, 3]}),
        ("keypoint", {"label": "x", "point_format": "xy", "point": [900, 20]}),
        ("bbox", {"detections": []}),
        ("bbox", {"detections": [{"label": "c", "bbox_format": "xywh", "bbox": [1, 2, 3, 4]}]}),
        ("attribute", {"label": "cup", "attribute": "colour"}),
    ],
)
def test_wrong_answers_are_rejected(qtype: str, answer: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_vqa_answer(qtype, {"question": "What?", "answer": answer}, GEOMETRY)
    with pytest.raises(ValueError, match="question"):
        parse_vqa_answer(qtype, {"question": " ", "answer": GOOD[qtype]}, GEOMETRY)


def test_vqa_schema_bounds_coordinates_by_the_sent_image() -> None:
    schema = vqa_schema("bbox", 160, 120)
    bbox = schema["properties"]["answer"]["properties"]["detections"]["items"]["properties"]
    bounds = [item["maximum"] for item in bbox["bbox"]["prefixItems"]]
    assert bounds == [160, 120, 160, 120]
    assert schema["required"] == ["question", "answer"]


# --- whole episodes against the simulated fleet ----------------------------------------------


async def test_run_vqa_two_cameras_against_simulated_fleet() -> None:
    source = PillowFrameSource(stored=(320, 240), sent=(160, 120))
    settings = AnnotationSettings(vqa=VQASettings(vqa_hz=0.5))
    ctx = make_context(n_frames=120, cameras=CAMERAS, settings=settings, frame_source=source)
    async with sim_client() as (fleet, client):
        out = await run_vqa(ctx, client)
        first_calls = list(source.calls)
        again = await run_vqa(ctx, client)
        stats = [fleet.stats(i) for i in range(2)]
    ticks = tick_frames(ctx.frames.timestamp, 0.5)
    assert ticks == [0, 20, 40, 60, 80, 100]
    assert sorted(first_calls) == sorted((cam, tuple(ticks)) for cam in CAMERAS)
    asked = {(q["frame"], q["camera"]): q["type"] for q in out.extra["question_types"]}
    assert len(out.rows) == 2 * len(asked)
    assert len(asked) + len(out.failures) == len(ticks) * len(CAMERAS)
    assert len(asked) >= len(ticks), "most items answer on a well-behaved server"
    seen: set[tuple[int, str, str]] = set()
    for row in out.rows:
        assert row.column == "events" and row.style == "vqa"
        assert row.camera in CAMERAS and row.frame in ticks
        assert row.content and row.tool_calls is None
        key = (row.frame, row.camera, row.role)
        assert key not in seen, "one user and one assistant row per (frame, camera)"
        seen.add(key)
        qtype = asked[(row.frame, row.camera)]
        assert qtype == question_type_for(ctx, row.camera, row.frame)
        if row.role == "assistant":
            assert vqa_answer_problem(row.content, qtype) is None
            _assert_inside(orjson.loads(row.content), 320, 240)
    assert not errors(contract_findings(ctx, "vqa", out.rows, asked))
    assert again.rows == out.rows, "same seeds, same answers"
    by_schema: dict[str, int] = {}
    for stat in stats:
        for name, count in stat["by_schema"].items():
            by_schema[name] = by_schema.get(name, 0) + count
    assert set(by_schema) <= {f"vqa_{t}" for t in GOOD}
    assert sum(by_schema.values()) >= 2 * len(ticks) * len(CAMERAS), "two runs, one per item"


def _assert_inside(answer: dict[str, object], width: int, height: int) -> None:
    points: list[list[float]] = []
    if "detections" in answer:
        for det in answer["detections"]:  # type: ignore[attr-defined]
            x1, y1, x2, y2 = det["bbox"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    if "point" in answer:
        points.append(answer["point"])  # type: ignore[arg-type]
    for x, y in points:
        assert 0 <= x < width and 0 <= y < height


async def test_run_vqa_without_cameras_asks_nothing() -> None:
    ctx = make_context(cameras=())
    async with sim_client(replicas=1) as (fleet, client):
        out = await run_vqa(ctx, client)
        stats = fleet.stats(0)
    assert out.rows == [] and out.failures == []
    assert stats["requests_total"] == 0


async def test_unusable_answers_are_item_failures_and_the_rest_goes_on() -> None:
    settings = AnnotationSettings(vqa=VQASettings(vqa_hz=0.5))
    ctx = make_context(n_frames=600, cameras=CAMERAS, settings=settings)
    ticks = tick_frames(ctx.frames.timestamp, 0.5)
    async with sim_client(replicas=2) as (fleet, client):
        for i in range(2):
            fleet.set_faults(i, wrong_shape_rate=0.5)
        out = await run_vqa(ctx, client)
        for i in range(2):
            fleet.set_faults(i, wrong_shape_rate=1.0)
        dead = await run_vqa(ctx, client)
    items = len(ticks) * len(CAMERAS)
    answered = len(out.extra["question_types"])
    # each item fails only if its answer and the corrective retry are both wrong (p = 1/4)
    assert 0 < len(out.failures) < items and answered + len(out.failures) == items
    assert len(out.rows) == 2 * answered
    assert not errors(contract_findings(ctx, "vqa", out.rows))
    assert dead.rows == [] and len(dead.failures) == items
    for failure in dead.failures:
        assert failure.module == "vqa" and failure.kind == "BadAnswerError"
        assert failure.episode == ctx.episode.index
        camera, frame, qtype = failure.item.rsplit(":", 2)
        assert camera in CAMERAS and int(frame) in ticks and qtype in GOOD
