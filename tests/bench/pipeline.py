"""Whole-pipeline runs for the benchmarks: the default ``annotate`` path, and a phase-barrier
orchestration that exists only here.

* :func:`run_default` - :func:`narrator.local.run.annotate` with a default configuration
  (only the VLM URLs, the Redis URL and the state directory are given), exactly what
  ``narrator annotate ROOT --vlm-url ...`` does.
* :func:`run_phase_barrier` - the same producer, workers and writer, but the run is enqueued
  module by module: every plan job, wait until all are done, then every interjections job,
  wait, then every vqa job (with the writer started for this last phase only, so the shards
  are written once, as in the default run). It shows what the default's mixing of modules
  buys.

Both run against a private copy of the dataset and a private redis-server, sample CPU, RSS,
Redis memory and the module queue (rq jobs running and waiting, :func:`rq_probe`) while they
run, and return a :class:`PipelineRun`. ``clock0_s`` is the monotonic time of the fleet's
reset, the zero of the replicas' timelines, so samples and timelines share one clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import redis
from rq import Queue
from rq.registry import StartedJobRegistry

from narrator.common import keys
from narrator.common.config import NarratorConfig, load_config
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import ConfigError
from narrator.common.prompts import load_prompts
from narrator.common.queueing import JobOptions
from narrator.local.redis_server import LocalRedis
from narrator.local.run import annotate, child_env, resolve_model
from narrator.ops.status import read_status
from narrator.producer.enqueue import enqueue_run
from tests.bench.fleet_figures import service_overrun
from tests.bench.processes import ProcessSampler, SampledUsage, SimFleetProcess, role_of
from tests.bench.support import REPO_ROOT, copy_dataset
from tests.bench.timeline import Utilisation, merged, slot_utilisation

PHASES: tuple[tuple[str, ...], ...] = (
    ("plan",),
    ("plan", "interjections"),
    ("plan", "interjections", "vqa"),
)
PHASE_TIMEOUT_S = 900.0


@dataclass
class PipelineRun:
    mode: str
    episodes: int
    wall_s: float  # start until the run was committed (the run record's committed_at)
    returned_s: float  # start until the orchestration returned (children stopped)
    exit_code: int
    requests: int  # HTTP requests the replicas received (attempts, retries included)
    usage: SampledUsage
    utilisation: Utilisation
    timeline: list[dict[str, Any]]
    redis_used_before: int  # bytes, the empty server before the run
    redis_used_after: int  # bytes, after the run committed (and cleaned up)
    phase_walls_s: list[float] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    sim_overrun: float = 0.0  # see fleet_figures.service_overrun
    clock0_s: float = 0.0  # time.monotonic() of the fleet's reset: the timelines' zero
    # False: stopped at its deadline; wall_s is then a lower bound and the figures cover the
    # part that ran
    finished: bool = True
    replica_timelines: list[list[dict[str, Any]]] = field(default_factory=list)

    def cpu_per_request_ms(self, role: str) -> float:
        return 1000.0 * self.usage.cpu_s.get(role, 0.0) / max(self.requests, 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "episodes": self.episodes,
            "wall_s": round(self.wall_s, 3),
            "returned_s": round(self.returned_s, 3),
            "exit_code": self.exit_code,
            "requests": self.requests,
            "cpu_s": {k: round(v, 3) for k, v in self.usage.cpu_s.items()},
            "peak_rss_bytes": self.usage.peak_rss,
            "redis_peak_used_bytes": self.usage.redis_peak_used,
            "redis_used_before_bytes": self.redis_used_before,
            "redis_used_after_bytes": self.redis_used_after,
            "utilisation": self.utilisation.as_json(),
            "phase_walls_s": [round(w, 3) for w in self.phase_walls_s],
            "sim_overrun": round(self.sim_overrun, 4),
            "config": self.config,
            "finished": self.finished,
        }


def default_config(
    urls: list[str], redis_url: str, state_dir: Path, **overrides: Any
) -> NarratorConfig:
    """narrator's defaults plus where things are; ``overrides`` for deliberate experiments."""
    cli: dict[str, Any] = {
        "vlm": {"urls": urls},
        "redis_url": redis_url,
        "state_dir": str(state_dir),
        **overrides,
    }
    return load_config(cli, env={})


def rq_probe(redis_url: str) -> Callable[[], dict[str, float]]:
    """A sampler probe: rq jobs of the module queue running (started registry) and queued."""
    conn = redis.Redis.from_url(redis_url)
    queue_key = Queue(keys.MODULE_QUEUE, connection=conn).key
    started_key = StartedJobRegistry(keys.MODULE_QUEUE, connection=conn).key

    def probe() -> dict[str, float]:
        pipe = conn.pipeline(transaction=False)
        pipe.zcard(started_key)
        pipe.llen(queue_key)
        running, queued = pipe.execute()
        return {"jobs_running": float(running), "jobs_queued": float(queued)}

    return probe


