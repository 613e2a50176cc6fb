"""narrator.samples.dataset writes a genuine LeRobot v3 layout, deterministically, with videos
whose frames say which episode and frame they are (read back with PyAV directly)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from narrator.common.dataset.reader import load_dataset_meta
from narrator.samples.dataset import (
    DEPTH_CAMERA,
    PLACEHOLDER_TASKS,
    SUBTASKS,
    TASKS,
    make_sample_dataset,
)
from narrator.samples.video import encoder_works, read_frame_code


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(tmp_path_factory.mktemp("sample") / "ds")


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _episodes(root: Path) -> pa.Table:
    files = sorted((root / "meta/episodes").rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_info_json_declares_a_v3_dataset(sample: Path) -> None:
    info = json.loads((sample / "meta/info.json").read_text(encoding="utf-8"))
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"].startswith("videos/{video_key}/")
    assert (info["total_episodes"], info["chunks_size"], info["fps"]) == (10, 2, 10)
    features = info["features"]
    assert features["timestamp"]["dtype"] == "float32"
    assert features["observation.state"] == {
        "dtype": "float32",
        "shape": [6],
        "names": [f"joint_{i}" for i in range(6)],
    }
    for name in ("top", "wrist"):
        camera = features[f"observation.images.{name}"]
        assert camera["dtype"] == "video"
        assert (camera["shape"], camera["names"]) == ([72, 96, 3], ["height", "width", "channels"])
        expected_codec = "av1" if encoder_works("libsvtav1") else "h264"
        assert camera["info"]["video.codec"] == expected_codec
    assert "subtask_index" not in features


def test_data_files_hold_several_episodes_with_exact_types(sample: Path) -> None:
    info = json.loads((sample / "meta/info.json").read_text(encoding="utf-8"))
    data_files = sorted((sample / "data").rglob("*.parquet"))
    assert [f.relative_to(sample).as_posix() for f in data_files] == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
        "data/chunk-001/file-001.parquet",
    ]
    tables = [pq.read_table(f) for f in data_files]
    assert tables[0].schema.field("timestamp").type == pa.float32()
    assert tables[0].schema.field("action").type == pa.list_(pa.float32(), 6)
    assert tables[0].schema.field("index").type == pa.int64()
    assert [len(set(t.column("episode_index").to_pylist())) for t in tables] == [3, 3, 3, 1]
    table = pa.concat_tables(tables)
    frame_index = table.column("frame_index").to_numpy()
    expected = (frame_index / info["fps"]).astype(np.float32)
    np.testing.assert_array_equal(table.column("timestamp").to_numpy(), expected)
    np.testing.assert_array_equal(table.column("index").to_numpy(), np.arange(table.num_rows))
    episodes = _episodes(sample)
    assert len(set(episodes.column("length").to_pylist())) >= 5  # different lengths
    assert len({t[0] for t in episodes.column("tasks").to_pylist()}) >= 3  # several tasks
    assert info["total_frames"] == table.num_rows == sum(episodes.column("length").to_pylist())


def test_tasks_parquet_reads_as_lerobot_writes_it(sample: Path) -> None:
    frame = pd.read_parquet(sample / "meta/tasks.parquet")
    assert list(frame.index) == list(TASKS)
    assert list(frame["task_index"]) == list(range(len(TASKS)))


def test_videos_hold_episodes_back_to_back(sample: Path) -> None:
    episodes = _episodes(sample).to_pylist()
    for camera in ("observation.images.top", "observation.images.wrist"):
        by_file: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for row in episodes:
            key = (row[f"videos/{camera}/chunk_index"], row[f"videos/{camera}/file_index"])
            by_file.setdefault(key, []).append(row)
        assert len(by_file) == 3  # four episodes per video file: 4 + 4 + 2
        for (chunk, file), rows in by_file.items():
            path = sample / f"videos/{camera}/chunk-{chunk:03d}/file-{file:03d}.mp4"
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
            assert len(decoded) == sum(int(r["length"]) for r in rows)
            offset = 0
            for row in rows:
                start = row[f"videos/{camera}/from_timestamp"]
                assert start == pytest.approx(offset / 10)
                for i in range(int(row["length"])):
                    time_s, image = decoded[offset + i]
                    assert time_s == pytest.approx(start + i / 10)
                    assert read_frame_code(image) == (offset + i, row["episode_index"])
                offset += int(row["length"])


def test_same_seed_same_bytes_other_seed_other_dataset(sample: Path, tmp_path: Path) -> None:
    again = make_sample_dataset(tmp_path / "again")
    assert _tree(again) == _tree(sample)
    other = make_sample_dataset(tmp_path / "other", seed=1)
    assert _tree(other) != _tree(sample)


def test_camera_counts_and_metadata_only(tmp_path: Path) -> None:
    none = make_sample_dataset(tmp_path / "none", episodes=3, cameras=0)
    info = json.loads((none / "meta/info.json").read_text(encoding="utf-8"))
    assert info["video_path"] is None and not (none / "videos").exists()
    one = make_sample_dataset(tmp_path / "one", episodes=3, cameras=1, codec="libx264")
    info = json.loads((one / "meta/info.json").read_text(encoding="utf-8"))
    cams = [k for k, v in info["features"].items() if v["dtype"] == "video"]
    assert cams == ["observation.images.top"]
    assert info["features"][cams[0]]["info"]["video.codec"] == "h264"
    assert sorted(p.name for p in (one / "videos").iterdir()) == cams
    bench = make_sample_dataset(tmp_path / "bench", episodes=2500, metadata_only=True)
    info = json.loads((bench / "meta/info.json").read_text(encoding="utf-8"))
    assert not any(v["dtype"] == "video" for v in info["features"].values())
    assert not (bench / "videos").exists()
    assert len(list((bench / "meta/episodes").rglob("*.parquet"))) == 3  # 1000 per file
    assert len(_episodes(bench)) == 2500


def test_legacy_subtask_index(tmp_path: Path) -> None:
    root = make_sample_dataset(
        tmp_path / "legacy", episodes=4, cameras=0, with_legacy_subtask_index=True
    )
    info = json.loads((root / "meta/info.json").read_text(encoding="utf-8"))
    assert info["features"]["subtask_index"]["dtype"] == "int64"
    subtasks = pd.read_parquet(root / "meta/subtasks.parquet")
    assert list(subtasks.index) == list(SUBTASKS)
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    values = set(table.column("subtask_index").to_pylist())
    assert len(values) >= 3 and values <= set(range(len(SUBTASKS)))


def test_depth_camera_and_placeholder_tasks(sample: Path, tmp_path: Path) -> None:
    root = make_sample_dataset(
        tmp_path / "depth", episodes=4, cameras=1, depth_camera=True, placeholder_tasks=True
    )
    meta = load_dataset_meta(root)
    assert [(c.key, c.depth) for c in meta.cameras] == [
        ("observation.images.top", False),
        (DEPTH_CAMERA, True),
    ]
    info = json.loads((root / "meta/info.json").read_text(encoding="utf-8"))
    assert info["features"][DEPTH_CAMERA]["info"]["video.is_depth_map"] is True
    assert info["total_tasks"] == len(PLACEHOLDER_TASKS)
    frame = pd.read_parquet(root / "meta/tasks.parquet")
    assert list(frame.index) == list(PLACEHOLDER_TASKS)
    assert {t for ep in meta.episodes.values() for t in ep.tasks} <= set(PLACEHOLDER_TASKS)
    path = root / f"videos/{DEPTH_CAMERA}/chunk-000/file-000.mp4"
    with av.open(str(path)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert read_frame_code(image.astype(np.uint8)) == (0, 0), "the code band survives"
    spread = np.abs(image[:, :, 0] - image[:, :, 1]) + np.abs(image[:, :, 1] - image[:, :, 2])
    assert float(spread.mean()) < 6, "grey frames"
    # the same episodes and lengths as without the options; the defaults are untouched
    plain = make_sample_dataset(tmp_path / "plain", episodes=4, cameras=1)
    assert _episodes(plain).column("length") == _episodes(root).column("length")
    assert not any(c.depth for c in load_dataset_meta(sample).cameras)
    assert list(pd.read_parquet(sample / "meta/tasks.parquet").index) == list(TASKS)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        make_sample_dataset(tmp_path / "odd", width=97)
    with pytest.raises(ValueError, match="min_length"):
        make_sample_dataset(tmp_path / "len", min_length=50, max_length=40)
    with pytest.raises(ValueError, match="does not work"):
        make_sample_dataset(tmp_path / "codec", codec="no-such-encoder")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError):
        make_sample_dataset(tmp_path / "busy")
