"""A video whose frames are larger than ``meta/info.json`` declares (192x144 stored, 96x72
declared): the stored size is used for every coordinate, the worker warns once, and
``narrator validate`` reports the mismatch (camera and both sizes) and checks VQA boxes and
points against the frames as stored."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from narrator.common.dataset.language import read_file_language
from narrator.common.dataset.reader import load_dataset_meta
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.local.run import annotate
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import pipeline_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _coordinates(root: Path) -> list[tuple[str, list[float]]]:
    meta = load_dataset_meta(root)
    found: list[tuple[str, list[float]]] = []
    for data_file in meta.files:
        for lang in read_file_language(meta, data_file).values():
            for rows in lang.events_by_frame.values():
                for row in rows:
                    if row.style != "vqa" or row.role != "assistant" or row.content is None:
                        continue
                    answer = orjson.loads(row.content)
                    for det in answer.get("detections", []):
                        found.append(("bbox", det["bbox"]))
                    if "point" in answer:
                        found.append(("point", answer["point"]))
    return found


def test_frames_larger_than_declared_use_the_stored_size_and_validate_says_so(
    tmp_path: Path, fleet: Fleet, redis_url: str
) -> None:
    root = make_sample_dataset(
        tmp_path / "dataset", episodes=3, cameras=1, width=192, height=144, min_length=40
    )
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["features"]["observation.images.top"]["shape"] = [72, 96, 3]
    info_path.write_text(json.dumps(info, indent=4), encoding="utf-8")
    state = tmp_path / "state"
    config = pipeline_config(
        fleet.urls,
        redis_url=redis_url,
        state_dir=state,
        annotation={"vqa": {"vqa_hz": 2.0, "question_types": ["bbox", "keypoint"]}},
    )
    assert annotate(config, root, progress=False).exit_code == 0

    coordinates = _coordinates(root)
    assert coordinates
    xs = [x for kind, c in coordinates for x in (c[0::2] if kind == "bbox" else c[:1])]
    ys = [y for kind, c in coordinates for y in (c[1::2] if kind == "bbox" else c[1:])]
    assert max(xs) <= 192 and max(ys) <= 144
    assert max(xs) > 96 or max(ys) > 72  # the stored size, not the declared one

    report = check_annotated_dataset(root)
    assert report.ok, report.findings[:5]
    mismatch = [f for f in report.findings if f.rule == "frame_size_mismatch"]
    assert len(mismatch) == 1, report.findings
    assert mismatch[0].severity == "warning"
    message = mismatch[0].message
    assert "observation.images.top" in message and "96x72" in message and "192x144" in message
    assert [f.rule for f in report.findings] == ["frame_size_mismatch"]

    worker_log = (state / "logs" / "worker.log").read_text()
    assert "frame_size_mismatch" in worker_log
