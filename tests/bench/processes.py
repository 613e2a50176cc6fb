"""Processes a benchmark runs beside narrator, and what it measures of them.

* :class:`SimFleetProcess` - ``python -m narrator.simulator`` in its own process (so the
  simulated GPUs never compete with the benchmark's own interpreter for the GIL), driven
  over its admin HTTP API: reset, stats, per-request timeline, per-replica faults. It asks
  for what :class:`SimSettings` says (occupancy slowdown, no capacity metric) and records in
  :attr:`SimFleetProcess.capabilities` what the simulator of this commit really did, so a
  figure never claims a model the simulator could not run.
* :class:`ProcessSampler` - a thread that samples, every ``interval_s``, the CPU time and RSS
  of every descendant of this process, grouped by role (the direct child it descends from:
  worker, writer, redis, sim), and Redis' ``used_memory`` when given a connection.

Invariant: CPU time is summed per pid from its last sample (user + system of the process
itself, never ``children_*``, so a parent that reaps its pool children does not count them
twice), less what a process had already used when sampling started (the simulated fleet
lives across several runs). A process's last ``interval_s`` before it exits can be missed, so
CPU figures are lower bounds by at most one interval per process.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import psutil  # type: ignore[import-untyped]
import redis

from tests.bench.support import REPO_ROOT, child_environment

# The calibrated latency model of issue 13: base 50 ms + 40 ms per image + 20 ms per output
# token, x (1 + 0.2 x occupancy).
CALIBRATED_BASE_S = 0.05
CALIBRATED_PER_IMAGE_S = 0.04
CALIBRATED_PER_OUTPUT_TOKEN_S = 0.02
CALIBRATED_OCCUPANCY_SLOWDOWN = 0.2


@dataclass(frozen=True)
class SimSettings:
    """Capacity of each simulated replica: service time = (base + images + output tokens)
    x (1 + occupancy_slowdown x busy share of the slots); ``publish_capacity`` puts the slot
    count on /metrics (real vLLM publishes none)."""

    replicas: int
    slots: int
    base_s: float
    per_image_s: float
    per_output_token_s: float
    occupancy_slowdown: float = 0.0
    publish_capacity: bool = False

    @classmethod
    def calibrated(cls, replicas: int, slots: int, time_scale: float = 1.0) -> SimSettings:
        """The calibrated model, every duration multiplied by ``time_scale``."""
        return cls(
            replicas=replicas,
            slots=slots,
            base_s=round(CALIBRATED_BASE_S * time_scale, 6),
            per_image_s=round(CALIBRATED_PER_IMAGE_S * time_scale, 6),
            per_output_token_s=round(CALIBRATED_PER_OUTPUT_TOKEN_S * time_scale, 6),
            occupancy_slowdown=CALIBRATED_OCCUPANCY_SLOWDOWN,
        )

    @property
    def total_slots(self) -> int:
        return self.replicas * self.slots

    def describe(self) -> str:
        text = (
            f"{self.replicas} replicas x B={self.slots} slots, service = {self.base_s} s + "
            f"{self.per_image_s} s/image + {self.per_output_token_s} s/output token"
        )
        if self.occupancy_slowdown:
            text += f", x(1 + {self.occupancy_slowdown} occupancy)"
        return text


def simulator_supports(field_name: str) -> bool:
    """Whether the simulator of this commit has the setting ``field_name`` (same code tree
    as the ``python -m narrator.simulator`` child)."""
    from narrator.simulator.config import SimConfig

    return field_name in {f.name for f in dataclasses.fields(SimConfig)}


def capacity_on_metrics(metrics_text: str) -> bool:
    """Whether a /metrics page tells the replica's capacity (a ``max_num_seqs`` figure)."""
    return "max_num_seqs" in metrics_text


