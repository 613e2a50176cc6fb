"""The whole path, for real: a LeRobot v3 dataset through the producer, Redis/rq, async
workers talking HTTP to the simulated VLM, staged rows, and the writer; the output checked
frame by frame against docs/CONTRACT.md §2 and read back with pyarrow and `datasets`."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from narrator.common import keys
from narrator.common.contract import (
    CAMERA_STYLES,
    EVENT_STYLES,
    EVENTS_COLUMN,
    EVENTS_COLUMN_TYPE,
    LANGUAGE_FEATURE,
    PERSISTENT_COLUMN,
    PERSISTENT_COLUMN_TYPE,
    PERSISTENT_STYLES,
    SAY_TOOL,
    event_sort_key,
    persistent_sort_key,
    row_from_dict,
    speech_text,
)
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.prompts import load_prompts
from narrator.common.runs import load_run
from narrator.local.run import annotate
from narrator.producer.enqueue import enqueue_run
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import file_hashes, info_json, pipeline_config, read_shards

pytestmark = [pytest.mark.timeout(300), pytest.mark.fleet(2)]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("orig") / "dataset"
    make_sample_dataset(
        root,
        episodes=8,
        cameras=2,
        episodes_per_file=3,
        chunks_size=2,
        with_legacy_subtask_index=True,
    )
    return root


@pytest.fixture(scope="module")
def annotated(
    original: Path,
    fleet: Fleet,
    redis_server: object,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str, str]:
    work = tmp_path_factory.mktemp("run")
    root = work / "dataset"
    shutil.copytree(original, root)
    url = redis_server.url  # type: ignore[attr-defined]
    redis.Redis.from_url(url).flushall()
    fleet.reset()
    result = annotate(
        pipeline_config(fleet.urls, redis_url=url, state_dir=work / "state"), root, progress=False
    )
    assert result.exit_code == 0, result.status
    return root, result.run_id, url


def test_dataset_layout_is_multi_file_and_multi_chunk(original: Path) -> None:
    meta = load_dataset_meta(original)
    assert len(meta.files) >= 3
    assert len({f.split("/")[1] for f in meta.files}) >= 2  # chunks
    assert len(meta.cameras) == 2


def test_columns_have_exactly_the_declared_types(annotated: tuple[Path, str, str]) -> None:
    root, _, _ = annotated
    for name, table in read_shards(root):
        assert table.schema.field(PERSISTENT_COLUMN).type == PERSISTENT_COLUMN_TYPE, name
        assert table.schema.field(EVENTS_COLUMN).type == EVENTS_COLUMN_TYPE, name
        assert "subtask_index" not in table.column_names


def test_other_columns_rows_and_files_are_unchanged(
    original: Path, annotated: tuple[Path, str, str]
) -> None:
    root, _, _ = annotated
    for name, table in read_shards(root):
        before = pq.read_table(original / name)
        src = pq.ParquetFile(original / name).metadata
        dst = pq.ParquetFile(root / name).metadata
        assert [src.row_group(i).num_rows for i in range(src.num_row_groups)] == [
            dst.row_group(i).num_rows for i in range(dst.num_row_groups)
        ]
        for column in before.column_names:
            if column != "subtask_index":
                assert table.column(column).equals(before.column(column)), (name, column)
    before_hashes = file_hashes(original)
    after_hashes = file_hashes(root)
    for rel, digest in before_hashes.items():
        if rel.startswith("data/") or rel == "meta/info.json":
            continue
        assert after_hashes[rel] == digest, rel
    assert set(after_hashes) == set(before_hashes)  # nothing added inside the dataset


def test_every_frame_obeys_the_contract(annotated: tuple[Path, str, str]) -> None:
    root, _, _ = annotated
    meta = load_dataset_meta(root)
    cameras = {c.key for c in meta.cameras}
    first_list: dict[int, list[dict[str, object]]] = {}
    frame_times: dict[int, set[float]] = defaultdict(set)
    styles_seen: set[str | None] = set()
    for _, table in read_shards(root):
        eps = table.column("episode_index").to_pylist()
        ts = table.column("timestamp").to_pylist()
        pers = table.column(PERSISTENT_COLUMN).to_pylist()
        evs = table.column(EVENTS_COLUMN).to_pylist()
        for ep, t, p_rows, e_rows in zip(eps, ts, pers, evs, strict=True):
            frame_times[ep].add(t)
            # persistent list identical on every frame of the episode
            if ep not in first_list:
                first_list[ep] = p_rows
                assert p_rows, f"episode {ep} has no persistent rows"
            assert p_rows == first_list[ep]
            rows = [row_from_dict(r) for r in e_rows]
            assert rows == sorted(rows, key=event_sort_key)
            for row in rows:
                styles_seen.add(row.style)
                assert row.style is None or row.style in EVENT_STYLES
                assert (row.camera in cameras) if row.style in CAMERA_STYLES else row.camera is None
                if row.style is None:
                    assert speech_text(row), row
                else:
                    assert row.content
    for ep, p_rows in first_list.items():
        rows = [row_from_dict(r) for r in p_rows]
        assert rows == sorted(rows, key=persistent_sort_key)
        for row in rows:
            styles_seen.add(row.style)
            assert row.style in PERSISTENT_STYLES
            assert row.camera is None
            assert row.timestamp in frame_times[ep], (ep, row)
    assert {"subtask", "plan", "memory", "task_aug", "interjection", "vqa", None} <= styles_seen


def test_events_sit_only_on_their_frame(annotated: tuple[Path, str, str]) -> None:
    """An interjection's plan row is stamped with the very frame that carries the event."""
    root, _, _ = annotated
    for _, table in read_shards(root):
        ts = table.column("timestamp").to_pylist()
        pers = table.column(PERSISTENT_COLUMN).to_pylist()
        evs = table.column(EVENTS_COLUMN).to_pylist()
        for t, p_rows, e_rows in zip(ts, pers, evs, strict=True):
            styles = [r["style"] for r in e_rows]
            if "interjection" in styles:
                assert None in styles  # the spoken reply on the same frame
                assert any(r["style"] == "plan" and r["timestamp"] == t for r in p_rows)


