"""writer.commit on its own: the info.json update (pure), and the journal's swap applied,
interrupted and resumed on real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from narrator.common.contract import LANGUAGE_FEATURE, SAY_TOOL
from narrator.common.errors import DatasetError
from narrator.common.state_dir import JOURNAL, stage_dir
from narrator.writer.commit import (
    apply_journal,
    commit,
    info_text,
    prepare_journal,
    resume_commits,
    updated_info,
)

FILES = ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet"]


def _info() -> dict[str, Any]:
    return {
        "codebase_version": "v3.0",
        "fps": 10,
        "features": {
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "subtask_index": {"dtype": "int64", "shape": [1], "names": None},
        },
        "tools": [{"type": "function", "function": {"name": "wave"}}],
    }


def test_updated_info_declares_the_columns_adds_say_once_and_drops_subtask_index() -> None:
    info = _info()
    out = updated_info(info)
    assert out["features"]["language_persistent"] == LANGUAGE_FEATURE
    assert out["features"]["language_events"] == LANGUAGE_FEATURE
    assert "subtask_index" not in out["features"]
    assert out["tools"] == [info["tools"][0], SAY_TOOL]
    assert updated_info(out) == out  # idempotent: say is not added twice
    assert info == _info()  # the input is not changed
    custom_say = {**_info(), "tools": [{"type": "function", "function": {"name": "say", "x": 1}}]}
    assert updated_info(custom_say)["tools"] == custom_say["tools"]  # a say tool is kept


def test_info_text_is_indented_json_with_a_newline() -> None:
    text = info_text({"fps": 10, "name": "é"})
    assert text.endswith("}\n") and json.loads(text) == {"fps": 10, "name": "é"}
    assert "é" in text  # not escaped


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_info()), encoding="utf-8")
    stage = stage_dir(root / ".narrator" / "staging", "run1", "gen1")
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"old " + rel.encode())
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(b"new " + rel.encode())
    return root, stage


def test_commit_swaps_every_shard_updates_info_and_removes_the_stage(tmp_path: Path) -> None:
    root, stage = _dataset(tmp_path)
    commit(root, stage, FILES)
    for rel in FILES:
        assert (root / rel).read_bytes() == b"new " + rel.encode()
    info = json.loads((root / "meta" / "info.json").read_text(encoding="utf-8"))
    assert info == updated_info(_info())
    assert not stage.exists()
    assert sorted(p.name for p in (root / "meta").iterdir()) == ["info.json"]


def test_an_interrupted_commit_is_finished_from_its_journal(tmp_path: Path) -> None:
    root, stage = _dataset(tmp_path)
    journal = prepare_journal(root, stage, FILES)
    assert orjson.loads(journal.read_bytes())["files"] == FILES
    # The writer died after the first rename, leaving a temp file of the info.json write.
    (stage / FILES[0]).replace(root / FILES[0])
    (root / "meta" / ".info.json.tmp-999").write_text("partial")
    assert prepare_journal(root, stage, FILES) == journal  # the journal is not rewritten
    assert resume_commits(root, root / ".narrator" / "staging", "run1")
    for rel in FILES:
        assert (root / rel).read_bytes() == b"new " + rel.encode()
    assert sorted(p.name for p in (root / "meta").iterdir()) == ["info.json"]
    assert not stage.exists()
    assert not resume_commits(root, root / ".narrator" / "staging", "run1")  # nothing left


def test_a_journal_naming_a_shard_that_exists_nowhere_is_refused(tmp_path: Path) -> None:
    root, stage = _dataset(tmp_path)
    prepare_journal(root, stage, FILES)
    (stage / FILES[1]).unlink()
    (root / FILES[1]).unlink()
    with pytest.raises(DatasetError, match="neither the staged nor the original shard"):
        apply_journal(root, stage)
    assert (stage / JOURNAL).exists()  # kept, so the commit can be finished once restored


def test_info_without_tools_or_features_gets_both_columns_and_only_say() -> None:
    out = updated_info({"codebase_version": "v3.0", "fps": 30})
    assert out["tools"] == [SAY_TOOL]
    assert set(out["features"]) == {"language_persistent", "language_events"}
    assert out["fps"] == 30


def test_the_journal_holds_the_sorted_files_and_the_whole_new_info_json(tmp_path: Path) -> None:
    root, stage = _dataset(tmp_path)
    journal = prepare_journal(root, stage, list(reversed(FILES)))
    payload = orjson.loads(journal.read_bytes())
    assert payload["files"] == sorted(FILES)
    assert payload["info_json"] == info_text(updated_info(_info()))
    for rel in FILES:  # preparing changes nothing in the dataset
        assert (root / rel).read_bytes() == b"old " + rel.encode()
    assert json.loads((root / "meta" / "info.json").read_text(encoding="utf-8")) == _info()


@pytest.mark.parametrize("damage", ["missing", "not json"])
def test_an_unreadable_info_json_stops_the_commit_before_anything_moves(
    tmp_path: Path, damage: str
) -> None:
    root, stage = _dataset(tmp_path)
    info = root / "meta" / "info.json"
    if damage == "missing":
        info.unlink()
    else:
        info.write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"cannot read info\.json before commit"):
        commit(root, stage, FILES)
    assert not (stage / JOURNAL).exists()
    for rel in FILES:
        assert (root / rel).read_bytes() == b"old " + rel.encode()
        assert (stage / rel).read_bytes() == b"new " + rel.encode()


def test_resume_without_an_interrupted_commit_does_nothing(tmp_path: Path) -> None:
    root, _stage = _dataset(tmp_path)
    staging = root / ".narrator" / "staging"
    assert not resume_commits(root, staging, "run1")  # a stage, but no journal in it
    assert not resume_commits(root, staging, "no-such-run")
    assert not resume_commits(root, tmp_path / "nowhere", "run1")
    for rel in FILES:
        assert (root / rel).read_bytes() == b"old " + rel.encode()
