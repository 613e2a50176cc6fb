"""``make bench``: every benchmark in one run, a table of measured ratios, and
``bench-output/results.json``.

    python -m tests.bench.run_all             # full sizes (tens of minutes on 2 cores)
    python -m tests.bench.run_all --quick     # smoke sizes (a few minutes)
    python -m tests.bench.run_all --only fleet-4x128,degraded
    python -m tests.bench.run_all --only saturation   # the old 16-slot benchmark (issue 6)

Exit status 1 when a figure missed its limit or a benchmark failed. See BENCHMARKS.md for
what each figure means and the numbers of a reference run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tests.bench import (
    bench_client_overhead,
    bench_degraded,
    bench_fleet,
    bench_producer,
    bench_saturation,
    bench_scaling,
    bench_writer,
)
from tests.bench.report import BenchFunction, parse_args, run_benches

BENCHES: tuple[tuple[str, BenchFunction], ...] = (
    ("fleet-4x128", bench_fleet.bench_4x128),
    ("fleet-8x256", bench_fleet.bench_8x256),
    (bench_degraded.NAME, bench_degraded.bench),
    (bench_client_overhead.NAME, bench_client_overhead.bench),
    (bench_writer.NAME, bench_writer.bench),
    (bench_producer.NAME, bench_producer.bench),
    (bench_scaling.NAME, bench_scaling.bench),
)
# Run only when named with --only: superseded by the fleet benchmarks (16 slots, issue 6).
ON_REQUEST: tuple[tuple[str, BenchFunction], ...] = (
    (bench_saturation.NAME, bench_saturation.bench),
)
# Seconds a benchmark may run before it is ended (report.BENCH_TIMEOUT_S otherwise).
TIMEOUTS_S = {
    "fleet-4x128": 2400.0,
    "fleet-8x256": 3000.0,
    bench_degraded.NAME: 1200.0,
    bench_scaling.NAME: 1500.0,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "narrator benchmarks (issues 6, 13, 14)")
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    known = (*BENCHES, *ON_REQUEST)
    unknown = chosen - {name for name, _ in known}
    if unknown:
        names = ", ".join(name for name, _ in known)
        sys.stderr.write(f"unknown benchmark(s) {sorted(unknown)}; choose from {names}\n")
        return 2
    selected = [(n, b) for n, b in known if n in chosen] if chosen else list(BENCHES)
    return run_benches(selected, args, TIMEOUTS_S)


if __name__ == "__main__":
    sys.exit(main())
