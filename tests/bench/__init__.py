"""Performance benchmarks of narrator (``make bench`` = ``python -m tests.bench.run_all``).

Not part of ``make test``: each module measures ratios in one run and reports them against
the limits of issue 6; nothing here asserts a timing.
"""
