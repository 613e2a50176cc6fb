"""The annotation options through the whole path (producer, Redis/rq, workers over HTTP to the
simulated VLM, writer): a dataset with a depth camera and placeholder tasks annotated with
seeded relabelling on, and one with ``--no-plan --no-memory``; a camera setting the dataset
cannot satisfy is refused before any job runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from narrator.common.contract import EVENTS_COLUMN, PERSISTENT_COLUMN
from narrator.common.errors import ConfigError
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.local.run import annotate
from narrator.ops.status import read_status
from narrator.samples.dataset import DEPTH_CAMERA, PLACEHOLDER_TASKS, make_sample_dataset
from narrator.simulator.fleet import Fleet
from narrator.workers.modules.answers import numbered
from tests.support.pipeline_support import file_hashes, pipeline_config, read_shards

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.fleet(2)]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("orig") / "dataset"
    make_sample_dataset(
        root,
        episodes=4,
        cameras=1,
        depth_camera=True,
        placeholder_tasks=True,
        episodes_per_file=2,
        min_length=60,
    )
    return root


def _run(
    original: Path, fleet: Fleet, redis_url: str, work: Path, annotation: dict[str, Any]
) -> tuple[Path, str]:
    root = work / "dataset"
    shutil.copytree(original, root)
    redis.Redis.from_url(redis_url).flushall()
    config = pipeline_config(
        fleet.urls, redis_url=redis_url, state_dir=work / "state", annotation=annotation
    )
    result = annotate(config, root, progress=False)
    assert result.exit_code == 0, result.status
    return root, result.run_id


def _episodes(
    root: Path,
) -> dict[int, tuple[list[dict[str, Any]], dict[float, list[dict[str, Any]]]]]:
    """episode -> (its persistent list, timestamp -> the events on that frame)."""
    out: dict[int, tuple[list[dict[str, Any]], dict[float, list[dict[str, Any]]]]] = {}
    for _, table in read_shards(root):
        columns = zip(
            table.column("episode_index").to_pylist(),
            table.column("timestamp").to_pylist(),
            table.column(PERSISTENT_COLUMN).to_pylist(),
            table.column(EVENTS_COLUMN).to_pylist(),
            strict=True,
        )
        for ep, t, persistent, events in columns:
            entry = out.setdefault(ep, (persistent, {}))
            if events:
                entry[1][t] = events
    return out


def test_depth_placeholders_and_relabel(
    original: Path, fleet: Fleet, redis_server: Any, tmp_path: Path
) -> None:
    plan = {"subtask_seeded_relabel": True, "derive_task_from_video": "if_short"}
    interjections = {"max_interjections": 2, "interjection_min_s": 0.0}
    root, run_id = _run(
        original,
        fleet,
        redis_server.url,
        tmp_path,
        {"plan": plan, "interjections": interjections},
    )
    assert check_annotated_dataset(root).ok
    before = file_hashes(original)
    assert file_hashes(root)["meta/tasks.parquet"] == before["meta/tasks.parquet"]
    interjected = 0
    for ep, (persistent, events) in _episodes(root).items():
        task_augs = [r["content"] for r in persistent if r["style"] == "task_aug"]
        assert task_augs[0] not in PLACEHOLDER_TASKS, (ep, "a task derived from the video")
        subtasks = [r for r in persistent if r["style"] == "subtask"]
        plans = {r["timestamp"]: r["content"] for r in persistent if r["style"] == "plan"}
        interjection_times = {
            t for t, rows in events.items() if any(r["style"] == "interjection" for r in rows)
        }
        assert set(plans) == {r["timestamp"] for r in subtasks}, "a plan at every subtask start"
        labels = [r["content"] for r in subtasks]
        for i, row in enumerate(subtasks):
            if row["timestamp"] not in interjection_times:
                assert plans[row["timestamp"]] == numbered(labels[i:])
        interjected += len(interjection_times)
        cameras = {r["camera"] for rows in events.values() for r in rows if r["style"] == "vqa"}
        assert cameras == {"observation.images.top"}, "no prompt on the depth camera"
    assert interjected > 0, "some refreshed plans were checked"
    counters = read_status(redis.Redis.from_url(redis_server.url), run_id).counters
    assert counters.get("plan:requests", 0) > 0


def test_no_plan_and_no_memory(
    original: Path, fleet: Fleet, redis_server: Any, tmp_path: Path
) -> None:
    annotation = {
        "plan": {"emit_plan": False, "emit_memory": False},
        "interjections": {"max_interjections": 2, "interjection_min_s": 0.0},
    }
    root, _ = _run(original, fleet, redis_server.url, tmp_path, annotation)
    assert check_annotated_dataset(root).ok
    episodes = _episodes(root)
    styles = {r["style"] for persistent, _ in episodes.values() for r in persistent}
    assert "plan" not in styles and "memory" not in styles and "subtask" in styles
    interjections = [
        r for _, events in episodes.values() for rows in events.values() for r in rows
        if r["style"] == "interjection"
    ]  # fmt: skip
    assert interjections, "interjections are written without their plan rows"


def test_a_depth_camera_named_for_prompts_is_refused_before_any_job(
    original: Path, fleet: Fleet, redis_server: Any, tmp_path: Path
) -> None:
    root = tmp_path / "dataset"
    shutil.copytree(original, root)
    config = pipeline_config(
        fleet.urls,
        redis_url=redis_server.url,
        state_dir=tmp_path / "state",
        annotation={"plan": {"camera": "depth"}},
    )
    with pytest.raises(ConfigError, match=f"--camera names {DEPTH_CAMERA}, a depth camera"):
        annotate(config, root, progress=False)
    assert file_hashes(root) == file_hashes(original)
