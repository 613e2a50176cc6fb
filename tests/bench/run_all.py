"""``make bench``: every benchmark in one run, a table of measured ratios, and
``bench-output/results.json``.

    python -m tests.bench.run_all             # full sizes (a few minutes on 2 cores)
    python -m tests.bench.run_all --quick     # smoke sizes (about 2 minutes)
    python -m tests.bench.run_all --only writer,producer

Exit status 1 when a figure missed its limit or a benchmark failed. See BENCHMARKS.md for
what each figure means and the numbers of a reference run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tests.bench import (
    bench_client_overhead,
    bench_producer,
    bench_saturation,
    bench_scaling,
    bench_writer,
)
from tests.bench.report import BenchFunction, parse_args, run_benches

BENCHES: tuple[tuple[str, BenchFunction], ...] = (
    (bench_saturation.NAME, bench_saturation.bench),
    (bench_client_overhead.NAME, bench_client_overhead.bench),
    (bench_writer.NAME, bench_writer.bench),
    (bench_producer.NAME, bench_producer.bench),
    (bench_scaling.NAME, bench_scaling.bench),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "narrator benchmarks (issue 6)")
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = chosen - {name for name, _ in BENCHES}
    if unknown:
        known = ", ".join(name for name, _ in BENCHES)
        sys.stderr.write(f"unknown benchmark(s) {sorted(unknown)}; choose from {known}\n")
        return 2
    selected = [(n, b) for n, b in BENCHES if not chosen or n in chosen]
    return run_benches(selected, args)


if __name__ == "__main__":
    sys.exit(main())