def test_info_json_declares_columns_and_say_tool(
    original: Path, annotated: tuple[Path, str, str]
) -> None:
    root, _, _ = annotated
    info = info_json(root)
    before = info_json(original)
    assert info["features"][PERSISTENT_COLUMN] == LANGUAGE_FEATURE
    assert info["features"][EVENTS_COLUMN] == LANGUAGE_FEATURE
    assert "subtask_index" in before["features"] and "subtask_index" not in info["features"]
    assert [t for t in info["tools"] if t["function"]["name"] == "say"] == [SAY_TOOL]
    for key, value in before["features"].items():
        if key != "subtask_index":
            assert info["features"][key] == value


def test_output_loads_with_datasets_and_lerobot_features(
    annotated: tuple[Path, str, str],
) -> None:
    import datasets

    root, _, _ = annotated
    row = {
        "role": datasets.Value("string"),
        "content": datasets.Value("string"),
        "style": datasets.Value("string"),
        "timestamp": datasets.Value("float32"),
        "camera": datasets.Value("string"),
        "tool_calls": datasets.List(datasets.Json()),
    }
    event = {k: v for k, v in row.items() if k != "timestamp"}
    files = [str(p) for p in sorted((root / "data").rglob("*.parquet"))]
    table = pq.read_table(files[0])
    features = datasets.Features(
        {
            **datasets.Features.from_arrow_schema(
                pa.schema([f for f in table.schema if not f.name.startswith("language_")])
            ),
            PERSISTENT_COLUMN: datasets.List(row),
            EVENTS_COLUMN: datasets.List(event),
        }
    )
    ds = datasets.load_dataset(
        "parquet",
        data_files=files,
        features=features,
        split="train",
        cache_dir=str(root.parent / "hf"),
    )
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    assert len(ds) == total
    speech = [e for item in ds[EVENTS_COLUMN] for e in item if e["style"] is None]
    assert speech and speech[0]["tool_calls"][0]["function"]["name"] == "say"


