"""Processes a benchmark runs beside narrator, and what it measures of them.

* :class:`SimFleetProcess` - ``python -m narrator.simulator`` in its own process (so the
  simulated GPUs never compete with the benchmark's own interpreter for the GIL), driven
  over its admin HTTP API: reset, stats, per-request timeline.
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

import json
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import psutil  # type: ignore[import-untyped]
import redis

from tests.bench.support import REPO_ROOT, child_environment


@dataclass(frozen=True)
class SimSettings:
    """Capacity of each simulated replica (service time = base + images + output tokens)."""

    replicas: int
    slots: int
    base_s: float
    per_image_s: float
    per_output_token_s: float

    def describe(self) -> str:
        return (
            f"{self.replicas} replicas x B={self.slots} slots, service = {self.base_s} s + "
            f"{self.per_image_s} s/image + {self.per_output_token_s} s/output token"
        )


class SimFleetProcess:
    """Simulated VLM replicas in a child process; use as a context manager."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.urls: list[str] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SimFleetProcess:
        s = self.settings
        args = [
            sys.executable, "-m", "narrator.simulator",
            "--replicas", str(s.replicas), "--port", "0",
            "--slots", str(s.slots), "--base-s", str(s.base_s),
            "--per-image-s", str(s.per_image_s),
            "--per-output-token-s", str(s.per_output_token_s),
            "--log-level", "warning",
        ]  # fmt: skip
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
    if "narrator" in text and " worker" in text:
        return "worker"
    if "narrator" in text and " writer" in text:
        return "writer"
    return "other"


@dataclass
class SampledUsage:
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds
    peak_rss: dict[str, int] = field(default_factory=dict)  # role -> peak summed RSS, bytes
    redis_peak_used: int = 0  # bytes, from INFO memory
    samples: int = 0


class ProcessSampler:
    """Samples the descendants of this process in a thread until stopped."""

    def __init__(self, interval_s: float = 0.2, conn: redis.Redis | None = None) -> None:
        self.interval_s = interval_s
        self._conn = conn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._cpu: dict[int, tuple[str, float]] = {}
        self._start_cpu: dict[int, float] = {}
        self._usage = SampledUsage()

    def __enter__(self) -> ProcessSampler:
        self._sample()
        self._start_cpu = {pid: seconds for pid, (_, seconds) in self._cpu.items()}
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
        cpu: dict[str, float] = {}
        for pid, (role, seconds) in self._cpu.items():
            cpu[role] = cpu.get(role, 0.0) + seconds - self._start_cpu.get(pid, 0.0)
        self._usage.cpu_s = cpu
        return self._usage

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
        self._usage.samples += 1
