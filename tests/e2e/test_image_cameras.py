"""Cameras stored as images (``dtype: image``, PNG frames embedded in the data files, as LeRobot
writes them) are annotated like video cameras: VQA per camera, and pictures in the plan's
prompts when an image camera is the dataset's first camera."""

from __future__ import annotations

from pathlib import Path

import pytest

from narrator.common.dataset.language import read_file_language
from narrator.common.dataset.reader import load_dataset_meta
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.local.run import annotate
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import pipeline_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.fleet(2)]


def _images_sent(fleet: Fleet) -> int:
    return sum(int(fleet.stats(i)["images"]) for i in range(len(fleet.urls)))


def _vqa_cameras(root: Path) -> dict[int, set[str]]:
    meta = load_dataset_meta(root)
    out: dict[int, set[str]] = {}
    for data_file in meta.files:
        for episode, lang in read_file_language(meta, data_file).items():
            out[episode] = {
                r.camera or ""
                for rows in lang.events_by_frame.values()
                for r in rows
                if r.style == "vqa"
            }
    return out


def test_an_image_camera_gets_vqa_like_a_video_camera(
    tmp_path: Path, fleet: Fleet, redis_url: str
) -> None:
    root = make_sample_dataset(
        tmp_path / "dataset", episodes=3, cameras=1, image_cameras=1, episodes_per_file=2
    )
    meta = load_dataset_meta(root)
    assert [(c.key, c.dtype) for c in meta.cameras] == [
        ("observation.images.top", "video"),
        ("observation.images.wrist", "image"),
    ]
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "state")
    assert annotate(config, root, progress=False).exit_code == 0
    cameras = _vqa_cameras(root)
    assert sorted(cameras) == [0, 1, 2]
    for episode, seen in cameras.items():
        assert seen == {"observation.images.top", "observation.images.wrist"}, episode
    report = check_annotated_dataset(root)
    assert report.ok and report.warnings == 0, report.findings[:5]


def test_a_dataset_of_image_cameras_only_sends_pictures_to_every_module(
    tmp_path: Path, fleet: Fleet, redis_url: str
) -> None:
    root = make_sample_dataset(
        tmp_path / "dataset", episodes=2, cameras=0, image_cameras=1, episodes_per_file=2
    )
    fleet.reset()
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "state")
    assert annotate(config, root, progress=False).exit_code == 0
    by_schema: dict[str, int] = {}
    for i in range(len(fleet.urls)):
        for schema, n in fleet.stats(i)["by_schema"].items():
            by_schema[schema.split("_", 1)[0]] = by_schema.get(schema.split("_", 1)[0], 0) + n
    assert set(by_schema) == {"plan", "interjections", "vqa"}
    # One image per vqa request; the subtask requests of the plan carry the rest.
    assert _images_sent(fleet) > by_schema["vqa"] > 0
    assert all(seen == {"observation.images.top"} for seen in _vqa_cameras(root).values())
    assert check_annotated_dataset(root).ok
