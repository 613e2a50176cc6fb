"""Re-running after a change recomputes only what the change affects (docs/CONTRACT.md §6):
a changed prompt recomputes its module, a changed plan setting recomputes plan and the
interjections that read it, and every result records the hashes of the prompts that made it."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from narrator.common import keys
from narrator.common.prompts import SHIPPED_DIR, load_prompts
from narrator.local.run import annotate
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import pipeline_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.fleet(2)]


def _requests_by_module(fleet: Fleet) -> Counter[str]:
    out: Counter[str] = Counter()
    for i in range(len(fleet.urls)):
        for schema, n in fleet.stats(i)["by_schema"].items():
            out[schema.split("_", 1)[0]] += int(n)
    return out


def _results(conn: redis.Redis, run_id: str) -> dict[str, dict[str, object]]:
    out = {}
    for key in conn.scan_iter(f"{keys.run(run_id)}:result:*"):
        out[key.decode()] = orjson.loads(conn.hget(key, "data") or b"{}")
    return out


def _by_module(results: dict[str, dict[str, object]], module: str) -> dict[str, object]:
    return {k: v for k, v in results.items() if f":result:{module}:" in k}


def test_changed_prompt_or_setting_recomputes_only_what_it_affects(
    tmp_path: Path, fleet: Fleet, redis_url: str
) -> None:
    root = tmp_path / "dataset"
    make_sample_dataset(root, episodes=4, cameras=1, episodes_per_file=2)
    conn = redis.Redis.from_url(redis_url)

    def run(**extra: object) -> str:
        fleet.reset()
        result = annotate(
            pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "s", **extra),
            root,
            progress=False,
        )
        assert result.exit_code == 0
        return result.run_id

    run_id = run()
    first = _results(conn, run_id)
    assert set(_requests_by_module(fleet)) == {"plan", "interjections", "vqa"}
    shipped = load_prompts()
    for data in first.values():
        module = str(data["module"])
        assert data["prompt_hashes"] == shipped.module_prompt_hashes(module)

    # 1. A user prompt directory changes the vqa prompt: only vqa is asked again.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    text = (SHIPPED_DIR / "vqa.question.txt").read_text()
    (prompts / "vqa.question.txt").write_text(text + "\nAnswer tersely.\n")
    assert run(prompt_dir=str(prompts)) == run_id
    assert set(_requests_by_module(fleet)) == {"vqa"}
    second = _results(conn, run_id)
    assert _by_module(second, "plan") == _by_module(first, "plan")
    assert _by_module(second, "interjections") == _by_module(first, "interjections")
    changed = load_prompts(prompts).hash("vqa.question")
    assert changed != shipped.hash("vqa.question")
    assert all(
        v["prompt_hashes"] == {"vqa.question": changed} for v in _by_module(second, "vqa").values()
    )

    # 2. A plan setting changes: plan and interjections (which read its subtasks) rerun.
    assert run(prompt_dir=str(prompts), annotation={"plan": {"max_subtasks": 2}}) == run_id
    assert set(_requests_by_module(fleet)) == {"plan", "interjections"}
    third = _results(conn, run_id)
    assert _by_module(third, "vqa") == _by_module(second, "vqa")

    # 3. Nothing changed: nothing is asked, nothing is rewritten.
    before = {p: p.read_bytes() for p in (root / "data").rglob("*.parquet")}
    run(prompt_dir=str(prompts), annotation={"plan": {"max_subtasks": 2}})
    assert sum(_requests_by_module(fleet).values()) == 0
    assert {p: p.read_bytes() for p in (root / "data").rglob("*.parquet")} == before


def test_unknown_prompt_file_in_override_dir_is_refused(tmp_path: Path) -> None:
    from narrator.common.errors import ConfigError

    (tmp_path / "plan.subtask.txt").write_text("typo in the name")
    with pytest.raises(ConfigError, match="replace no shipped prompt"):
        load_prompts(tmp_path)
    shutil.rmtree(tmp_path)


def test_a_run_keeps_rows_it_does_not_own(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    """Rows of other tools (motion, trace) and of modules a run does not include survive."""
    from narrator.common.contract import LanguageRow, sort_events, sort_persistent
    from narrator.common.dataset.language import read_file_language
    from narrator.common.dataset.reader import load_dataset_meta, read_file_frames
    from narrator.writer.shard import EpisodeRange, build_language_columns, rewrite_shard

    root = tmp_path / "dataset"
    make_sample_dataset(root, episodes=3, cameras=1, episodes_per_file=3)
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "s")
    assert annotate(config, root, progress=False).exit_code == 0

    # Another tool adds a motion row and a trace event to episode 0.
    meta = load_dataset_meta(root)
    data_file = next(iter(meta.files))
    camera = meta.cameras[0].key
    language = read_file_language(meta, data_file)
    frames = read_file_frames(meta, data_file)
    t0 = float(frames[0].timestamp[0])
    motion = LanguageRow("assistant", "move the arm left", "motion", t0, None, None)
    trace = LanguageRow("assistant", "[[1, 2], [3, 4]]", "trace", None, camera, None)
    persistent = {e: list(lang.persistent) for e, lang in language.items()}
    events = {
        e: {f: list(r) for f, r in lang.events_by_frame.items()} for e, lang in language.items()
    }
    persistent[0] = sort_persistent([*persistent[0], motion])
    events[0][2] = sort_events([*events[0].get(2, []), trace])
    ranges = [EpisodeRange(e, f.row_start, len(f.timestamp)) for e, f in frames.items()]
    n_rows = sum(len(f.timestamp) for f in frames.values())
    rewrite_shard(
        root / data_file,
        root / data_file,
        *build_language_columns(n_rows, ranges, persistent, events),
    )
    before = read_file_language(load_dataset_meta(root), data_file)

    # A vqa-only run with a changed question prompt.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "vqa.question.txt").write_text(
        (SHIPPED_DIR / "vqa.question.txt").read_text() + "\nBe brief.\n"
    )
    fleet.reset()
    vqa_only = pipeline_config(
        fleet.urls,
        redis_url=redis_url,
        state_dir=tmp_path / "s",
        prompt_dir=str(prompts),
        annotation={"modules": ["vqa"]},
    )
    assert annotate(vqa_only, root, progress=False).exit_code == 0
    assert set(_requests_by_module(fleet)) == {"vqa"}
    after = read_file_language(load_dataset_meta(root), data_file)
    for ep, lang in after.items():
        assert lang.persistent == before[ep].persistent  # plan rows and the motion row kept
        for frame in set(lang.events_by_frame) | set(before[ep].events_by_frame):
            old = [r for r in before[ep].events_by_frame.get(frame, []) if r.style != "vqa"]
            new = [r for r in lang.events_by_frame.get(frame, []) if r.style != "vqa"]
            assert new == old, (ep, frame)
    assert motion in after[0].persistent
    assert trace in after[0].events_by_frame[2]
