"""``--only-episodes`` through the real roles (producer, rq workers and writer in burst mode, a
real Redis, the simulated VLM over HTTP): a selection annotates only its episodes; the other
episodes of the shards it rewrites keep their rows exactly, the shards without a selected
episode keep their bytes; selections add up instead of erasing each other; the same selection
again resumes (or is complete); the selection is recorded in the run and shown by status."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from narrator.common import keys
from narrator.common.contract import EVENTS_COLUMN, LANGUAGE_COLUMNS, PERSISTENT_COLUMN
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import ConfigError
from narrator.common.failed_items import read_tallies
from narrator.common.prompts import load_prompts
from narrator.common.runs import load_run, text
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.ops.status import format_status, read_status
from narrator.producer.enqueue import EnqueueSummary, enqueue_run
from narrator.producer.selection import files_without_language, selected_members
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import DEFAULT_MODEL
from narrator.simulator.fleet import Fleet
from tests.support.annotated_fixture import make_annotated_dataset
from tests.support.job_support import NO_RETRIES, committed, drain, enqueue, requests, settings
from tests.support.pipeline_support import file_hashes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _enqueue(
    conn: redis.Redis, root: Path, state: Path, only: set[int] | None, **annotation: object
) -> EnqueueSummary:
    return enqueue_run(
        conn,
        root,
        settings=settings(**annotation),
        prompts=load_prompts(),
        model=DEFAULT_MODEL,
        options=NO_RETRIES,
        staging_dir=state / "staging",
        only_episodes=frozenset(only) if only is not None else None,
    )


def _language(root: Path) -> dict[int, tuple[pa.Array, pa.Array]]:
    """episode -> its rows of both language columns, as stored (Arrow arrays)."""
    out: dict[int, tuple[pa.Array, pa.Array]] = {}
    for shard in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(shard)
        if table.schema.get_field_index(PERSISTENT_COLUMN) < 0:
            continue
        episodes = table.column("episode_index").to_pylist()
        for episode in sorted(set(episodes)):
            start = episodes.index(episode)
            length = episodes.count(episode)
            out[episode] = (
                table.column(PERSISTENT_COLUMN).slice(start, length).combine_chunks(),
                table.column(EVENTS_COLUMN).slice(start, length).combine_chunks(),
            )
    return out


def _styles(column: pa.Array) -> set[str | None]:
    return {row["style"] for rows in column.to_pylist() for row in rows}


def _files_of(root: Path) -> dict[int, str]:
    meta = load_dataset_meta(root)
    return {e: f for f, eps in meta.files.items() for e in eps}


def test_a_selection_keeps_the_other_episodes_rows_and_the_other_shards_bytes(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    root = make_sample_dataset(
        tmp_path / "ds", episodes=6, cameras=1, episodes_per_file=2, min_length=20, max_length=40
    )
    conn = redis.Redis.from_url(redis_url)
    state = tmp_path / "state"
    first = _enqueue(conn, root, state, None)
    drain(redis_url, fleet.urls)
    assert committed(conn, first)
    before_rows, before_bytes = _language(root), file_hashes(root)
    files = _files_of(root)

    fleet.reset()
    second = _enqueue(conn, root, state, {2}, seed=9)  # new answers for episode 2 only
    assert second.total_jobs == 3 and second.files == 1
    drain(redis_url, fleet.urls)
    assert committed(conn, second)
    assert requests(fleet) > 0

    after_rows, after_bytes = _language(root), file_hashes(root)
    for episode in (0, 1, 3, 4, 5):
        old, new = before_rows[episode], after_rows[episode]
        assert new[0].equals(old[0]) and new[1].equals(old[1]), f"episode {episode} changed"
    assert {"subtask", "plan", "memory", "task_aug"} <= _styles(after_rows[2][0])
    for path, digest in before_bytes.items():
        if path.startswith("data/") and path != files[2]:
            assert after_bytes[path] == digest, f"{path} was rewritten"
    run = load_run(conn, second.run_id)
    hashes_now = run.module_hashes
    for episode, expected in ((2, True), (3, False)):
        got = text(conn.hget(keys.result(second.run_id, "plan", episode), "hash"))
        assert (got == hashes_now["plan"]) is expected, episode
    assert check_annotated_dataset(root).ok

    assert run.selection == ("2",) and run.total_episodes == 1 and run.total_files == 1
    status = read_status(conn, second.run_id)
    shown = format_status(status)
    assert "episodes: only 2 (1 episode(s) in 1 file(s); the others keep their rows)" in shown
    assert status.modules["plan"] == (1, 1) and status.committed


def test_selections_add_up_and_the_same_selection_resumes(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    root = make_sample_dataset(
        tmp_path / "ds", episodes=6, cameras=1, episodes_per_file=2, min_length=20, max_length=40
    )
    files = _files_of(root)
    conn = redis.Redis.from_url(redis_url)
    state = tmp_path / "state"

    # 1. No language columns yet: every shard gets them; only episode 0 gets rows.
    a = _enqueue(conn, root, state, {0})
    assert a.files == 3 and a.total_jobs == 3
    drain(redis_url, fleet.urls)
    assert committed(conn, a)
    rows_a = _language(root)
    assert set(rows_a) == set(range(6)), "every shard holds both columns"
    assert {"subtask", "plan"} <= _styles(rows_a[0][0])
    assert all(_styles(rows_a[e][0]) == set() for e in range(1, 6))
    assert check_annotated_dataset(root).ok
    bytes_a = file_hashes(root)

    # 2. Another selection, enqueued twice before it runs (the second time finds its jobs).
    b = _enqueue(conn, root, state, {4, 5})
    again = _enqueue(conn, root, state, {4, 5})
    assert b.files == 1 and again.generation == b.generation != a.generation
    assert again.enqueued == 0 and again.already_active == b.enqueued
    drain(redis_url, fleet.urls)
    assert committed(conn, b)
    rows_b = _language(root)
    assert rows_b[0][0].equals(rows_a[0][0]) and rows_b[0][1].equals(rows_a[0][1])
    assert {"subtask", "plan"} <= _styles(rows_b[4][0]) and _styles(rows_b[5][0])
    bytes_b = file_hashes(root)
    assert bytes_b[files[0]] == bytes_a[files[0]], "the first selection's shard is untouched"

    # 3. The first selection again: its answers are all staged, so nothing is asked; its shard
    #    is written again (this generation was not the last commit) with the same rows.
    fleet.reset()
    c = _enqueue(conn, root, state, {0})
    assert c.generation == a.generation and c.enqueued == 0 and not c.complete
    drain(redis_url, fleet.urls)
    assert committed(conn, c) and requests(fleet) == 0
    assert file_hashes(root) == bytes_b
    assert _enqueue(conn, root, state, {0}).complete  # and now it is the committed one


def test_an_episode_the_dataset_lacks_is_refused_before_anything_is_recorded(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=3, cameras=0)
    with pytest.raises(ConfigError, match=r"episode\(s\) 5,9-10 that the dataset does not have"):
        _enqueue(redis_client, root, tmp_path / "state", {1, 5, 9, 10})
    assert not redis_client.keys("narrator:*")


def test_language_columns_are_checked_per_shard_for_untouched_files(tmp_path: Path) -> None:
    plain = make_sample_dataset(tmp_path / "plain", episodes=4, cameras=0, episodes_per_file=2)
    meta = load_dataset_meta(plain)
    names = sorted(meta.files)
    assert files_without_language(meta, names) == set(names)  # info.json declares none
    assert selected_members(meta.files, {1}, {names[1]}) == {names[0]: [1], names[1]: []}
    assert selected_members(meta.files, {1}, set()) == {names[0]: [1]}

    annotated = make_annotated_dataset(tmp_path / "annotated", episodes=4, cameras=0,
                                       episodes_per_file=2)  # fmt: skip
    meta = load_dataset_meta(annotated)
    assert files_without_language(meta, names) == set()
    shard = annotated / names[1]
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(list(LANGUAGE_COLUMNS)), shard)  # one shard lost them
    assert files_without_language(meta, names) == {names[1]}


def test_item_tallies_of_a_selection_count_its_episodes_only(redis_client: redis.Redis) -> None:
    run = "r1"
    redis_client.hset(
        keys.item_tallies(run),
        mapping={"vqa:0": "10 5", "vqa:1": "10 0", "vqa:2": "4 1", "plan:0": "3 0"},
    )
    redis_client.hset(keys.item_totals(run), mapping={"vqa:items": 24, "vqa:failed": 6})
    (whole,) = read_tallies(redis_client, run, ["vqa"])
    assert (whole.items, whole.failed) == (24, 6)
    vqa, plan = read_tallies(redis_client, run, ["vqa", "plan"], episodes={1, 2, 7})
    assert (vqa.items, vqa.failed) == (14, 1) and (plan.items, plan.failed) == (0, 0)


def test_a_command_whose_generation_is_committed_is_what_the_run_record_describes(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    """Defaults committed, then ``--vqa-hz 1`` enqueued but never run, then the defaults again:
    that is complete at once, and the record (status, the dataset card) must describe it, not
    the abandoned ``--vqa-hz 1`` generation."""
    root = make_sample_dataset(tmp_path / "ds", episodes=2, cameras=1, min_length=20,
                               max_length=30)  # fmt: skip
    conn = redis.Redis.from_url(redis_url)
    state = tmp_path / "state"
    first = enqueue(conn, root, state)
    drain(redis_url, fleet.urls)
    assert committed(conn, first)
    enqueue(conn, root, state, annotation=settings(vqa={"vqa_hz": 1.0}))  # abandoned
    again = enqueue(conn, root, state)
    assert again.complete
    status = read_status(conn, again.run_id)
    assert status.run.generation == first.generation
    assert status.committed and status.state == "done", format_status(status)
