"""The docker-compose roles, run as local processes: does the stack annotate a dataset?

No Docker here, so the test takes each narrator service of deploy/docker-compose.yml (its
command and environment, as Compose would interpolate them from a ``.env``), and starts
``narrator <command>`` with that environment on this machine. Only what a container network
would provide is rewired: Redis is the test server, each vLLM service is a replica of the
simulated VLM, the ``/datasets`` bind mount is a temporary directory, and metrics ports are
free local ports instead of one port per container.

The run must finish: ``narrator status`` says done, every shard has both language columns,
and the Prometheus endpoints the compose file's prometheus.yml scrapes serve narrator metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq
import pytest

from narrator.local.redis_server import free_port
from narrator.samples.dataset import make_sample_dataset
from tests.support.deploy_support.compose import (
    bind_mounts,
    load_compose,
    service_command,
    service_environment,
)

DATASET = "sample"
LANGUAGE_COLUMNS = ("language_persistent", "language_events")
RUN_DEADLINE_S = 60.0
STOP_TIMEOUT_S = 20.0
NARRATOR = Path(sys.executable).with_name("narrator")


@dataclass
class Processes:
    """Child processes started by this test, stopped (by handle) at teardown."""

    logs_dir: Path
    started: dict[str, tuple[subprocess.Popen[bytes], Path]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.logs_dir / f"{name}.log"
        with log_path.open("wb") as log_file:
            # A session of its own: the role's children (rq pool, scheduler) share its group.
            process = subprocess.Popen(
                argv,
                env=dict(env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started[name] = (process, log_path)
        return process

    def assert_alive(self) -> None:
        for name, (process, _) in self.started.items():
            assert process.poll() is None, f"{name} exited ({process.returncode}):\n{self.tails()}"

    def tails(self) -> str:
        parts = []
        for name, (_, log_path) in self.started.items():
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            parts.append(f"--- {name} ---\n{text[-3000:]}")
        return "\n".join(parts)

    def stop(self, name: str, timeout_s: float) -> int | None:
        """SIGTERM the role's main process, as `docker stop` and the kubelet do (PID 1 only).

        Returns its exit code, or None if it outlived the wait.
        """
        process, _ = self.started[name]
        if process.poll() is None:
            process.terminate()
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self) -> None:
        for name, (process, _) in self.started.items():
            if self.stop(name, timeout_s=10) is None:
                process.kill()
                process.wait()
            with contextlib.suppress(ProcessLookupError):  # children left in its group
                os.killpg(process.pid, signal.SIGKILL)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    group = Processes(tmp_path)
    yield group
    group.stop_all()


def base_env() -> dict[str, str]:
    """What any process needs from this machine; no NARRATOR_* leaks in from the outside."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    return {key: os.environ[key] for key in keep if key in os.environ}


