"""One long-lived writer process (what compose and Kubernetes run) across several runs.

The writer's services live as long as its process; what it knows about a dataset must follow
the dataset as its own commits change it. Two runs through ONE writer (all modules, then
``modules=[vqa]``): the second keeps the subtasks, plans, memory and interjections of the
first, and a row another tool added in between.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from narrator.common.config import AnnotationSettings
from narrator.common.contract import LanguageRow, sort_persistent
from narrator.common.dataset.language import EpisodeLanguage, read_file_language
from narrator.common.dataset.reader import load_dataset_meta, read_file_frames
from narrator.common.prompts import load_prompts
from narrator.local.run import child_env
from narrator.ops.status import format_status, read_status
from narrator.producer.enqueue import enqueue_run
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import DEFAULT_MODEL
from narrator.simulator.fleet import Fleet
from narrator.writer.shard import EpisodeRange, build_language_columns, rewrite_shard
from tests.support.pipeline_support import pipeline_config
from tests.support.processes import RoleProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.fleet(2)]


def _language(root: Path) -> dict[str, dict[int, EpisodeLanguage]]:
    meta = load_dataset_meta(root)
    return {f: read_file_language(meta, f) for f in meta.files}


def _add_motion_row(root: Path, data_file: str) -> LanguageRow:
    """What another tool does: add a ``motion`` row to episode 0 of ``data_file``."""
    meta = load_dataset_meta(root)
    language = read_file_language(meta, data_file)
    frames = read_file_frames(meta, data_file)
    first = min(language)
    motion = LanguageRow(
        "assistant", "move the arm left", "motion", float(frames[first].timestamp[0]), None, None
    )
    persistent = {e: list(lang.persistent) for e, lang in language.items()}
    persistent[first] = sort_persistent([*persistent[first], motion])
    events = {
        e: {f: list(r) for f, r in lang.events_by_frame.items()} for e, lang in language.items()
    }
    ranges = [EpisodeRange(e, f.row_start, len(f.timestamp)) for e, f in frames.items()]
    n_rows = sum(len(f.timestamp) for f in frames.values())
    columns = build_language_columns(n_rows, ranges, persistent, events)
    rewrite_shard(root / data_file, root / data_file, *columns)
    return motion


def test_one_writer_process_keeps_the_rows_a_second_run_does_not_own(
    tmp_path: Path, fleet: Fleet, redis_url: str
) -> None:
    root = make_sample_dataset(
        tmp_path / "dataset", episodes=4, cameras=1, episodes_per_file=2, max_length=40
    )
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "state")
    env = child_env(config, redis_url)
    conn = redis.Redis.from_url(redis_url)
    logs = tmp_path / "logs"
    writer = RoleProcess(["writer"], env, logs)
    worker = RoleProcess(["worker", "--workers", "1", "--jobs-per-worker", "4"], env, logs)

    def run(settings: AnnotationSettings) -> None:
        summary = enqueue_run(
            conn,
            root,
            settings=settings,
            prompts=load_prompts(),
            model=DEFAULT_MODEL,
            staging_dir=tmp_path / "state" / "staging",
        )

        def committed() -> bool:
            return read_status(conn, summary.run_id).committed

        try:
            wait_until(committed, 150, "the run did not commit")
        except AssertionError:
            status = format_status(read_status(conn, summary.run_id))
            tails = "\n".join(f"--- {r.log_path.name}\n{r.log_tail()}" for r in (writer, worker))
            raise AssertionError(f"the run did not commit\n{status}\n{tails}") from None

    with writer, worker:
        run(config.annotation)
        first = _language(root)
        data_file = sorted(first)[0]
        motion = _add_motion_row(root, data_file)
        before = _language(root)
        run(config.annotation.model_copy(update={"modules": ("vqa",)}))
        after = _language(root)

    assert set(after) == set(before)
    kept_styles = {
        r.style for eps in after.values() for lang in eps.values() for r in lang.persistent
    }
    assert {"subtask", "plan", "memory", "task_aug", "motion"} <= kept_styles
    for rel, episodes in before.items():
        for ep, lang in episodes.items():
            assert {"subtask", "plan", "task_aug"} <= {r.style for r in lang.persistent}
            # Subtasks, plans, memory, task_aug and the other tool's row: all kept.
            assert after[rel][ep].persistent == lang.persistent, (rel, ep)
            for frame in set(lang.events_by_frame) | set(after[rel][ep].events_by_frame):
                old = [r for r in lang.events_by_frame.get(frame, []) if r.style != "vqa"]
                new = [r for r in after[rel][ep].events_by_frame.get(frame, []) if r.style != "vqa"]
                assert new == old, (rel, ep, frame)  # interjections and speech atoms kept
            assert any(
                r.style == "vqa" for rows in after[rel][ep].events_by_frame.values() for r in rows
            ), (rel, ep)
    assert motion in after[data_file][min(after[data_file])].persistent
