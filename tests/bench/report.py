"""The benchmark table and ``results.json``, and the command line shared by every bench module.

Invariants: the table shows every figure with its limit and whether this run met it; the
JSON holds the same figures plus each benchmark's details (raw timelines are summarised,
never dumped whole); the exit status is 1 when a limit was missed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from narrator.common.logging import configure_logging
from tests.bench.support import BenchContext, BenchResult, Figure

BENCH_TIMEOUT_S = 480

BenchFunction = Callable[[BenchContext], BenchResult]


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def format_table(figures: Sequence[Figure]) -> str:
    header = ("bench", "figure", "value", "unit", "limit", "ok")
    rows = [
        (
            f.bench,
            f.name,
            _number(f.value),
            f.unit,
            f.limit or "",
            "" if f.ok is None else ("yes" if f.ok else "NO"),
        )
        for f in figures
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    notes = [f"- {f.bench} / {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def machine() -> dict[str, Any]:
    load = psutil.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(),
        "load_average_1m_at_end": round(load[0], 2),
        "load_average_at_end": [round(x, 2) for x in load],
    }


def write_results(out_dir: Path, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch directory")
    parser.add_argument("--only", default="", help="comma-separated bench names (run_all)")
    return parser.parse_args(argv)


def format_texts(texts: Sequence[tuple[str, str]]) -> str:
    """The text blocks benchmarks print after the table (traces, which limit binds)."""
    return "".join(f"\n\n{title}\n{'-' * len(title)}\n{text}" for title, text in texts)


class _Results:
    """What the run has measured so far, written out after every benchmark (so a run that is
    ended by a hung benchmark keeps the figures of the others)."""

    def __init__(self, out_dir: Path, quick: bool) -> None:
        self.out_dir = out_dir
        self.quick = quick
        self.figures: list[Figure] = []
        self.texts: list[tuple[str, str]] = []
        self.details: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.started = time.perf_counter()
        self.scratch: Path | None = None  # removed if the run is ended by a timeout
        self.load_at_start = [round(x, 2) for x in psutil.getloadavg()]

    def table(self) -> str:
        return format_table(self.figures) + format_texts(self.texts)

    def write(self, complete: bool) -> Path:
        path = write_results(
            self.out_dir,
            {
                "quick": self.quick,
                "complete": complete,
                "total_seconds": round(time.perf_counter() - self.started, 1),
                "machine": {**machine(), "load_average_at_start": self.load_at_start},
                "figures": [f.as_json() for f in self.figures],
                "texts": [{"title": title, "text": text} for title, text in self.texts],
                "details": self.details,
                "errors": self.errors,
            },
        )
        (self.out_dir / "table.txt").write_text(self.table() + "\n", encoding="utf-8")
        return path


class _BenchTimeout:
    """Ends the whole run when one benchmark overruns: every thread's stack is dumped, the
    results so far are written, and every process the run started is killed (a hung
    benchmark must not leave a simulated fleet or workers behind)."""

    def __init__(self, name: str, seconds: float, results: _Results) -> None:
        self._timer = threading.Timer(seconds, self._fire, args=(name, seconds, results))
        self._timer.daemon = True

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    @staticmethod
    def _fire(name: str, seconds: float, results: _Results) -> None:
        sys.stdout.write(f"[bench] {name} still running after {seconds:.0f} s: ending the run\n")
        faulthandler.dump_traceback(all_threads=True)
        results.errors[name] = f"timeout after {seconds:.0f} s"
        results.write(complete=False)
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        if results.scratch is not None:
            shutil.rmtree(results.scratch, ignore_errors=True)
        sys.stdout.flush()
        os._exit(1)


def run_benches(
    benches: Sequence[tuple[str, BenchFunction]],
    args: argparse.Namespace,
    timeouts: Mapping[str, float] | None = None,
) -> int:
    """Run ``benches`` in order, print the table, write results.json; 1 if a limit was missed.
    ``timeouts``: seconds per bench name before the run is ended (default BENCH_TIMEOUT_S)."""
    timeouts = timeouts or {}
    configure_logging(os.environ.get("NARRATOR_BENCH_LOG_LEVEL", "warning"))
    work = Path(tempfile.mkdtemp(prefix="narrator-bench-"))
    ctx = BenchContext(work=work, quick=args.quick)
    results = _Results(args.out, args.quick)
    results.scratch = None if args.keep_work else work
    try:
        for name, bench in benches:
            sys.stdout.write(f"[bench] {name} ...\n")
            sys.stdout.flush()
            bench_started = time.perf_counter()
            try:
                with _BenchTimeout(name, timeouts.get(name, BENCH_TIMEOUT_S), results):
                    result = bench(ctx)
            except Exception as exc:  # report and go on with the other benchmarks
                results.errors[name] = f"{type(exc).__name__}: {exc}"
                sys.stdout.write(f"[bench] {name} FAILED: {results.errors[name]}\n")
                results.write(complete=False)
                continue
            results.figures += result.figures
            results.texts += [(f"{name}: {title}", text) for title, text in result.texts]
            results.details[name] = {
                **result.details,
                "seconds": round(time.perf_counter() - bench_started, 1),
            }
            results.write(complete=False)
            sys.stdout.write(f"[bench] {name} done in {results.details[name]['seconds']} s\n")
            sys.stdout.flush()
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    table = results.table()
    sys.stdout.write("\n" + table + "\n")
    path = results.write(complete=True)
    total = time.perf_counter() - results.started
    sys.stdout.write(f"\nresults: {path} (total {total:.0f} s)\n")
    if args.keep_work:
        sys.stdout.write(f"scratch kept at {work}\n")
    missed = [f for f in results.figures if f.ok is False]
    return 1 if missed or results.errors else 0


def main_for(
    name: str, bench: BenchFunction, argv: Sequence[str] | None = None, timeout_s: float = 0
) -> int:
    """Command line of a single bench module."""
    args = parse_args(argv, f"narrator benchmark: {name}")
    return run_benches([(name, bench)], args, {name: timeout_s} if timeout_s else None)