def start_simulated_vlm(processes: Processes, replicas: int, model: str) -> list[str]:
    """Start ``python -m narrator.simulator`` and return its replica URLs (one per line)."""
    argv = [sys.executable, "-m", "narrator.simulator", "--replicas", str(replicas), "--port", "0"]
    argv += ["--model", model]
    process = subprocess.Popen(
        argv,
        env=base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    processes.started["simvlm"] = (process, processes.logs_dir / "simvlm.log")
    stdout: IO[bytes] | None = process.stdout
    assert stdout is not None
    urls = [stdout.readline().decode().strip() for _ in range(replicas)]
    assert all(url.startswith("http://") for url in urls), f"simvlm printed {urls}"
    return urls


def localize(value: str, mounts: Mapping[str, str]) -> str:
    """A container path under a bind-mount target, as the host path it is mounted from."""
    for target, source in mounts.items():
        if value == target or value.startswith(target + "/"):
            return source + value[len(target) :]
    return value


def role_process_spec(
    service: Mapping[str, Any], overrides: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of one compose service run as a local ``narrator`` process."""
    mounts = {m["target"]: str(Path(m["source"])) for m in bind_mounts(service)}
    env = base_env()
    env.update({k: localize(v, mounts) for k, v in service_environment(service).items()})
    env.update(overrides)
    argv = [str(NARRATOR), *(localize(arg, mounts) for arg in service_command(service))]
    return argv, env


def vlm_url_overrides(compose_urls: str, sim_urls: list[str]) -> str:
    """NARRATOR_VLM_URLS for the local run: the i-th URL the compose file lists becomes the
    i-th simulated replica, so the workers see as many replicas as the stack has."""
    compose_list = compose_urls.split(",")
    assert len(compose_list) == len(sim_urls), (compose_list, sim_urls)
    return ",".join(sim_urls)


def dataset_is_annotated(root: Path) -> bool:
    """True once meta/info.json declares both columns (the writer's last commit step)."""
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except json.JSONDecodeError:  # caught mid-rewrite; look again
        return False
    if not all(column in info["features"] for column in LANGUAGE_COLUMNS):
        return False
    for shard in sorted((root / "data").rglob("*.parquet")):
        names = pq.read_schema(shard).names
        assert all(column in names for column in LANGUAGE_COLUMNS), f"{shard} lacks a column"
    return True


CONSOLE_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S* \[")


def assert_structured_logs(log_path: Path, role: str) -> None:
    """narrator's structlog lines are JSON objects with an event (no console layout)."""
    lines = log_path.read_text(errors="replace").splitlines()
    console = [line for line in lines if CONSOLE_LOG_LINE.match(line)]
    assert not console, (
        f"{role} logs in console layout despite NARRATOR_LOG_FORMAT=json: {console[:3]}"
    )
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert any("event" in event for event in events), f"{role} wrote no JSON log line"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def metric_total(exposition: str, name: str) -> float:
    """Sum of every sample of ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_compose_roles_annotate_a_sample_dataset(
    tmp_path: Path, redis_url: str, processes: Processes
) -> None:
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    make_sample_dataset(datasets / DATASET, episodes=4, cameras=1)
    dot_env = {
        "REDIS_PASSWORD": "smoke-test-password",
        "NARRATOR_DATASET": DATASET,
        "NARRATOR_DATASETS_DIR": str(datasets),
    }
    services = load_compose(dot_env)["services"]
    # The simulated VLM stands in for the vLLM services, serving the model they are told to.
    vllm = [svc for name, svc in services.items() if name.startswith("vllm-")]
    models = {(cmd := service_command(svc))[cmd.index("--model") + 1] for svc in vllm}
    assert len(models) == 1, f"vLLM replicas serve different models: {models}"
    sim_urls = start_simulated_vlm(processes, len(vllm), models.pop())
    vlm_urls = vlm_url_overrides(
        service_environment(services["worker"])["NARRATOR_VLM_URLS"], sim_urls
    )
    metrics_ports = {"worker": free_port(), "writer": free_port()}

    def spec(role: str) -> tuple[list[str], dict[str, str]]:
        overrides = {"NARRATOR_REDIS_URL": redis_url, "NARRATOR_VLM_URLS": vlm_urls}
        if role in metrics_ports:
            overrides["NARRATOR_METRICS_PORT"] = str(metrics_ports[role])
        return role_process_spec(services[role], overrides)

    for role in ("writer", "worker"):
        processes.start(role, *spec(role))

    argv, env = spec("producer")
    assert argv[1:] == ["enqueue", str(datasets / DATASET)]
    enqueue = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert enqueue.returncode == 0, f"enqueue failed: {enqueue.stderr}"
    run_id = enqueue.stdout.strip().splitlines()[-1]

    deadline = time.monotonic() + RUN_DEADLINE_S
    while not dataset_is_annotated(datasets / DATASET):
        processes.assert_alive()
        assert time.monotonic() < deadline, f"run {run_id} did not finish:\n{processes.tails()}"
        time.sleep(0.5)

    # `docker compose run --rm producer status RUN` runs this in the producer's environment.
    status = subprocess.run(
        [str(NARRATOR), "status", run_id], env=env, capture_output=True, text=True, timeout=30
    )
    assert status.returncode == 0, status.stderr
    assert re.search(r"\bstate:\s*done\b", status.stdout), status.stdout

    processes.assert_alive()
    writer_metrics = scrape(metrics_ports["writer"])
    assert metric_total(writer_metrics, "narrator_shards_written_total") >= 1
    worker_metrics = scrape(metrics_ports["worker"])
    assert metric_total(worker_metrics, "narrator_vlm_requests_total") >= 1, (
        "the worker's /metrics (what Prometheus scrapes) shows no VLM requests"
    )

    # The compose file sets NARRATOR_LOG_FORMAT=json: narrator's own log lines are JSON.
    for role in ("worker", "writer"):
        assert_structured_logs(processes.started[role][1], role)

    # `docker compose stop` and a KEDA scale-down send SIGTERM: idle roles must exit promptly.
    for role in ("worker", "writer"):
        code = processes.stop(role, timeout_s=STOP_TIMEOUT_S)
        assert code == 0, f"idle {role} did not exit cleanly on SIGTERM within {STOP_TIMEOUT_S} s"
