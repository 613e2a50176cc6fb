"""The publish and pending-rebuild scripts, run against a real Redis."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from narrator.common import keys
from narrator.common.job_specs import PUBLISH_SCRIPT, REBUILD_PENDING_SCRIPT, JobOptions
from narrator.common.runs import text

RUN = "0123456789ab"
FILE = "data/chunk-000/file-000.parquet"


def _record(conn: redis.Redis, module_hashes: dict[str, str], generation: str) -> None:
    conn.hset(
        keys.run(RUN),
        mapping={"module_hashes": orjson.dumps(module_hashes), "generation": generation},
    )


def _publish(
    conn: redis.Redis,
    module: str,
    episode: int,
    module_hash: str,
    *,
    items: int = 4,
    failed: int = 0,
    counters: dict[str, int] | None = None,
) -> tuple[str, str]:
    failures = orjson.dumps([{"item": f"i{n}"} for n in range(failed)]) if failed else b""
    pairs = sorted((counters or {}).items())
    args: list[Any] = [module, module_hash, b"{}", keys.member(module, episode), FILE]
    args += [items, failed, failures, len(pairs)]
    for name, value in pairs:
        args += [name, value]
    reply = conn.eval(
        PUBLISH_SCRIPT,
        8,
        keys.run(RUN),
        keys.result(RUN, module, episode),
        keys.pending(RUN, FILE),
        keys.finalize_claims(RUN),
        keys.stats(RUN),
        keys.item_failures(RUN),
        keys.item_tallies(RUN),
        keys.item_totals(RUN),
        *args,
    )
    return text(reply[0]) or "", text(reply[1]) or ""


def _rebuild(conn: redis.Redis, members: list[tuple[str, int, str, str]]) -> set[str]:
    """members: (module, episode, module hash, needs)."""
    script_keys = [keys.pending(RUN, FILE), keys.staged_files(RUN), keys.finalize_claims(RUN)]
    script_keys += [keys.result(RUN, m, e) for m, e, _, _ in members]
    args = [FILE]
    for m, e, h, needs in members:
        args += [keys.member(m, e), h, needs]
    return {
        text(m) or ""
        for m in conn.eval(REBUILD_PENDING_SCRIPT, len(script_keys), *script_keys, *args)
    }


def _totals(conn: redis.Redis) -> dict[str, int]:
    return {text(k) or "": int(v) for k, v in conn.hgetall(keys.item_totals(RUN)).items()}


def test_publish_refuses_a_result_of_another_module_hash(redis_client: redis.Redis) -> None:
    conn = redis_client
    _record(conn, {"vqa": "new"}, "gen-2")
    conn.sadd(keys.pending(RUN, FILE), "vqa:0")
    assert _publish(conn, "vqa", 0, "old") == ("stale", "")
    assert not conn.exists(keys.result(RUN, "vqa", 0))
    assert conn.smembers(keys.pending(RUN, FILE)) == {b"vqa:0"}
    assert not conn.exists(keys.finalize_claims(RUN))
    conn.delete(keys.run(RUN))
    assert _publish(conn, "vqa", 0, "new") == ("stale", "")  # no run record at all


def test_publish_keeps_the_latest_tally_and_failures_per_member(redis_client: redis.Redis) -> None:
    conn = redis_client
    _record(conn, {"vqa": "h"}, "gen-1")
    conn.sadd(keys.pending(RUN, FILE), "vqa:0", "vqa:1")
    assert _publish(conn, "vqa", 0, "h", items=5, failed=2, counters={"vqa:requests": 5}) == (
        "published",
        "",
    )
    assert _publish(conn, "vqa", 1, "h", items=3)[0] == "claimed"
    assert _totals(conn) == {"vqa:items": 8, "vqa:failed": 2}
    assert len(orjson.loads(conn.hget(keys.item_failures(RUN), "vqa:0") or b"[]")) == 2
    # Asked again: the member's tally and failures are replaced, not added.
    conn.sadd(keys.pending(RUN, FILE), "vqa:0")
    _publish(conn, "vqa", 0, "h", items=5, counters={"vqa:requests": 2})
    assert _totals(conn) == {"vqa:items": 8, "vqa:failed": 0}
    assert not conn.hexists(keys.item_failures(RUN), "vqa:0")
    assert conn.hget(keys.result(RUN, "vqa", 0), "failed") == b"0"
    assert conn.hget(keys.stats(RUN), "vqa:requests") == b"7"
    # A second publish of a member that is no longer pending adds no counters.
    _publish(conn, "vqa", 0, "h", items=5, counters={"vqa:requests": 9})
    assert conn.hget(keys.stats(RUN), "vqa:requests") == b"7"


def test_the_claim_is_per_generation_and_can_be_reset(redis_client: redis.Redis) -> None:
    conn = redis_client
    _record(conn, {"vqa": "h"}, "gen-1")
    conn.sadd(keys.pending(RUN, FILE), "vqa:0")
    assert _publish(conn, "vqa", 0, "h") == ("claimed", "gen-1")
    assert _publish(conn, "vqa", 0, "h") == ("published", "")  # claimed once
    # The run moved to a generation in which this module's hash is unchanged: the claim is
    # taken for the run's current generation, not for the one the job started in.
    _record(conn, {"vqa": "h", "plan": "p"}, "gen-2")
    assert _publish(conn, "vqa", 0, "h") == ("claimed", "gen-2")
    _record(conn, {"vqa": "h"}, "gen-1")  # back to the first settings; the producer resets
    conn.hdel(keys.finalize_claims(RUN), FILE)
    assert _publish(conn, "vqa", 0, "h") == ("claimed", "gen-1")


def test_rebuild_marks_done_only_current_results_without_failures_whose_needs_are_done(
    redis_client: redis.Redis,
) -> None:
    conn = redis_client
    conn.hset(keys.result(RUN, "plan", 0), mapping={"hash": "p", "failed": 1})
    conn.hset(keys.result(RUN, "interjections", 0), mapping={"hash": "i", "failed": 0})
    conn.hset(keys.result(RUN, "plan", 1), mapping={"hash": "p", "failed": 0})
    conn.hset(keys.result(RUN, "interjections", 1), mapping={"hash": "i", "failed": 0})
    conn.hset(keys.result(RUN, "vqa", 0), mapping={"hash": "old"})
    conn.hset(keys.staged_files(RUN), FILE, "gen")
    conn.hset(keys.finalize_claims(RUN), FILE, "gen")
    members = [
        ("plan", 0, "p", ""),
        ("interjections", 0, "i", "1"),
        ("plan", 1, "p", ""),
        ("interjections", 1, "i", "3"),
        ("vqa", 0, "v", ""),
        ("vqa", 1, "v", ""),
    ]
    done = _rebuild(conn, members)
    assert done == {"plan:1", "interjections:1"}
    assert conn.smembers(keys.pending(RUN, FILE)) == {
        b"plan:0",  # failed items
        b"interjections:0",  # its plan is to be asked again
        b"vqa:0",  # another hash
        b"vqa:1",  # no result
    }
    assert not conn.hexists(keys.staged_files(RUN), FILE)  # to be finalized again
    assert not conn.hexists(keys.finalize_claims(RUN), FILE)


def test_rebuild_of_a_finished_file_keeps_its_marks(redis_client: redis.Redis) -> None:
    conn = redis_client
    conn.hset(keys.result(RUN, "vqa", 0), mapping={"hash": "v", "failed": 0})
    conn.hset(keys.staged_files(RUN), FILE, "gen")
    assert _rebuild(conn, [("vqa", 0, "v", "")]) == {"vqa:0"}
    assert not conn.exists(keys.pending(RUN, FILE))
    assert conn.hget(keys.staged_files(RUN), FILE) == b"gen"


@pytest.mark.parametrize(("retries", "expected"), [(0, []), (1, [5]), (3, [5, 30, 120])])
def test_retry_intervals_are_cut_to_the_retry_count(retries: int, expected: list[int]) -> None:
    assert JobOptions(job_retries=retries).intervals() == expected
