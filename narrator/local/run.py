"""``narrator annotate``: the whole pipeline on one machine.

Takes the dataset's run lock (one annotate per dataset), starts (unless given a Redis URL)
an embedded redis-server whose append-only file lives in the state directory, enqueues the
run, starts N worker processes and one writer as child processes (the same ``narrator
worker`` / ``narrator writer`` commands a cluster runs), reports progress, and returns once
every shard is written.

Invariants:
* Secrets reach the children through their environment, never their argv.
* The children and the embedded Redis die with this process however it dies (kernel
  parent-death signal plus a parent watch, narrator.common.lifecycle); on Ctrl-C, SIGTERM or
  SIGHUP they are stopped in order: workers and writer first, Redis last. Running the same
  command again resumes (finished results are not recomputed).
* Exit code 0 only when the run is committed; 1 when it stalls on failures (the failures are
  listed, with a command that retries them).
"""

from __future__ import annotations

import os
import shlex
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import redis
from pydantic import SecretStr
from rq.worker import Worker

from narrator.common.config import NarratorConfig
from narrator.common.config import child_env as config_child_env
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import check_language_columns, load_dataset_meta
from narrator.common.job_specs import CommitPolicy, JobOptions
from narrator.common.logging import get_logger, redact_text
from narrator.common.prompts import load_prompts
from narrator.common.runs import RunRecord, default_state_dir, load_run
from narrator.common.state_dir import check_dataset_writable
from narrator.local.children import spawn_role, stop_children
from narrator.local.progress import Reporter, watch_run
from narrator.local.redis_server import LocalRedis
from narrator.local.run_lock import RunLock
from narrator.ops.status import RunStatus, read_status
from narrator.producer.enqueue import enqueue_run
from narrator.producer.selection import check_selection

log = get_logger(__name__)

COMMITTED_STOP_GRACE_S = 1.0


@dataclass
class AnnotateResult:
    run_id: str
    exit_code: int
    status: RunStatus | None
    record: RunRecord | None = None  # the run as recorded (for --push-to-hub's dataset card)


def resolve_model(config: NarratorConfig) -> str:
    """Check every VLM replica (reachable, key accepted, model served; see
    :mod:`narrator.workers.preflight`) and return the model: the configured one, else the one
    the servers list. Raises a one-line :class:`~narrator.common.errors.NarratorError`."""
    if not config.vlm.urls and config.vlm.model:
        return config.vlm.model  # nothing to check against (enqueue --model without URLs)
    from narrator.workers.preflight import check_fleet

    return check_fleet(config.vlm).model


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


def failure_hint(
    root: Path, run_id: str, redis_url: str | None, state_dir: Path | None = None
) -> str:
    """What to do after a run stopped on failures, as commands that work as printed."""
    if redis_url is None:
        where = f" --state-dir {shlex.quote(str(state_dir))}" if state_dir else ""
        return (
            "fix the cause and run the same command again (it asks only what failed); "
            f"`narrator status {shlex.quote(str(root))}{where}` shows the run"
        )
    shown = redact_text(redis_url)
    return (
        "fix the cause and run the same command again (it asks only what failed), or, where "
        f"other workers serve this Redis, `narrator retry-failed {run_id} --redis-url {shown}`"
        + (" (with the password)" if shown != redis_url else "")
    )


def _cameras(meta: DatasetMeta) -> str:
    keys = [camera.key for camera in meta.cameras]
    return ", ".join(keys) if keys else "none (text-only prompts)"