class SimFleetProcess:
    """Simulated VLM replicas in a child process; use as a context manager."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.urls: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        # What the simulator really runs (see the module docstring); set on start.
        self.capabilities: dict[str, bool] = {}

    def _args(self) -> list[str]:
        s = self.settings
        args = [
            sys.executable, "-m", "narrator.simulator",
            "--replicas", str(s.replicas), "--port", "0",
            "--slots", str(s.slots), "--base-s", str(s.base_s),
            "--per-image-s", str(s.per_image_s),
            "--per-output-token-s", str(s.per_output_token_s),
            "--log-level", "warning",
        ]  # fmt: skip
        if s.occupancy_slowdown and simulator_supports("occupancy_slowdown"):
            args += ["--occupancy-slowdown", str(s.occupancy_slowdown)]
        if s.publish_capacity and simulator_supports("publish_capacity"):
            args.append("--publish-capacity")
        return args

    def __enter__(self) -> SimFleetProcess:
        s = self.settings
        args = self._args()
        self._proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=child_environment(),
            cwd=REPO_ROOT,
        )
        assert self._proc.stdout is not None
        for _ in range(s.replicas):
            line = self._proc.stdout.readline().strip()
            if not line.startswith("http"):
                self.close()
                raise RuntimeError(f"the simulated fleet did not start (got {line!r})")
            self.urls.append(line)
        metrics = self._text(f"{self.urls[0]}/metrics")
        self.capabilities = {
            "occupancy_slowdown": bool(s.occupancy_slowdown)
            and simulator_supports("occupancy_slowdown"),
            "capacity_published": capacity_on_metrics(metrics),
        }
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _get(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def _text(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=30) as response:
            return str(response.read().decode("utf-8", "replace"))

    def set_faults(self, index: int, **updates: Any) -> None:
        """Change fault settings of replica ``index`` (the simulator validates them)."""
        request = urllib.request.Request(
            f"{self.urls[index]}/admin/faults",
            data=json.dumps(updates).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    def clear_faults(self) -> None:
        for url in self.urls:
            request = urllib.request.Request(f"{url}/admin/reset?faults=1", data=b"", method="POST")
            with urllib.request.urlopen(request, timeout=30):
                pass

    def capability_note(self) -> str:
        """What the latency model and /metrics really were, in words (for a figure's note)."""
        parts = []
        if self.settings.occupancy_slowdown and not self.capabilities.get("occupancy_slowdown"):
            parts.append("occupancy slowdown NOT applied (not in this commit's simulator)")
        if self.capabilities.get("capacity_published"):
            parts.append("capacity metric published on /metrics (this commit's simulator)")
        else:
            parts.append("no capacity metric on /metrics")
        return "; ".join(parts)

    def reset(self) -> None:
        for url in self.urls:
            request = urllib.request.Request(f"{url}/admin/reset", data=b"", method="POST")
            with urllib.request.urlopen(request, timeout=30):
                pass

    def stats(self) -> list[dict[str, Any]]:
        return [self._get(f"{url}/admin/stats") for url in self.urls]

    def timelines(self) -> list[list[dict[str, Any]]]:
        return [self._get(f"{url}/admin/timeline")["requests"] for url in self.urls]

    def requests_total(self) -> int:
        return sum(int(s["requests_total"]) for s in self.stats())


def role_of(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "redis-server" in text:
        return "redis"
    if "narrator.simulator" in text:
        return "sim"
    if "tests.bench.upstream" in text:
        return "upstream"
    if "narrator" in text and " worker" in text:
        return "worker"
    if "narrator" in text and " writer" in text:
        return "writer"
    return "other"


@dataclass(frozen=True)
class Sample:
    """One sampling instant: cumulative CPU per role and of the whole machine, plus probes."""

    at_s: float  # time.monotonic()
    cpu_s: dict[str, float]  # role -> CPU seconds since sampling started
    machine_busy_s: float  # CPU seconds the whole machine was busy (every process), cumulative
    machine_total_s: float  # CPU seconds the machine had (cores x wall), cumulative
    probe: dict[str, float]  # what the probe callable returned (empty without one)


@dataclass
class SampledUsage:
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds
    peak_rss: dict[str, int] = field(default_factory=dict)  # role -> peak summed RSS, bytes
    redis_peak_used: int = 0  # bytes, from INFO memory
    samples: int = 0
    series: list[Sample] = field(default_factory=list)

    def window(self, t0: float, t1: float) -> list[Sample]:
        """The samples taken in [t0, t1] (monotonic seconds)."""
        return [s for s in self.series if t0 <= s.at_s <= t1]

    def cores(self, role: str, t0: float, t1: float) -> float:
        """Mean cores ``role`` used between the first and last sample inside [t0, t1]."""
        inside = self.window(t0, t1)
        if len(inside) < 2 or inside[-1].at_s <= inside[0].at_s:
            return 0.0
        first, last = inside[0], inside[-1]
        used = last.cpu_s.get(role, 0.0) - first.cpu_s.get(role, 0.0)
        return max(0.0, used) / (last.at_s - first.at_s)

    def machine_busy(self, t0: float, t1: float) -> float:
        """Share of the machine's cores busy (any process) inside [t0, t1]."""
        inside = self.window(t0, t1)
        if len(inside) < 2:
            return 0.0
        total = inside[-1].machine_total_s - inside[0].machine_total_s
        busy = inside[-1].machine_busy_s - inside[0].machine_busy_s
        return busy / total if total > 0 else 0.0

    def probe_mean(self, key: str, t0: float, t1: float) -> float | None:
        values = [s.probe[key] for s in self.window(t0, t1) if key in s.probe]
        return sum(values) / len(values) if values else None


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    times = psutil.cpu_times()
    total = float(sum(times))
    idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
    return total - idle, total


class ProcessSampler:
    """Samples the descendants of this process in a thread until stopped; ``probe`` (called
    from the sampling thread) adds figures of its own to each sample, e.g. queue lengths."""

    def __init__(
        self,
        interval_s: float = 0.2,
        conn: redis.Redis | None = None,
        probe: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self._conn = conn
        self._probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._cpu: dict[int, tuple[str, float]] = {}
        self._start_cpu: dict[int, float] = {}
        self._machine_start = _machine_cpu()
        self._usage = SampledUsage()

    def __enter__(self) -> ProcessSampler:
        self._sample()
        self._start_cpu = {pid: seconds for pid, (_, seconds) in self._cpu.items()}
        self._usage.series.clear()
        self._machine_start = _machine_cpu()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> SampledUsage:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._sample()
        self._usage.cpu_s = self._role_cpu()
        return self._usage

    def _role_cpu(self) -> dict[str, float]:
        cpu: dict[str, float] = {}
        for pid, (role, seconds) in self._cpu.items():
            cpu[role] = cpu.get(role, 0.0) + seconds - self._start_cpu.get(pid, 0.0)
        return cpu

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        rss: dict[str, int] = {}
        for child in psutil.Process().children(recursive=False):
            try:
                role = role_of(child.cmdline())
                tree = [child, *child.children(recursive=True)]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            for proc in tree:
                try:
                    times = proc.cpu_times()
                    memory = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                self._cpu[proc.pid] = (role, times.user + times.system)
                rss[role] = rss.get(role, 0) + memory
        for role, total in rss.items():
            self._usage.peak_rss[role] = max(self._usage.peak_rss.get(role, 0), total)
        if self._conn is not None:
            try:
                used = int(self._conn.info("memory")["used_memory"])
                self._usage.redis_peak_used = max(self._usage.redis_peak_used, used)
            except redis.RedisError:
                pass
        probed: dict[str, float] = {}
        if self._probe is not None:
            try:
                probed = self._probe()
            except Exception:  # a failed probe is a missing sample, never a failed run
                probed = {}
        machine_busy, machine_total = _machine_cpu()
        self._usage.series.append(
            Sample(
                at_s=time.monotonic(),
                cpu_s=self._role_cpu(),
                machine_busy_s=machine_busy - self._machine_start[0],
                machine_total_s=machine_total - self._machine_start[1],
                probe=probed,
            )
        )
        self._usage.samples += 1
