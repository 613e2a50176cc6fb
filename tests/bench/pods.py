"""A run whose worker processes are started one by one, as separate pods of a cluster would
be: the producer enqueues from this process, one ``narrator writer`` and N ``narrator
worker`` commands run beside each other, sharing nothing but Redis and the VLM URLs.

* :func:`separate_pods` - N pods of one worker process each (``narrator worker --workers
  1``): two of them hold as many jobs as ``annotate``'s default pool of two processes, so the
  run differs from the default only in that nothing ties the processes together.
* :func:`annotate_pool` - one pod started with the very arguments ``annotate`` gives its
  worker pool (for runs that need a deadline, which ``annotate`` itself cannot be given).
* :func:`run_pods` - the run: every pod serves its Prometheus metrics on a port of its own,
  read every half second (with each replica's own gauges) by a
  :class:`~tests.bench.fleet_gauges.GaugeSampler`; each pod logs to a file of its own. With
  ``deadline_s`` the run is stopped there and reported as not committed (its wall time is
  then a lower bound).

Invariant: every process this module starts is stopped (its process group) before it
returns, whatever happened.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from narrator.common.config import NarratorConfig
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.prompts import load_prompts
from narrator.common.queueing import JobOptions
from narrator.local.redis_server import LocalRedis
from narrator.local.run import child_env, resolve_model
from narrator.ops.status import read_status
from narrator.producer.enqueue import enqueue_run
from tests.bench.fleet_gauges import GaugeRow, GaugeSampler, client_requests
from tests.bench.pipeline import (
    PipelineRun,
    committed_after,
    default_config,
    finish_run,
    rq_probe,
    spawn_role,
    stop_role,
)
from tests.bench.processes import ProcessSampler, SimFleetProcess
from tests.bench.support import copy_dataset

FAILED_GRACE_S = 3.0  # a run whose status stays "failed" this long has stalled


@dataclass(frozen=True)
class Pod:
    name: str
    args: tuple[str, ...]  # arguments after ``narrator worker``


def separate_pods(count: int) -> list[Pod]:
    return [Pod(f"pod-{i}", ("--workers", "1")) for i in range(count)]


def annotate_pool(config: NarratorConfig) -> list[Pod]:
    return [
        Pod(
            "pool",
            ("--workers", str(config.workers), "--jobs-per-worker", str(config.jobs_per_worker)),
        )
    ]


@dataclass
class PodRun:
    run: PipelineRun
    committed: bool
    pods: list[str]
    gauges: list[GaugeRow] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)  # pod -> log lines
    requests_by_pod: dict[str, dict[str, float]] = field(default_factory=dict)  # -> replica
    epoch0_s: float = 0.0  # time.time() at the start
    client_pages: dict[str, str] = field(default_factory=dict)  # pod -> last metrics page
    jobs_done: int = 0  # when the run ended (committed or stopped at the deadline)
    jobs_total: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            **self.run.as_json(),
            "committed": self.committed,
            "pods": self.pods,
            "requests_by_pod": self.requests_by_pod,
            "jobs_done": self.jobs_done,
            "jobs_total": self.jobs_total,
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_committed(
    conn: redis.Redis,
    run_id: str,
    roles: list[subprocess.Popen[bytes]],
    deadline: float | None,
) -> bool:
    failed_since: float | None = None
    while True:
        status = read_status(conn, run_id)
        if status.committed:
            return True
        if status.state == "failed":
            failed_since = failed_since or time.monotonic()
            if time.monotonic() - failed_since > FAILED_GRACE_S:
                raise RuntimeError(f"the run stalled on failures: {status.failed_jobs[:3]}")
        else:
            failed_since = None
        for proc in roles:
            if proc.poll() is not None:
                raise RuntimeError(f"a narrator role exited early with code {proc.returncode}")
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def run_pods(
    source: Path,
    fleet: SimFleetProcess,
    work: Path,
    pods: Sequence[Pod] | None = None,
    *,
    urls: Sequence[str] | None = None,
    deadline_s: float | None = None,
    mode: str = "pods",
    **overrides: Any,
) -> PodRun:
    """Annotate a copy of ``source`` with ``pods`` (default: two separate pods) against
    ``urls`` (default: the fleet's), narrator's defaults otherwise."""
    pods = list(pods or separate_pods(2))
    root = copy_dataset(source, work)
    meta = load_dataset_meta(root)
    ports = {pod.name: free_port() for pod in pods}
    endpoints = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
    logs = work / "logs"
    with LocalRedis(work / "redis") as server:
        conn = redis.Redis.from_url(server.url)
        config = default_config(list(urls or fleet.urls), server.url, work / "state", **overrides)
        env = child_env(config, server.url)
        before = int(conn.info("memory")["used_memory"])
        roles: list[subprocess.Popen[bytes]] = []
        try:
            with (
                ProcessSampler(conn=conn, probe=rq_probe(server.url)) as sampler,
                GaugeSampler(fleet.urls, endpoints) as gauges,
            ):
                fleet.reset()
                clock0 = time.monotonic()
                started, epoch0 = time.perf_counter(), time.time()
                deadline = None if deadline_s is None else clock0 + deadline_s
                summary = enqueue_run(
                    conn,
                    root,
                    settings=config.annotation,
                    prompts=load_prompts(config.prompt_dir),
                    model=resolve_model(config),
                    options=JobOptions(
                        job_timeout_s=config.job_timeout_s, job_retries=config.job_retries
                    ),
                    staging_dir=work / "state" / "staging",
                    meta=meta,
                )
                roles.append(spawn_role(["writer"], env, logs / "writer.log"))
                for pod in pods:
                    pod_env = {**env, "NARRATOR_METRICS_PORT": str(ports[pod.name])}
                    roles.append(
                        spawn_role(["worker", *pod.args], pod_env, logs / f"{pod.name}.log")
                    )
                committed = _wait_committed(conn, summary.run_id, roles, deadline)
                elapsed = time.perf_counter() - started
                progress = read_status(conn, summary.run_id)
                gauges.read_once()  # the pods' final counters
        finally:
            for proc in roles:
                stop_role(proc)
        returned = time.perf_counter() - started
        usage = sampler.stop()
        wall = committed_after(conn, summary.run_id, epoch0) if committed else elapsed
        run = finish_run(
            mode,
            fleet,
            conn,
            len(meta.episodes),
            wall,
            returned,
            0 if committed else 124,
            usage,
            config,
            before,
            clock0_s=clock0,
            finished=committed,
        )
        conn.close()
    return PodRun(
        run=run,
        committed=committed,
        pods=[pod.name for pod in pods],
        gauges=gauges.rows,
        logs={
            pod.name: (logs / f"{pod.name}.log").read_text(errors="replace").splitlines()
            for pod in pods
            if (logs / f"{pod.name}.log").exists()
        },
        requests_by_pod={
            name: client_requests(page) for name, page in gauges.last_client_pages.items()
        },
        epoch0_s=epoch0,
        client_pages=dict(gauges.last_client_pages),
        jobs_done=progress.jobs_done,
        jobs_total=progress.jobs_total,
    )
