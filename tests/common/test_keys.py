"""The Redis key layout (pure): one prefix, run ids embedded, deterministic rq-safe job ids."""

from __future__ import annotations

import re

import pytest

from narrator.common import keys
from narrator.common.job_specs import FinalizeJob, ModuleJob

RQ_ID = re.compile(r"[A-Za-z0-9_-]+")  # rq refuses any other character in a job id
RUN = "0123456789ab"


def test_every_key_starts_with_the_prefix_and_per_run_keys_embed_the_run() -> None:
    per_run = [
        keys.run(RUN),
        keys.run_files(RUN),
        keys.pending(RUN, "data/chunk-000/file-000.parquet"),
        keys.finalize_claims(RUN),
        keys.result(RUN, "plan", 3),
        keys.staged_files(RUN),
        keys.committed(RUN),
        keys.stats(RUN),
        keys.item_failures(RUN),
        keys.item_tallies(RUN),
        keys.item_totals(RUN),
        keys.writer_errors(RUN),
        keys.commit_hold(RUN),
    ]
    assert all(k.startswith(f"narrator:run:{RUN}") for k in per_run)
    assert len(set(per_run)) == len(per_run)
    assert keys.RUNS.startswith("narrator:") and keys.REPLICAS.startswith("narrator:")
    assert keys.result(RUN, "plan", 3) != keys.result(RUN, "plan", 30)


@pytest.mark.parametrize(
    "data_file", ["data/chunk-000/file-000.parquet", "data/chunk-012/file-1.2.3.parquet"]
)
def test_job_ids_are_deterministic_and_rq_safe(data_file: str) -> None:
    module_id = keys.job_id(RUN, "interjections", 12, "a" * 16)
    assert module_id == keys.job_id(RUN, "interjections", 12, "a" * 16)
    assert module_id != keys.job_id(RUN, "interjections", 12, "b" * 16)
    assert module_id != keys.job_id(RUN, "interjections", 1, "a" * 16)
    finalize_id = keys.finalize_job_id(RUN, data_file, "c" * 16)
    assert RQ_ID.fullmatch(module_id) and RQ_ID.fullmatch(finalize_id)
    assert finalize_id != keys.finalize_job_id(RUN, data_file, "d" * 16)
    assert module_id.startswith(f"nar-{RUN}-") and finalize_id.startswith(f"nar-{RUN}-")


def test_typed_payloads_name_the_same_ids_and_round_trip() -> None:
    job = ModuleJob(RUN, "vqa", 7, "e" * 16)
    assert job.job_id == keys.job_id(RUN, "vqa", 7, "e" * 16)
    assert job.member == keys.member("vqa", 7) == "vqa:7"
    assert ModuleJob.from_args(list(job.args())) == job
    assert ModuleJob.from_args(["r", "plan", "3", "h"]).episode == 3  # JSON may carry text
    finalize = FinalizeJob(RUN, "data/chunk-000/file-000.parquet", "f" * 16)
    assert finalize.job_id == keys.finalize_job_id(RUN, finalize.data_file, finalize.generation)
    assert finalize.args() == (RUN, finalize.data_file, finalize.generation)


def test_per_file_and_per_member_names_are_distinct_across_a_datasets_files() -> None:
    """Every data file of a LeRobot layout (chunks x files) gets its own pending set and its
    own finalize job id; members name module and episode."""
    files = [f"data/chunk-{c:03d}/file-{f:03d}.parquet" for c in range(3) for f in range(12)]
    assert len({keys.pending(RUN, f) for f in files}) == len(files)
    assert len({keys.finalize_job_id(RUN, f, "g" * 16) for f in files}) == len(files)
    assert all(keys.pending(RUN, f).endswith(f) for f in files)  # the file key, verbatim
    members = {keys.member(m, e) for m in ("plan", "interjections", "vqa") for e in range(12)}
    assert len(members) == 36 and keys.member("plan", 1) != keys.member("plan", 11)


def test_ids_and_keys_differ_between_runs() -> None:
    other = "ba9876543210"
    assert keys.run(RUN) != keys.run(other)
    assert keys.job_id(RUN, "vqa", 0, "h" * 16) != keys.job_id(other, "vqa", 0, "h" * 16)
    assert keys.finalize_job_id(RUN, "data/x.parquet", "g" * 16) != keys.finalize_job_id(
        other, "data/x.parquet", "g" * 16
    )
    assert keys.MODULE_QUEUE != keys.WRITER_QUEUE
