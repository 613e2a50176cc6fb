"""The simulated VLM answers VQA from the pixels it receives: boxes on the sample objects."""

from __future__ import annotations

import base64
import io
import random
from collections import Counter
from typing import Any

import aiohttp
import jsonschema
import numpy as np
import orjson
import pytest
from PIL import Image

from narrator.samples.dataset import TASKS
from narrator.samples.scene import SCENES, layout, scene_for_task, scene_for_text
from narrator.samples.video import CODE_BAND_ROWS, PROGRESS_BAR_ROWS, scene_frame
from narrator.simulator import start_fleet_async
from narrator.simulator.vision import find_objects, vqa_answer
from narrator.workers.modules.schemas import vqa_schema

BAND = 2 * CODE_BAND_ROWS


def jpeg_roundtrip(image: np.ndarray, quality: int = 85) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def truth(task: int, width: int, height: int, progress: float, camera: int) -> list[Any]:
    """The objects as painted, each with the box of its *visible* pixels (the arm and later
    objects hide parts of earlier ones), mirrored for odd cameras like the frames."""
    placed = layout(scene_for_task(task), width, height, BAND, PROGRESS_BAR_ROWS, progress)
    owner = np.full((height, width), -1)
    for index, item in enumerate(placed):
        x1, y1, x2, y2 = item.box
        owner[y1:y2, x1:x2] = index
    if camera % 2:
        owner[BAND:] = owner[BAND:, ::-1]
    visible = []
    for index, item in enumerate(placed):
        ys, xs = np.nonzero(owner == index)
        if item.label in ("arm", "gripper") or len(xs) == 0:
            continue
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        visible.append(type(item)(item.label, item.colour, box))
    return visible


def iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union else 0.0


def test_every_sample_task_has_a_scene_and_the_prompt_names_it() -> None:
    assert tuple(s.task for s in SCENES) == TASKS[: len(SCENES)]
    for scene in SCENES:
        prompt = f'Task the robot is doing: "{scene.task}"\nAsk one question.'
        assert scene_for_text(prompt) is scene
        colours = Counter(o.colour for o in scene.objects)
        labels = {o.colour: o.label for o in scene.objects}
        assert len(labels) == len(colours), "one label per colour within a scene"
    assert scene_for_text("Task: fold the towel") is None


@pytest.mark.parametrize(("width", "height"), [(96, 72), (320, 240)])
@pytest.mark.parametrize("task", range(len(SCENES)))
def test_objects_are_found_where_the_scene_put_them(task: int, width: int, height: int) -> None:
    scene = scene_for_task(task)
    for progress, camera in ((0.0, 0), (0.5, 1), (1.0, 0)):
        frame = scene_frame(
            width,
            height,
            file_frame=7,
            episode=3,
            progress=progress,
            task_index=task,
            camera=camera,
        )
        seen = find_objects(jpeg_roundtrip(frame), scene.labels())
        expected = truth(task, width, height, progress, camera)
        assert sorted(s.label for s in seen) == sorted(p.label for p in expected)
        for item in seen:
            best = max(iou(item.box, p.box) for p in expected if p.label == item.label)
            assert best > 0.5, (item, expected)


def test_an_image_without_sample_objects_has_none() -> None:
    grey = np.full((72, 96, 3), 120, dtype=np.uint8)
    assert find_objects(grey) == []
    assert vqa_answer(vqa_schema("bbox", 96, 72), grey, random.Random(0)) is None


def _answers(task: int, qtype: str, camera: int = 0) -> list[dict[str, Any]]:
    scene = scene_for_task(task)
    frame = jpeg_roundtrip(
        scene_frame(160, 120, file_frame=0, episode=0, progress=0.0, task_index=task, camera=camera)
    )
    schema = vqa_schema(qtype, 160, 120)
    prompt = f'Task the robot is doing: "{scene.task}"'
    out = []
    for seed in range(12):
        answer = vqa_answer(schema, frame, random.Random(seed), prompt)
        assert answer is not None
        jsonschema.validate(answer, schema)
        out.append(answer)
    return out


def test_bbox_answers_box_the_object_the_question_names() -> None:
    expected = truth(0, 160, 120, 0.0, 0)
    for answer in _answers(0, "bbox"):
        detections = answer["answer"]["detections"]
        label = detections[0]["label"]
        assert label.split()[-1] in answer["question"]
        assert all(d["label"] == label for d in detections)
        boxes = [p.box for p in expected if p.label == label]
        assert len(detections) == len(boxes)
        for detection in detections:
            assert max(iou(tuple(detection["bbox"]), b) for b in boxes) > 0.5


