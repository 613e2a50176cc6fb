"""Every benchmark module imports: ``make bench`` is not part of ``make test``, so a rename in
the code it drives (``VideoFrameSource`` -> ``EpisodeFrameSource`` once broke the upstream-like
orchestration) must fail here, not at the start of a long benchmark run."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).parent
MODULES = sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("test_"))


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name: str) -> None:
    importlib.import_module(f"tests.bench.{name}")
