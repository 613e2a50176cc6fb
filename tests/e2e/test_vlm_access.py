"""`narrator annotate` as a user runs it against servers it did not write: OpenAI-style base
URLs (`.../v1`), a model the servers do not serve, a wrong API key. A run that cannot get
answers stops before it starts (exit 2, one line, the dataset untouched); with the right
settings it completes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from narrator.common.runs import default_state_dir
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator import SimConfig
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import file_hashes

SECRET = "sk-narrator-e2e-secret"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.fleet(2, SimConfig(api_key=SECRET)),
]


def annotate(root: Path, *args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NARRATOR_LOG_FORMAT": "json",
        "NARRATOR_LOG_LEVEL": "warning",
    }
    if key is not None:
        env["NARRATOR_VLM_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "narrator", "annotate", str(root), *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
    )


def v1_urls(fleet: Fleet) -> list[str]:
    args: list[str] = []
    for url, suffix in zip(fleet.urls, ["/v1", "/v1/"], strict=True):
        args += ["--vlm-url", url + suffix]
    return args


def assert_refused_at_start(proc: subprocess.CompletedProcess[str], root: Path) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    # Besides the start-up phase lines of the progress reporter, exactly one line: the error.
    phases = ("narrator: dataset ", "narrator: checking the VLM server")
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith(phases)]
    assert len(lines) == 1 and lines[0].startswith("narrator: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not default_state_dir(root).exists()  # nothing was started, nothing written
    return lines[0]


def test_v1_urls_wrong_model_and_wrong_key_then_the_right_key(tmp_path: Path, fleet: Fleet) -> None:
    root = make_sample_dataset(tmp_path / "dataset", episodes=3, cameras=1, episodes_per_file=2)
    before = file_hashes(root)

    wrong_model = annotate(root, *v1_urls(fleet), "--model", "no-such-model", key=SECRET)
    line = assert_refused_at_start(wrong_model, root)
    assert "'no-such-model'" in line and fleet.urls[0] in line and "--model" in line
    assert file_hashes(root) == before

    wrong_key = annotate(root, *v1_urls(fleet), key="sk-not-the-key")
    line = assert_refused_at_start(wrong_key, root)
    assert "HTTP 401" in line and "NARRATOR_VLM_API_KEY" in line
    assert "sk-not-the-key" not in wrong_key.stderr and SECRET not in wrong_key.stderr
    assert file_hashes(root) == before

    no_key = annotate(root, *v1_urls(fleet), key=None)
    assert "without API key" in assert_refused_at_start(no_key, root)
    assert file_hashes(root) == before

    done = annotate(root, *v1_urls(fleet), key=SECRET)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shards written" in done.stdout
    assert check_annotated_dataset(root).ok
    persistent, events = styles_by_episode(root)
    assert set(persistent) == {0, 1, 2}
    for episode in range(3):
        assert "subtask" in persistent[episode], persistent[episode]
        assert {"vqa", None} <= events[episode], events[episode]  # VQA and a speech atom


def styles_by_episode(root: Path) -> tuple[dict[int, set[str]], dict[int, set[str | None]]]:
    persistent: dict[int, set[str]] = {}
    events: dict[int, set[str | None]] = {}
    for shard in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(
            shard, columns=["episode_index", "language_persistent", "language_events"]
        ).to_pylist()
        for row in table:
            episode = row["episode_index"]
            persistent.setdefault(episode, set()).update(
                r["style"] for r in row["language_persistent"]
            )
            events.setdefault(episode, set()).update(r["style"] for r in row["language_events"])
    return persistent, events