@pytest.mark.slow
def test_writing_twice_gives_identical_files(
    annotated: tuple[Path, str, str], fleet: Fleet, tmp_path: Path
) -> None:
    root, run_id, url = annotated
    before = file_hashes(root)
    conn = redis.Redis.from_url(url)
    # Forget the commit, then enqueue again: every result is staged, so only the writer runs.
    conn.delete(keys.committed(run_id), keys.staged_files(run_id))
    for key in conn.scan_iter(f"{keys.run(run_id)}:finalize:*"):
        conn.delete(key)
    requests_before = sum(fleet.stats(i)["requests_total"] for i in range(2))
    result = annotate(
        pipeline_config(fleet.urls, redis_url=url, state_dir=tmp_path / "state"),
        root,
        progress=False,
    )
    assert result.exit_code == 0
    assert sum(fleet.stats(i)["requests_total"] for i in range(2)) == requests_before
    assert file_hashes(root) == before


def test_second_invocation_of_a_finished_run_does_nothing(
    annotated: tuple[Path, str, str], fleet: Fleet, tmp_path: Path
) -> None:
    root, run_id, url = annotated
    before = file_hashes(root)
    conn = redis.Redis.from_url(url)
    summary = enqueue_run(
        conn,
        root,
        settings=pipeline_config(fleet.urls, redis_url=url, state_dir=tmp_path).annotation,
        prompts=load_prompts(),
        model=load_run(conn, run_id).model,
    )
    assert summary.run_id == run_id
    assert summary.complete and summary.enqueued == 0
    assert file_hashes(root) == before


def test_every_shipped_recipe_renders_samples_from_the_run(
    annotated: tuple[Path, str, str],
) -> None:
    from narrator.consumer.dataset_render import iter_samples, select_frames
    from narrator.consumer.recipes import load_recipe, shipped_recipe_names

    root, _, _ = annotated
    meta = load_dataset_meta(root)
    plan = select_frames(meta, sorted(meta.episodes), None, None)
    names = shipped_recipe_names()
    assert {
        "low_level_subtask",
        "high_level_next_subtask",
        "memory_update",
        "interjection_response",
        "vqa",
    } <= set(names)
    for name in names:
        samples = list(iter_samples(meta, load_recipe(name), plan))
        assert samples, f"recipe {name} rendered nothing from a real run"
        for sample in samples:
            assert sample["messages"], name
            assert len(sample["message_streams"]) == len(sample["messages"]), name
    interjection = list(iter_samples(meta, load_recipe("interjection_response"), plan))
    calls = [c for s in interjection for m in s["messages"] for c in (m.get("tool_calls") or [])]
    assert calls and all(c["function"]["name"] == "say" for c in calls)
    # The README's example (`--recipe interjection_response --episode 0`) renders something:
    # the first frame's spoken acknowledgement at least.
    assert any(s["episode"] == 0 and s["frame"] == 0 for s in interjection)
    vqa = list(iter_samples(meta, load_recipe("vqa"), plan))
    features = {s["messages"][0]["content"][0]["feature"] for s in vqa}
    assert features >= {c.key for c in meta.cameras}


def test_status_reports_modules_files_and_counters(annotated: tuple[Path, str, str]) -> None:
    import subprocess
    import sys

    root, run_id, url = annotated
    out = subprocess.run(
        [sys.executable, "-m", "narrator", "status", run_id, "--redis-url", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"run {run_id}  state: done" in out
    meta = load_dataset_meta(root)
    n = len(meta.episodes)
    for module in ("plan", "interjections", "vqa"):
        assert f"{module}" in out and f"{n}/{n}" in out
    assert f"files staged {len(meta.files)}/{len(meta.files)}  committed: yes" in out
    assert "VLM requests" in out and "throughput" in out
