"""What every benchmark shares: the figures it reports, its context, cached sample datasets,
and measurements in a fresh Python process.

Invariants:
* A :class:`Figure` is one measured number; ``limit`` (when set) is the bound issue 6 puts on
  it, and ``ok`` says whether this run met it. Nothing here raises on a missed limit: the
  table says so and ``run_all`` exits non-zero.
* Datasets are generated once per ``run_all`` invocation (deterministic generator, same
  arguments give the same bytes) and copied before a run rewrites them.
* :func:`measure_in_fresh_process` runs ``python -m <module> --child ...`` and reads the one
  JSON object the child prints last, so peak RSS belongs to that measurement alone.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parents[2]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Figure:
    """One measured number of one benchmark."""

    bench: str
    name: str
    value: float
    unit: str
    limit: str | None = None  # "<op> <bound>", e.g. ">= 0.90"
    note: str = ""

    @property
    def ok(self) -> bool | None:
        if self.limit is None:
            return None
        op, bound = self.limit.split()
        return _OPS[op](self.value, float(bound))

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class BenchResult:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # (title, text) blocks printed after the table, e.g. a trace or which limit binds
    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(
        self,
        bench: str,
        name: str,
        value: float,
        unit: str,
        limit: str | None = None,
        note: str = "",
    ) -> Figure:
        figure = Figure(bench, name, value, unit, limit, note)
        self.figures.append(figure)
        return figure


@dataclass(frozen=True)
class BenchContext:
    """Where a benchmark works and how big it runs (``quick``: a smoke-sized run)."""

    work: Path  # scratch space, removed by run_all at the end
    quick: bool = False

    def scratch(self, name: str) -> Path:
        """A fresh, empty directory under the work directory."""
        path = self.work / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


_GENERATE = (
    "import json, sys\n"
    "from narrator.samples.dataset import make_sample_dataset\n"
    "make_sample_dataset(sys.argv[1], **json.loads(sys.argv[2]))\n"
)
GENERATE_ATTEMPTS = 3
STALL_S = 30.0  # a generation whose CPU time does not move for this long is hung
GENERATE_MAX_S = 3600.0


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _generate_once(path: Path, kwargs: dict[str, Any]) -> bool:
    """Generate in a child; False if it hung (its CPU time stood still for STALL_S)."""
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            [sys.executable, "-c", _GENERATE, str(path), json.dumps(kwargs)],
            env=child_environment(),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        watched = psutil.Process(child.pid)
        started = last_move = time.monotonic()
        last_cpu = 0.0
        while child.poll() is None:
            time.sleep(1.0)
            try:
                cpu = _cpu_s(watched)
            except psutil.Error:
                continue
            now = time.monotonic()
            if cpu > last_cpu + 0.05:
                last_cpu, last_move = cpu, now
            if now - last_move > STALL_S or now - started > GENERATE_MAX_S:
                child.kill()
                child.wait()
                return False
        if child.returncode != 0:
            err.seek(0)
            tail = err.read()[-2000:].decode("utf-8", "replace")
            raise RuntimeError(f"generating {path.name} failed: {tail}")
    return True


def sample_dataset(ctx: BenchContext, **kwargs: Any) -> Path:
    """The generated dataset for these arguments (generated on first use in this run).

    Generated in a child process that is watched: the SVT-AV1 encoder of this PyAV build has
    been seen to deadlock inside ``avcodec_send_frame`` (waiting on a semaphore, no CPU
    used); a generation whose CPU time stands still for STALL_S is killed, reported on
    stdout and started again (up to GENERATE_ATTEMPTS). A slow generation on a busy machine
    is left alone."""
    name = "ds-" + "-".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    path = ctx.work / "datasets" / name
    if (path / "meta" / "info.json").exists():
        return path
    for attempt in range(1, GENERATE_ATTEMPTS + 1):
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if _generate_once(path, kwargs):
            return path
        sys.stdout.write(
            f"[bench] generating {name} hung (no CPU used for {STALL_S:.0f} s, attempt "
            f"{attempt}); killed, starting again\n"
        )
        sys.stdout.flush()
    raise RuntimeError(f"generating {name} hung {GENERATE_ATTEMPTS} times")


def copy_dataset(source: Path, target_parent: Path) -> Path:
    """A private copy of ``source`` (runs rewrite their dataset) at ``target_parent/dataset``."""
    target = target_parent / "dataset"
    shutil.copytree(source, target)
    return target


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed:`` ... ``elapsed()`` is seconds since entering."""
    started = time.perf_counter()
    yield lambda: time.perf_counter() - started


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("NARRATOR_LOG_LEVEL", "warning")
    return env


def measure_in_fresh_process(module: str, args: list[str], timeout_s: float = 300) -> Any:
    """Run ``python -m module --child *args`` and return the JSON object it printed last."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--child", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=child_environment(),
        cwd=REPO_ROOT,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"measurement {module} {' '.join(args)} failed (exit {proc.returncode}): "
            f"{proc.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (``VmHWM``).

    Not ``getrusage().ru_maxrss``: Linux carries that high-water mark across fork and exec,
    so a child of a big parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def current_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