def test_counts_points_colours_and_relations_match_the_image() -> None:
    expected = truth(4, 160, 120, 0.0, 0)  # a yellow button and three green blocks
    counts = Counter(p.label for p in expected)
    for answer in _answers(4, "count"):
        label = answer["answer"]["label"]
        assert answer["answer"]["count"] == counts[label]
        assert label.split()[-1] in answer["question"]
    for answer in _answers(4, "keypoint"):
        x, y = answer["answer"]["point"]
        label = answer["answer"]["label"]
        assert any(
            p.box[0] <= x < p.box[2] and p.box[1] <= y < p.box[3]
            for p in expected
            if p.label == label
        )
    colours = {
        p.label: name for p in expected for name in ("yellow", "green") if p.label.startswith(name)
    }
    for answer in _answers(4, "attribute"):
        noun = answer["answer"]["label"]
        assert answer["answer"]["attribute"] == "colour" and noun in answer["question"]
        assert colours[f"{answer['answer']['value']} {noun}"]
    centres = {
        p.label: ((p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2)
        for p in truth(2, 160, 120, 0.0, 0)
    }
    for answer in _answers(2, "spatial"):
        subject, relation, other = (answer["answer"][k] for k in ("subject", "relation", "object"))
        assert subject in answer["question"] and other in answer["question"]
        (sx, sy), (ox, oy) = centres[subject], centres[other]
        expected_relation = (
            ("left_of" if sx < ox else "right_of")
            if abs(sx - ox) >= abs(sy - oy)
            else ("above" if sy < oy else "below")
        )
        assert relation == expected_relation


def test_the_mirrored_camera_sees_left_and_right_swapped() -> None:
    for answer in _answers(2, "spatial", camera=1):
        if answer["answer"]["relation"] in ("left_of", "right_of"):
            subject, other = answer["answer"]["subject"], answer["answer"]["object"]
            centres = {p.label: p.box[0] for p in truth(2, 160, 120, 0.0, 1)}
            assert (answer["answer"]["relation"] == "left_of") == (
                centres[subject] < centres[other]
            )


def test_unknown_task_labels_objects_by_colour() -> None:
    frame = jpeg_roundtrip(
        scene_frame(96, 72, file_frame=0, episode=0, progress=0, task_index=0, camera=0)
    )
    answer = vqa_answer(
        vqa_schema("bbox", 96, 72), frame, random.Random(1), "Task: sort the laundry"
    )
    assert answer is not None
    assert answer["answer"]["detections"][0]["label"].endswith(" object")


def _request(task: int, qtype: str, width: int = 96, height: int = 72) -> dict[str, Any]:
    frame = scene_frame(
        width, height, file_frame=0, episode=0, progress=0.0, task_index=task, camera=0
    )
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=85)
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [
        {"type": "text", "text": f'Task the robot is doing: "{scene_for_task(task).task}"'},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    schema = vqa_schema(qtype, width, height)
    return {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 512,
        "seed": 5,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": f"vqa_{qtype}", "schema": schema, "strict": True},
        },
    }


async def _content(url: str, body: dict[str, Any]) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        return str((await response.json())["choices"][0]["message"]["content"])


async def test_the_server_answers_vqa_from_the_image_and_keeps_its_faults() -> None:
    async with await start_fleet_async(1) as fleet:
        url = fleet.urls[0]
        body = _request(0, "bbox")
        answer = orjson.loads(await _content(url, body))
        jsonschema.validate(answer, body["response_format"]["json_schema"]["schema"])
        boxes = {p.label: p.box for p in truth(0, 96, 72, 0.0, 0)}
        for detection in answer["answer"]["detections"]:
            assert (
                iou(tuple(detection["bbox"]), boxes[detection["label"]]) > 0.5
                or detection["label"] == "green block"
            )
        fleet.set_faults(0, ignore_schema=True)
        loose = orjson.loads(await _content(url, body))
        assert "confidence_note" in loose and loose["answer"] == answer["answer"]
        fleet.set_faults(0, ignore_schema=False, wrong_shape_rate=1.0)
        assert "question" not in orjson.loads(await _content(url, body))
        fleet.set_faults(0, wrong_shape_rate=0.0, fences=True, think_tags=True)
        wrapped = await _content(url, body)
        assert wrapped.startswith("<think>") and "```json" in wrapped


async def test_plans_name_the_objects_of_the_task_scene() -> None:
    from narrator.workers.modules.schemas import subtasks_schema

    scene = scene_for_task(3)  # wipe the table with the sponge
    labels = {o.label for o in scene.objects}
    schema = subtasks_schema(8, 4)
    body = {
        "messages": [{"role": "user", "content": f'Task given to the robot: "{scene.task}"'}],
        "max_tokens": 512,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "plan_subtasks", "schema": schema, "strict": True},
        },
    }
    async with await start_fleet_async(1) as fleet:
        named = []
        for seed in range(6):
            answer = orjson.loads(await _content(fleet.urls[0], {**body, "seed": seed}))
            jsonschema.validate(answer, schema)
            named += [any(label in s["label"] for label in labels) for s in answer["subtasks"]]
    assert named and all(named)
