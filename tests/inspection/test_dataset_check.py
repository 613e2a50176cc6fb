"""Tests of common.dataset_check and ``narrator validate`` on a real annotated dataset
(written by tests/annotated_fixture.py) and on copies broken in one way each."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from narrator.cli.cmd_validate import format_report
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.samples.dataset import make_sample_dataset
from tests.support.annotated_fixture import (
    BREAKAGES,
    break_dataset,
    make_annotated_dataset,
    read_language,
    write_language,
)

EPISODES = 4


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_annotated_dataset(tmp_path_factory.mktemp("ann") / "ds", episodes=EPISODES)


def test_good_dataset_passes(annotated: Path) -> None:
    report = check_annotated_dataset(annotated)
    assert report.ok and report.findings == []
    assert report.files_checked == len(list((annotated / "data").rglob("*.parquet")))
    assert sorted(report.episodes) == list(range(EPISODES))
    for stats in report.episodes.values():
        assert stats.styles["subtask"] == 3
        assert stats.styles["interjection"] == 1
        assert stats.styles["speech"] == 2
        assert stats.styles["vqa"] > 0 and stats.styles["vqa"] % 2 == 0
        assert stats.persistent_rows == 9
        assert stats.errors == 0 and stats.warnings == 0
    total_frames = sum(s.frames for s in report.episodes.values())
    info = json.loads((annotated / "meta" / "info.json").read_text())
    assert total_frames == info["total_frames"]


EXPECTED_RULES = {
    "column_type": {"column_type"},
    "event_off_frame": {"interjection_incomplete"},
    "speech_atom": {"speech_atom"},
    "vqa_shape": {"vqa_shape"},
    "vqa_out_of_frame": {"vqa_out_of_frame"},
    "persistent_off_frame": {"persistent_off_frame"},
    "info_features": {"info_feature", "say_tool"},
    "persistent_not_constant": {"persistent_not_constant"},
    "legacy_subtask_index": {"legacy_subtask_index"},
}


def test_every_breakage_has_an_expectation() -> None:
    assert set(BREAKAGES) == set(EXPECTED_RULES)


@pytest.mark.parametrize("kind", sorted(EXPECTED_RULES))
def test_broken_copies_fail(annotated: Path, tmp_path: Path, kind: str) -> None:
    broken = break_dataset(annotated, tmp_path / kind, kind)
    report = check_annotated_dataset(broken)
    assert not report.ok
    assert {f.rule for f in report.findings} == EXPECTED_RULES[kind]
    assert set(report.by_rule()) == EXPECTED_RULES[kind]
    for finding in report.findings:
        assert finding.severity == "error"
        assert finding.message
    if kind in (
        "speech_atom",
        "vqa_shape",
        "vqa_out_of_frame",
        "event_off_frame",
        "persistent_off_frame",
    ):
        (episode,) = {f.episode for f in report.findings}
        assert episode == 0 and report.episodes[0].errors == len(report.findings)
        assert all(s.errors == 0 for e, s in report.episodes.items() if e != 0)
    if kind == "vqa_out_of_frame":
        messages = sorted(f.message for f in report.findings)
        assert "[10, 10, 200, 20]" in messages[0] + messages[1]
        assert "[40, 10, 30, 20]" in messages[0] + messages[1]
    if kind in ("vqa_shape", "vqa_out_of_frame"):
        assert {f.camera for f in report.findings} == {
            "observation.images.top",
            "observation.images.wrist",
        }
    if kind in ("column_type", "info_features", "legacy_subtask_index"):
        assert all(f.episode == -1 for f in report.findings)
        assert any(str(broken) in f.message for f in report.findings)


def test_unannotated_dataset_reports_missing_columns(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "plain", episodes=2, cameras=1)
    report = check_annotated_dataset(root)
    rules = {f.rule for f in report.findings}
    assert rules == {"missing_column", "info_feature", "say_tool"}
    assert report.episodes == {}


REPO_ROOT = Path(__file__).resolve().parents[2]


def narrator(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``narrator`` CLI in a child process (its logging set-up stays there)."""
    return subprocess.run(
        [sys.executable, "-m", "narrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NARRATOR_LOG_LEVEL": "warning"},
        cwd=REPO_ROOT,
    )


def test_cli_validate_exit_codes_and_output(annotated: Path, tmp_path: Path) -> None:
    done = narrator("validate", str(annotated))
    assert done.returncode == 0, done.stderr
    assert "0 error(s)" in done.stdout and done.stdout.rstrip().endswith("OK")
    assert f"{EPISODES} episode(s) without findings" in done.stdout

    broken = break_dataset(annotated, tmp_path / "bad", "vqa_shape")
    done = narrator("validate", str(broken), "--all-episodes")
    assert done.returncode == 1
    assert "vqa_shape" in done.stdout and "FAILED" in done.stdout
    assert len(re.findall(r"^  episode +\d+: ", done.stdout, re.M)) == EPISODES

    done = narrator("validate", str(broken), "--json")
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["ok"] is False
    assert data["by_rule"] == {"vqa_shape": {"severity": "error", "count": 2}}
    assert data["episodes"]["0"]["errors"] == 2
    assert len(data["findings"]) == 2


def test_format_report_limits_findings(annotated: Path, tmp_path: Path) -> None:
    broken = break_dataset(annotated, tmp_path / "bad", "vqa_shape")
    report = check_annotated_dataset(broken)
    text = format_report(report, show=1)
    assert "findings (first 1 of 2)" in text
    assert "findings (first" not in format_report(report, show=0)


def test_an_episode_without_subtasks_is_a_warning(annotated: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(annotated, copy)
    shard = sorted((copy / "data").rglob("*.parquet"))[0]
    table, persistent, events = read_language(shard)
    first = table["episode_index"][0].as_py()
    for i, episode in enumerate(table["episode_index"].to_pylist()):
        if episode == first:
            persistent[i] = [r for r in persistent[i] if r.style not in ("subtask", "memory")]
    write_language(shard, table, persistent, events)
    report = check_annotated_dataset(copy)
    assert report.ok  # a warning, not an error
    (finding,) = report.findings
    assert (finding.rule, finding.severity, finding.episode) == ("no_subtasks", "warning", first)
    assert f"{report.episodes[first].frames} frames but no subtask rows" in finding.message
    assert "no_subtasks" in format_report(report)
