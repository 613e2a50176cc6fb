"""Helpers for tests of the control plane: enqueue a sample run, drain it with the real roles
(``narrator worker --burst`` then ``narrator writer --burst``, real rq, a real Redis), read
its Redis state back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from narrator.common import keys
from narrator.common.config import AnnotationSettings, load_config
from narrator.common.prompts import load_prompts
from narrator.common.queueing import JobOptions
from narrator.common.runs import text
from narrator.producer.enqueue import EnqueueSummary, enqueue_run
from narrator.simulator.config import DEFAULT_MODEL
from tests.support.processes import REPO_ROOT

NO_RETRIES = JobOptions(job_retries=0)  # a burst worker exits before a scheduled retry is due


def settings(**annotation: Any) -> AnnotationSettings:
    return load_config({"annotation": annotation}, env={}).annotation


def enqueue(
    conn: redis.Redis,
    root: Path,
    state: Path,
    *,
    annotation: AnnotationSettings | None = None,
    **policy: Any,
) -> EnqueueSummary:
    """Enqueue a run of the sample model; ``policy`` holds ``CommitPolicy`` fields."""
    extra: dict[str, Any] = {}
    if policy:
        from narrator.common.job_specs import CommitPolicy

        extra["policy"] = CommitPolicy(**policy)
    return enqueue_run(
        conn,
        root,
        settings=annotation or settings(),
        prompts=load_prompts(),
        model=DEFAULT_MODEL,
        options=NO_RETRIES,
        staging_dir=state / "staging",
        **extra,
    )


def role_env(redis_url: str, vlm_urls: list[str], **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "NARRATOR_REDIS_URL": redis_url,
        "NARRATOR_VLM_URLS": ",".join(vlm_urls) or "http://127.0.0.1:9",
        "NARRATOR_LOG_FORMAT": "json",
        "NARRATOR_VLM__TIMEOUT_S": "20",
        "NARRATOR_VLM__BACKOFF_BASE_S": "0.05",
        "NARRATOR_VLM__BACKOFF_MAX_S": "0.5",
    }
    env.update(extra)
    return env


def run_role(args: list[str], env: dict[str, str], timeout_s: float = 180) -> str:
    """Run ``narrator ARGS`` to its end; its output (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, "-m", "narrator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def drain(redis_url: str, vlm_urls: list[str], **env: str) -> None:
    """Run every queued module job, then every finalize job, with the real roles in burst
    mode (one worker process with 4 jobs at once, then the writer)."""
    environment = role_env(redis_url, vlm_urls, **env)
    run_role(["worker", "--burst", "--workers", "1", "--jobs-per-worker", "4"], environment)
    run_role(["writer", "--burst"], environment)


def committed(conn: redis.Redis, summary: EnqueueSummary) -> bool:
    return text(conn.get(keys.committed(summary.run_id))) == summary.generation


def pending_members(conn: redis.Redis, run_id: str) -> set[str]:
    out: set[str] = set()
    for key in conn.scan_iter(f"{keys.run(run_id)}:pending:*"):
        out |= {text(m) or "" for m in conn.smembers(key)}
    return out


def requests(fleet: Any) -> int:
    return sum(int(fleet.stats(i)["requests_total"]) for i in range(len(fleet.urls)))