def _config_summary(config: NarratorConfig) -> dict[str, Any]:
    return {
        "workers": config.workers,
        "jobs_per_worker": config.jobs_per_worker,
        "max_jobs_per_worker": config.max_jobs_per_worker,
        "max_in_flight_per_replica": config.vlm.max_in_flight_per_replica,
    }


def _only_run(conn: redis.Redis) -> str:
    """The id of the one run in a private Redis."""
    prefix = keys.run("")
    names = [bytes(k).decode()[len(prefix) :] for k in conn.scan_iter(keys.run("*"))]
    ids = [name for name in names if ":" not in name]
    if len(ids) != 1:
        raise RuntimeError(f"expected one run in the benchmark's Redis, found {ids}")
    return str(ids[0])


def committed_after(conn: redis.Redis, run_id: str, started_epoch: float) -> float:
    """Seconds from ``started_epoch`` (time.time()) to the run's commit."""
    raw = conn.hget(keys.run(run_id), "committed_at")
    if raw is None:
        raise RuntimeError(f"run {run_id} was not committed")
    return float(raw) - started_epoch


def fleet_overrun(fleet: SimFleetProcess, timelines: list[list[dict[str, Any]]]) -> float:
    """Slot time beyond the latency model the simulator really ran (fleet_figures)."""
    sim = fleet.settings
    slowdown = sim.occupancy_slowdown if fleet.capabilities.get("occupancy_slowdown") else 0.0
    return service_overrun(
        timelines,
        slots=sim.slots,
        base_s=sim.base_s,
        per_image_s=sim.per_image_s,
        per_output_token_s=sim.per_output_token_s,
        occupancy_slowdown=slowdown,
    )


def finish_run(
    mode: str,
    fleet: SimFleetProcess,
    conn: redis.Redis,
    episodes: int,
    wall_s: float,
    returned_s: float,
    exit_code: int,
    usage: SampledUsage,
    config: NarratorConfig,
    redis_before: int,
    phase_walls: list[float] | None = None,
    clock0_s: float = 0.0,
    finished: bool = True,
) -> PipelineRun:
    timelines = fleet.timelines()
    timeline = merged(timelines)
    return PipelineRun(
        mode=mode,
        episodes=episodes,
        wall_s=wall_s,
        returned_s=returned_s,
        exit_code=exit_code,
        requests=fleet.requests_total(),
        usage=usage,
        utilisation=slot_utilisation(timeline, fleet.settings.total_slots),
        timeline=timeline,
        redis_used_before=redis_before,
        redis_used_after=int(conn.info("memory")["used_memory"]),
        phase_walls_s=phase_walls or [],
        config=_config_summary(config),
        sim_overrun=fleet_overrun(fleet, timelines),
        clock0_s=clock0_s,
        replica_timelines=timelines,
        finished=finished,
    )


class Watchdog:
    """At ``deadline_s`` (if given), stops the worker and writer process groups started
    below this process: ``annotate`` then sees its children gone and returns an error, which
    the caller records as a run stopped at its deadline."""

    def __init__(self, deadline_s: float | None) -> None:
        self.fired = threading.Event()
        self._timer = None if deadline_s is None else threading.Timer(deadline_s, self._fire)

    def __enter__(self) -> Watchdog:
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        self.fired.set()
        for child in psutil.Process().children(recursive=True):
            try:
                if role_of(child.cmdline()) in ("worker", "writer") and child.pid == os.getpgid(
                    child.pid
                ):
                    os.killpg(child.pid, signal.SIGTERM)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue


def run_default(
    source: Path,
    fleet: SimFleetProcess,
    work: Path,
    deadline_s: float | None = None,
    **overrides: Any,
) -> PipelineRun:
    """``annotate`` on a copy of ``source`` with the default configuration (stopped at
    ``deadline_s`` if it has not committed by then)."""
    root = copy_dataset(source, work)
    episodes = len(load_dataset_meta(root).episodes)
    with LocalRedis(work / "redis") as server:
        conn = redis.Redis.from_url(server.url)
        config = default_config(fleet.urls, server.url, work / "state", **overrides)
        before = int(conn.info("memory")["used_memory"])
        with ProcessSampler(conn=conn, probe=rq_probe(server.url)) as sampler:
            fleet.reset()
            clock0 = time.monotonic()
            started, started_epoch = time.perf_counter(), time.time()
            with Watchdog(deadline_s) as watchdog:
                try:
                    exit_code = annotate(config, root, progress=False, poll_s=0.1).exit_code
                except ConfigError:
                    if not watchdog.fired.is_set():
                        raise
                    exit_code = 124
            returned = time.perf_counter() - started
            usage = sampler.stop()
        finished = not watchdog.fired.is_set()
        run_id = _only_run(conn)
        # stopped: it needed more than the deadline (stopping took a moment longer)
        wall = committed_after(conn, run_id, started_epoch) if finished else float(deadline_s or 0)
        run = finish_run(
            "default",
            fleet,
            conn,
            episodes,
            wall,
            returned,
            exit_code,
            usage,
            config,
            before,
            clock0_s=clock0,
            finished=finished,
        )
        conn.close()
        return run


