"""The tool commands a newcomer runs first: `demo` never deletes what it did not make,
`sample-dataset` makes a dataset from the CLI, prompt files are checked before any work, and
the commands people run log readable text while the roles log JSON when not on a terminal."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from narrator.cli.cmd_demo import MARKER, is_demo_output, prepare_out
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import ConfigError
from narrator.common.logging import configure_logging
from narrator.common.prompts import SHIPPED_DIR, load_prompts
from narrator.samples.dataset import make_sample_dataset
from tests.support.processes import REPO_ROOT


def _narrator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narrator", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip


def test_demo_refuses_a_directory_it_did_not_make_and_keeps_the_files(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    proc = _narrator("demo", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "refusing to delete it" in proc.stderr and proc.stderr.count("\n") == 1
    assert (out / "thesis.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_demo_replaces_its_own_output_and_accepts_a_new_or_empty_directory(
    tmp_path: Path,
) -> None:
    fresh = tmp_path / "new"
    prepare_out(fresh, keep=False)
    assert (fresh / MARKER).is_file()
    (fresh / "dataset").mkdir()
    (fresh / "dataset" / "old.txt").write_text("from the last demo")
    prepare_out(fresh, keep=False)  # ours: replaced
    assert not (fresh / "dataset").exists() and (fresh / MARKER).is_file()
    (fresh / "dataset").mkdir()
    prepare_out(fresh, keep=True)  # --keep: reused
    assert (fresh / "dataset").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_out(empty, keep=False)
    # A demo output from before the marker: only dataset/ (with meta/) and state/.
    old = tmp_path / "old"
    (old / "dataset" / "meta").mkdir(parents=True)
    (old / "state").mkdir()
    assert is_demo_output(old)
    (old / "notes.txt").write_text("mine")
    assert not is_demo_output(old)
    with pytest.raises(ConfigError, match="not a narrator demo output"):
        prepare_out(old, keep=False)
    assert (old / "notes.txt").exists()
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_out(a_file, keep=False)


def test_sample_dataset_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    proc = _narrator(
        "sample-dataset", str(out), "--episodes", "3", "--cameras", "1", "--fps", "5",
        "--min-length", "10", "--max-length", "12",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"wrote a sample dataset to {out}: 3 episodes, 1 camera(s)" in proc.stdout
    meta = load_dataset_meta(out)
    assert len(meta.episodes) == 3 and meta.fps == 5 and len(meta.cameras) == 1
    assert all(10 <= e.length <= 12 for e in meta.episodes.values())


def _override(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "prompts"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.txt").write_text(text)
    return folder


def test_a_prompt_file_with_an_unknown_placeholder_is_refused_at_load(tmp_path: Path) -> None:
    shipped = (SHIPPED_DIR / "plan.task_aug.txt").read_text()
    folder = _override(tmp_path, "plan.task_aug", shipped.replace("$task", "$taskk", 1))
    with pytest.raises(ConfigError) as err:
        load_prompts(folder)
    assert str(folder / "plan.task_aug.txt") in str(err.value) and "$taskk" in str(err.value)


def test_a_prompt_file_without_the_task_is_refused_at_load(tmp_path: Path) -> None:
    folder = _override(tmp_path, "vqa.question", "Ask a $question_type question.")
    with pytest.raises(ConfigError, match=r"does not use \$task"):
        load_prompts(folder)


def test_a_prompt_file_with_a_bad_dollar_is_refused_at_load(tmp_path: Path) -> None:
    folder = _override(tmp_path, "plan.task_aug", "Rephrase $task for $5 in ${count")
    with pytest.raises(ConfigError, match=r"line 1: '\$5 in \$\{' is not a valid placeholder"):
        load_prompts(folder)


def test_a_good_override_is_used(tmp_path: Path) -> None:
    folder = _override(tmp_path, "plan.task_aug", "Give $count ways to say: $task ($$0 cost)")
    prompts = load_prompts(folder)
    assert prompts.render("plan.task_aug", task="t", count=2) == "Give 2 ways to say: t ($0 cost)"


def test_annotate_with_a_bad_prompt_file_exits_2_at_start_naming_it(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=1, cameras=0, metadata_only=True)
    folder = _override(tmp_path, "plan.memory", "Remember for $taskk: $previous_memory")
    state = tmp_path / "state"
    proc = _narrator(
        "annotate", str(root), "--vlm-url", "http://127.0.0.1:9", "--prompt-dir", str(folder),
        "--state-dir", str(state),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(folder / "plan.memory.txt") in proc.stderr and "$taskk" in proc.stderr
    assert not state.exists()


@pytest.mark.parametrize(("human", "json_lines"), [(True, False), (False, True)])
def test_people_get_readable_logs_roles_get_json_when_not_on_a_terminal(
    human: bool, json_lines: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NARRATOR_LOG_FORMAT", raising=False)
    err = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", err)
    configure_logging(level="info", human=human)
    structlog.get_logger("t").warning("replica_left_rotation", replica="a")
    line = err.getvalue().strip()
    if json_lines:
        assert json.loads(line)["event"] == "replica_left_rotation"
    else:
        assert not line.startswith("{") and "replica_left_rotation" in line
        assert "\x1b[" not in line  # no colour codes in a file


def test_asked_for_json_people_commands_log_json_at_info(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    configure_logging(fmt="json", human=True)
    structlog.get_logger("t").info("replica_ready", replica=0)
    assert json.loads(err.getvalue())["event"] == "replica_ready"
