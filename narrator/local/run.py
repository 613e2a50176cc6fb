"""``narrator annotate``: the whole pipeline on one machine.

Starts (unless given a Redis URL) an embedded redis-server whose append-only file lives in
the state directory beside the dataset, enqueues the run, starts N worker processes and one
writer as child processes (the same ``narrator worker`` / ``narrator writer`` commands a
cluster runs), shows a progress bar, and returns once every shard is written.

Invariants:
* Secrets reach the children through their environment, never their argv.
* Ctrl-C stops the children and the embedded Redis cleanly; running the same command again
  resumes (finished results are not recomputed).
* Exit code 0 only when the run is committed; 1 when it stalls on failures (the failures are
  listed; ``narrator retry-failed`` or a re-run retries them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import redis
from pydantic import SecretStr
from rq.worker import Worker
from tqdm import tqdm

from narrator.common.config import NarratorConfig
from narrator.common.config import child_env as config_child_env
from narrator.common.dataset.reader import check_language_columns, load_dataset_meta
from narrator.common.errors import ConfigError, VLMUnavailableError
from narrator.common.job_specs import CommitPolicy, JobOptions
from narrator.common.logging import get_logger
from narrator.common.prompts import load_prompts
from narrator.common.runs import default_state_dir
from narrator.local.redis_server import LocalRedis
from narrator.ops.status import RunStatus, format_status, read_status
from narrator.producer.enqueue import enqueue_run
from narrator.workers.vlm_client import VLMClient

log = get_logger(__name__)

STALL_GRACE_S = 3.0
STATUS_DUTY = 10  # the progress poll waits at least 10x what reading the status took
REDIS_LOST_GRACE_S = 60.0  # how long the progress loop waits for an unreachable Redis


@dataclass
class AnnotateResult:
    run_id: str
    exit_code: int
    status: RunStatus | None


async def _resolve_model(config: NarratorConfig) -> str:
    client = VLMClient(config.vlm)
    await client.start()
    try:
        return await client.resolve_model()
    finally:
        await client.close()


def resolve_model(config: NarratorConfig) -> str:
    """The configured model, else the first one the VLM server lists."""
    if config.vlm.model:
        return config.vlm.model
    try:
        return asyncio.run(_resolve_model(config))
    except VLMUnavailableError as exc:
        urls = ", ".join(config.vlm.urls)
        raise ConfigError(
            f"cannot reach the VLM server at {urls}: {exc}. Start vLLM there "
            "(or pass --serve to have narrator start it), then run again."
        ) from exc


def forget_dead_workers(conn: redis.Redis) -> int:
    """Embedded Redis only: every worker registered there died with the last run."""
    dead = Worker.all(connection=conn)
    for worker in dead:
        worker.register_death()  # type: ignore[no-untyped-call]
    return len(dead)


def child_env(config: NarratorConfig, redis_url: str) -> dict[str, str]:
    """The environment of a worker or writer child: this process's environment with its
    ``NARRATOR_*`` settings replaced by ``config`` (all of it, whether it came from flags, env
    or YAML) and the run's Redis URL. Secrets travel here, never in argv."""
    full = config.model_copy(update={"redis_url": SecretStr(redis_url)})
    return config_child_env(full, os.environ)


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(  # fixed argv, no shell
            [sys.executable, "-m", "narrator", *args],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def annotate(
    config: NarratorConfig,
    root: Path,
    *,
    progress: bool = True,
    poll_s: float = 0.5,
) -> AnnotateResult:
    root = Path(root).resolve()
    meta = load_dataset_meta(root)  # fail early, with the file and the problem
    check_language_columns(meta)  # language columns of an older schema: refuse, say which
    state_dir = Path(config.state_dir or default_state_dir(root))
    prompts = load_prompts(config.prompt_dir)
    with ExitStack() as stack:
        redis_url = config.redis_url_value()
        embedded = redis_url is None
        if embedded:
            server = LocalRedis(state_dir / "redis")
            stack.callback(server.stop)
            redis_url = server.start().url
            log.info("embedded redis started", data_dir=str(server.data_dir))
        assert redis_url is not None
        conn = redis.Redis.from_url(redis_url)
        stack.callback(conn.close)
        if embedded:
            forget_dead_workers(conn)
        model = resolve_model(config)
        summary = enqueue_run(
            conn,
            root,
            settings=config.annotation,
            prompts=prompts,
            model=model,
            options=JobOptions(job_timeout_s=config.job_timeout_s, job_retries=config.job_retries),
            policy=CommitPolicy(config.failed_items_threshold, config.allow_failed_items),
            staging_dir=Path(config.staging_dir or state_dir / "staging"),
            meta=meta,
        )
        if summary.complete:
            log.info("run already complete", run=summary.run_id)
            return AnnotateResult(summary.run_id, 0, read_status(conn, summary.run_id))
        env = child_env(config, redis_url)
        logs = state_dir / "logs"
        writer = _spawn(["writer"], env, logs / "writer.log")
        stack.callback(_stop, writer)
        workers = _spawn(
            ["worker", "--workers", str(config.workers), "--jobs-per-worker",
             str(config.jobs_per_worker)],
            env,
            logs / "worker.log",
        )  # fmt: skip
        stack.callback(_stop, workers)
        return _watch(conn, summary.run_id, [writer, workers], progress=progress, poll_s=poll_s)
    raise AssertionError("unreachable")  # pragma: no cover


def _watch(
    conn: redis.Redis,
    run_id: str,
    children: list[subprocess.Popen[bytes]],
    *,
    progress: bool,
    poll_s: float,
) -> AnnotateResult:
    status = read_status(conn, run_id)
    total = status.jobs_total + status.files_total
    bar = tqdm(total=total, disable=not progress, unit="step", desc=f"run {run_id}")
    stalled_since: float | None = None
    redis_lost_since: float | None = None
    try:
        while True:
            read_started = time.monotonic()
            try:
                status = read_status(conn, run_id)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis restarting (it keeps its data on disk): wait for it a while.
                redis_lost_since = redis_lost_since or time.monotonic()
                if time.monotonic() - redis_lost_since > REDIS_LOST_GRACE_S:
                    raise
                log.warning("redis unreachable; waiting for it", error=str(exc))
                time.sleep(poll_s)
                continue
            redis_lost_since = None
            read_s = time.monotonic() - read_started
            bar.n = status.jobs_done + status.files_staged
            bar.set_postfix_str(
                f"files {status.files_staged}/{status.files_total} "
                f"failed {len(status.failed_jobs)}",
                refresh=False,
            )
            bar.refresh()
            if status.committed:
                return AnnotateResult(run_id, 0, status)
            if status.state == "failed":
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > STALL_GRACE_S:
                    sys.stderr.write("\n" + format_status(status) + "\n")
                    sys.stderr.write(
                        "narrator: the run stopped on failures; fix the cause and run the same "
                        f"command again, or `narrator retry-failed {run_id}`.\n"
                    )
                    return AnnotateResult(run_id, 1, status)
            else:
                stalled_since = None
            for child in children:
                if child.poll() is not None:
                    raise ConfigError(
                        f"a narrator child process exited with code {child.returncode}; "
                        "see the logs in the state directory"
                    )
            # A big run's status costs Redis real work (58 ms at 10k episodes): poll so that
            # reading it takes at most 1/STATUS_DUTY of the time.
            time.sleep(max(poll_s, STATUS_DUTY * read_s))
    finally:
        bar.close()