def spawn_role(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "narrator", *args],
            env={**env, "PYTHONPATH": str(REPO_ROOT)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT,
        )


def stop_role(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_phase(
    conn: redis.Redis,
    run_id: str,
    last: bool,
    roles: list[subprocess.Popen[bytes]],
    deadline: float | None,
) -> bool:
    """True when the phase is done; False at ``deadline`` (monotonic)."""
    timeout = time.monotonic() + PHASE_TIMEOUT_S
    while True:
        status = read_status(conn, run_id)
        if (status.committed if last else status.jobs_done >= status.jobs_total) and (
            not status.failed_jobs
        ):
            return True
        if status.failed_jobs:
            raise RuntimeError(f"phase-barrier run failed: {status.failed_jobs[:3]}")
        for proc in roles:
            if proc.poll() is not None:
                raise RuntimeError(f"a narrator role exited early with code {proc.returncode}")
        if deadline is not None and time.monotonic() > deadline:
            return False
        if time.monotonic() > timeout:
            raise RuntimeError(f"phase did not finish within {PHASE_TIMEOUT_S} s")
        time.sleep(0.1)


def run_phase_barrier(
    source: Path,
    fleet: SimFleetProcess,
    work: Path,
    deadline_s: float | None = None,
    **overrides: Any,
) -> PipelineRun:
    """All plan jobs, barrier, all interjections jobs, barrier, all vqa jobs (then commit);
    stopped at ``deadline_s`` if it has not committed by then."""
    root = copy_dataset(source, work)
    meta = load_dataset_meta(root)
    prompts = load_prompts()
    with LocalRedis(work / "redis") as server:
        conn = redis.Redis.from_url(server.url)
        config = default_config(fleet.urls, server.url, work / "state", **overrides)
        model = resolve_model(config)
        env = child_env(config, server.url)
        options = JobOptions(job_timeout_s=config.job_timeout_s, job_retries=config.job_retries)
        before = int(conn.info("memory")["used_memory"])
        roles: list[subprocess.Popen[bytes]] = []
        phase_walls: list[float] = []
        try:
            with ProcessSampler(conn=conn, probe=rq_probe(server.url)) as sampler:
                fleet.reset()
                clock0 = time.monotonic()
                started, started_epoch = time.perf_counter(), time.time()
                deadline = None if deadline_s is None else clock0 + deadline_s
                finished = True
                roles.append(
                    spawn_role(
                        ["worker", "--workers", str(config.workers),
                         "--jobs-per-worker", str(config.jobs_per_worker)],
                        env,
                        work / "logs" / "worker.log",
                    )
                )  # fmt: skip
                for index, modules in enumerate(PHASES):
                    phase_started = time.perf_counter()
                    last = index == len(PHASES) - 1
                    if last:
                        roles.append(spawn_role(["writer"], env, work / "logs" / "writer.log"))
                    settings = config.annotation.model_copy(update={"modules": modules})
                    summary = enqueue_run(
                        conn,
                        root,
                        settings=settings,
                        prompts=prompts,
                        model=model,
                        options=options,
                        staging_dir=work / "state" / "staging",
                        meta=meta,
                    )
                    finished = _wait_phase(conn, summary.run_id, last, roles, deadline)
                    phase_walls.append(time.perf_counter() - phase_started)
                    if not finished:
                        break
                wall = (
                    committed_after(conn, summary.run_id, started_epoch)
                    if finished
                    else time.perf_counter() - started
                )
        finally:
            for proc in roles:
                stop_role(proc)
        returned = time.perf_counter() - started
        usage = sampler.stop()
        run = finish_run(
            "phase-barrier",
            fleet,
            conn,
            len(meta.episodes),
            wall,
            returned,
            0 if finished else 124,
            usage,
            config,
            before,
            phase_walls,
            clock0_s=clock0,
            finished=finished,
        )
        conn.close()
        return run
