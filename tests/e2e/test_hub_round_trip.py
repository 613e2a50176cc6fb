"""`narrator annotate --repo-id USER/NAME --push-to-hub REPO` end to end (in-process CLI, real
Redis, workers and writer processes, the simulated VLM over HTTP), with narrator's Hub
interface replaced by a fake of it (no Hub is reachable): the dataset is downloaded into
$HF_LEROBOT_HOME/USER/NAME, annotated, validated and uploaded with its card and tag; the same
command again downloads nothing, asks nothing and pushes again."""

from __future__ import annotations

from pathlib import Path

import pytest

from narrator.cli.main import main
from narrator.hub import flow
from narrator.hub.card import split_front_matter
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import DEFAULT_MODEL
from narrator.simulator.fleet import Fleet
from tests.support.fake_hub import FakeHub

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_download_annotate_and_push(
    tmp_path: Path,
    fleet: Fleet,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    remote = make_sample_dataset(tmp_path / "remote", episodes=3, cameras=1, min_length=20,
                                 max_length=40)  # fmt: skip
    hub = FakeHub(sources={"lab/pick": {"main": remote}})
    monkeypatch.setattr(flow, "hub_client", lambda: hub)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    argv = [
        "annotate", "--repo-id", "lab/pick", "--vlm-url", fleet.urls[0],
        "--push-to-hub", "me/pick-annotated", "--private", "--commit-message", "first labels",
        "--no-progress", "--log-level", "error",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr()
    root = tmp_path / "home" / "lab" / "pick"
    assert check_annotated_dataset(root).ok
    assert [d[2] for d in hub.downloads] == [root]
    (commit,) = hub.commits
    assert commit.repo_id == "me/pick-annotated" and commit.message == "first labels"
    assert hub.created == [("me/pick-annotated", True)]
    assert not any(p.startswith(".") or "/." in p for p in commit.files)
    assert (
        commit.files["data/chunk-000/file-000.parquet"]
        == (root / "data/chunk-000/file-000.parquet").read_bytes()
    )  # the annotated shard, not the downloaded one
    meta, body = split_front_matter(commit.files["README.md"].decode())
    assert "narrator" in meta["tags"] and "all 3 episodes" in body
    assert f"`{DEFAULT_MODEL}`" in body
    assert hub.tags[("me/pick-annotated", "v3.0")] in out.out
    assert "pushed to https://hub.invalid/datasets/me/pick-annotated" in out.out

    fleet.reset()
    assert main(argv) == 0  # again: no download, no request, pushed again
    assert len(hub.downloads) == 1 and fleet.stats(0)["requests_total"] == 0
    assert len(hub.commits) == 2


def test_push_needs_a_target_and_a_root_or_a_repo(capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9"
    assert main(["annotate", "--vlm-url", url]) == 2
    assert "give the dataset ROOT, or --repo-id USER/NAME" in capsys.readouterr().err
    assert main(["annotate", "/nonexistent", "--vlm-url", url, "--push-to-hub"]) == 2
    assert "--push-to-hub needs a target" in capsys.readouterr().err
    assert main(["annotate", "--push-to-hub", "/data/ds", "--vlm-url", url]) == 2
    assert "is not a Hub repo id; write it as USER/NAME" in capsys.readouterr().err
