"""Annotating again: what is left on disk between generations, and datasets annotated in part.

* A generation superseded before its commit leaves staged shards (up to a copy of ``data/``):
  enqueueing the new generation prunes them, and so does the writer's commit.
* A dataset where only some shards have language columns (another tool annotated some, or
  columns were stripped from a shard) can be annotated again: such a shard holds no rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from narrator.common import keys
from narrator.common.config import NarratorConfig
from narrator.common.contract import LANGUAGE_COLUMNS
from narrator.common.dataset.language import read_file_language
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.prompts import load_prompts
from narrator.local.run import annotate, child_env
from narrator.producer.enqueue import EnqueueSummary, enqueue_run
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import DEFAULT_MODEL
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import pipeline_config
from tests.support.processes import RoleProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.fleet(2)]


def _burst(role: str, env: dict[str, str], logs: Path) -> None:
    """Run ``narrator worker|writer --burst`` to the end of its queue."""
    args = [role, "--burst"] + (
        ["--workers", "1", "--jobs-per-worker", "4"] if role == "worker" else []
    )
    process = RoleProcess(args, env, logs, name=f"{role}-{len(list(logs.glob('*.log')))}")
    process.start()
    assert process.proc is not None
    code = process.proc.wait(timeout=180)
    assert code == 0, process.log_tail()


def _enqueue(
    conn: redis.Redis, root: Path, config: NarratorConfig, staging: Path
) -> EnqueueSummary:
    return enqueue_run(
        conn,
        root,
        settings=config.annotation,
        prompts=load_prompts(),
        model=DEFAULT_MODEL,
        staging_dir=staging,
    )


def test_stages_of_a_superseded_generation_are_pruned(
    tmp_path: Path, fleet: Fleet, redis_url: str
) -> None:
    root = make_sample_dataset(tmp_path / "dataset", episodes=4, cameras=1, episodes_per_file=2)
    staging = tmp_path / "state" / "staging"
    conn = redis.Redis.from_url(redis_url)
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "state")
    env = child_env(config, redis_url)
    logs = tmp_path / "logs"

    # Generation 1: every module job runs, then only the first file is finalized.
    first = _enqueue(conn, root, config, staging)
    _burst("worker", env, logs)
    writer_queue = Queue(keys.WRITER_QUEUE, connection=conn, serializer=JSONSerializer)
    files = sorted(load_dataset_meta(root).files)
    for job in writer_queue.get_jobs():
        if job.args[1] != files[0]:
            writer_queue.remove(job)
    _burst("writer", env, logs)
    stage_1 = staging / first.run_id / first.generation
    assert (stage_1 / files[0]).is_file()
    assert not (stage_1 / files[1]).exists()
    assert conn.get(keys.committed(first.run_id)) is None

    # Generation 2 (a changed setting) supersedes it: enqueueing prunes generation 1's stage.
    changed = config.model_copy(
        update={"annotation": config.annotation.model_copy(update={"seed": 7})}
    )
    second = _enqueue(conn, root, changed, staging)
    assert second.run_id == first.run_id and second.generation != first.generation
    assert not stage_1.exists()
    assert conn.hget(keys.staged_files(first.run_id), files[0]) is None

    # The new generation commits; nothing of either generation is left in staging.
    _burst("worker", env, logs)
    _burst("writer", env, logs)
    assert conn.get(keys.committed(first.run_id)) == second.generation.encode()
    leftovers = (
        sorted(p.relative_to(staging) for p in staging.rglob("*")) if staging.exists() else []
    )
    assert leftovers == []


def _strip_language_columns(shard: Path) -> None:
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(list(LANGUAGE_COLUMNS)), shard, row_group_size=32)


def test_a_dataset_with_language_columns_in_some_shards_only_is_annotated_again(
    tmp_path: Path, fleet: Fleet, redis_url: str
) -> None:
    root = make_sample_dataset(tmp_path / "dataset", episodes=4, cameras=1, episodes_per_file=2)
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "state")
    assert annotate(config, root, progress=False).exit_code == 0
    meta = load_dataset_meta(root)
    kept_file, stripped_file = sorted(meta.files)
    kept_before = read_file_language(meta, kept_file)
    _strip_language_columns(root / stripped_file)
    backup = tmp_path / "stripped.parquet"
    shutil.copy(root / stripped_file, backup)

    # Another setting: the second run asks vqa again and rewrites every shard.
    again = pipeline_config(
        fleet.urls,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        annotation={"vqa": {"vqa_hz": 1.0}},
    )
    result = annotate(again, root, progress=False)
    assert result.exit_code == 0
    meta = load_dataset_meta(root)
    stripped_after = read_file_language(meta, stripped_file)
    kept_after = read_file_language(meta, kept_file)
    for ep, lang in stripped_after.items():
        styles = {r.style for r in lang.persistent}
        assert {"subtask", "plan", "task_aug"} <= styles, ep
    for ep, lang in kept_after.items():
        assert lang.persistent == kept_before[ep].persistent
    assert pq.read_table(root / stripped_file).drop_columns(
        list(LANGUAGE_COLUMNS)
    ) == pq.read_table(backup)