def annotate(
    config: NarratorConfig,
    root: Path,
    *,
    progress: bool = True,
    poll_s: float = 0.5,
    reporter: Reporter | None = None,
) -> AnnotateResult:
    root = Path(root).resolve()
    meta = load_dataset_meta(root)  # fail early, with the file and the problem
    check_language_columns(meta)  # language columns of an older schema: refuse, say which
    selection = config.episode_selection()
    if selection is not None:
        check_selection(selection, meta.episodes)  # an episode it lacks: before any work
    state_dir = Path(config.state_dir or default_state_dir(root))
    staging_dir = Path(config.staging_dir or state_dir / "staging")
    check_dataset_writable(meta, staging_dir)  # read-only, or staging on another filesystem
    prompts = load_prompts(config.prompt_dir)  # every placeholder checked now, not at job time
    say = reporter or Reporter(show_progress=progress, interval_s=config.progress_interval_s)
    say.say(
        f"dataset {root}: {len(meta.episodes)} episode(s) in {len(meta.files)} data "
        f"file(s); cameras: {_cameras(meta)}"
    )
    say.say("checking the VLM server(s): " + ", ".join(config.vlm.urls))
    model = resolve_model(config)  # before anything is started or written
    with ExitStack() as stack:
        stack.enter_context(RunLock(state_dir))
        redis_url = config.redis_url_value()
        embedded = redis_url is None
        if embedded:
            server = LocalRedis(state_dir / "redis", die_with_parent=True)
            stack.callback(server.stop)  # registered first: stopped last
            redis_url = server.start().url
            log.info("embedded_redis_started", data_dir=str(server.data_dir), port=server.port)
            say.say(f"embedded Redis on 127.0.0.1:{server.port} (data kept in {server.data_dir})")
        assert redis_url is not None
        conn = redis.Redis.from_url(redis_url)
        stack.callback(conn.close)
        if embedded:
            forget_dead_workers(conn)
        summary = enqueue_run(
            conn,
            root,
            settings=config.annotation,
            prompts=prompts,
            model=model,
            options=JobOptions(job_timeout_s=config.job_timeout_s, job_retries=config.job_retries),
            policy=CommitPolicy(config.failed_items_threshold, config.allow_failed_items),
            staging_dir=staging_dir,
            meta=meta,
            only_episodes=selection,
        )
        record = load_run(conn, summary.run_id)
        if summary.complete:
            log.info("run_already_complete", run=summary.run_id)
            say.say(f"run {summary.run_id} is already complete: nothing to do")
            return AnnotateResult(summary.run_id, 0, read_status(conn, summary.run_id), record)
        if record.selection:
            say.say(
                f"only episodes {','.join(record.selection)}: {record.total_episodes} "
                f"episode(s) in {record.total_files} data file(s); the other episodes keep "
                "their rows"
            )
        say.say(
            f"run {summary.run_id} with model {model}: {summary.total_jobs} job(s), "
            f"{summary.already_done} already done; {summary.enqueued} enqueued now (each plan "
            "job enqueues its episode's interjections)"
            if "interjections" in config.annotation.modules
            else f"run {summary.run_id} with model {model}: {summary.total_jobs} job(s), "
            f"{summary.already_done} already done; {summary.enqueued} enqueued now"
        )
        env = child_env(config, redis_url)
        logs = state_dir / "logs"
        children = [spawn_role("writer", ["writer"], env, logs / "writer.log")]
        stack.callback(stop_children, children)
        children.append(
            spawn_role(
                "worker",
                ["worker", "--workers", str(config.workers), "--jobs-per-worker",
                 str(config.jobs_per_worker)],
                env,
                logs / "worker.log",
            )
        )  # fmt: skip
        say.say(
            f"started {config.workers} worker process(es) (each holds {config.jobs_per_worker}"
            f"-{config.max_jobs_per_worker} jobs, as many as the VLM fleet has room for) and "
            f"the writer; their logs are in {logs}"
        )
        code, status = watch_run(
            conn,
            summary.run_id,
            children,
            say,
            poll_s=poll_s,
            failure_hint=failure_hint(
                root, summary.run_id, None if embedded else redis_url, config.state_dir
            ),
        )
        if code == 0:
            # Committed: every job of the run is done, so idle workers need no long goodbye
            # (a pool of threaded workers takes seconds to wind down): exit promptly. The
            # writer keeps the full grace to finish its post-commit cleanup.
            stop_children(children, grace_by_name={"worker": COMMITTED_STOP_GRACE_S})
        return AnnotateResult(summary.run_id, code, status, record)
    raise AssertionError("unreachable")  # pragma: no cover
