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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


def sample_dataset(ctx: BenchContext, **kwargs: Any) -> Path:
    """The generated dataset for these arguments (generated on first use in this run).

    Generated in a child process with a deadline: the SVT-AV1 encoder has been seen to
    deadlock (rarely, on a loaded machine) inside ``avcodec_send_frame``; a generation that
    hangs is killed, reported on stdout and started again (up to GENERATE_ATTEMPTS)."""
    name = "ds-" + "-".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
    path = ctx.work / "datasets" / name
    if (path / "meta" / "info.json").exists():
        return path
    # seconds allowed: generous for the size (a normal generation takes a tenth of this)
    pixels = int(kwargs.get("width", 96)) * int(kwargs.get("height", 72)) / (640 * 480)
    deadline_s = 60 + int(kwargs.get("episodes", 10)) * (0.3 + 5 * pixels)
    for attempt in range(1, GENERATE_ATTEMPTS + 1):
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                [sys.executable, "-c", _GENERATE, str(path), json.dumps(kwargs)],
                env=child_environment(),
                cwd=REPO_ROOT,
                timeout=deadline_s,
                check=True,
                capture_output=True,
            )
            return path
        except subprocess.TimeoutExpired:
            sys.stdout.write(
                f"[bench] generating {name} hung (attempt {attempt}); killed, starting again\n"
            )
            sys.stdout.flush()
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"generating {name} failed: {exc.stderr[-2000:]!r}") from exc
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
    import psutil  # type: ignore[import-untyped]

    return int(psutil.Process().memory_info().rss)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
