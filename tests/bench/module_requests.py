"""How many VLM requests each module makes on the default sample (10 episodes, two cameras),
with the tuned subtask pipeline on (contact sheets + describe + seeded relabel), as shipped
(contact sheets + describe) and off (one image per frame, no describe, no relabel).

    python -m tests.bench.module_requests

Each configuration annotates a fresh copy of the sample with ``narrator.local.run.annotate``
(embedded Redis, real worker and writer processes) against an in-process simulated fleet,
then prints the run's per-module request counters (what ``narrator status`` sums into "VLM
requests"), the images the plan module sent (a contact sheet counts as one image) and the
simulator's count per response schema. Counts, not speed: the simulator
answers instantly, and every figure is deterministic for the same settings.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from narrator.local.run import annotate
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import start_fleet
from tests.support.pipeline_support import pipeline_config

CONFIGS: dict[str, dict[str, Any]] = {
    "on (sheets + describe + relabel)": {
        "contact_sheets": True,
        "subtask_describe_first": True,
        "subtask_seeded_relabel": True,
    },
    "shipped defaults (sheets + describe)": {},
    "off (per frame, no describe, no relabel)": {
        "contact_sheets": False,
        "subtask_describe_first": False,
        "subtask_seeded_relabel": False,
    },
}
MODULES = ("plan", "interjections", "vqa")


def measure(work: Path, sample: Path, urls: list[str], plan: dict[str, Any]) -> dict[str, int]:
    root = work / "dataset"
    shutil.copytree(sample, root)
    config = pipeline_config(
        urls, redis_url=None, state_dir=work / "state", annotation={"plan": plan}
    )
    result = annotate(config, root, progress=False)
    if result.exit_code != 0 or result.status is None:
        raise SystemExit(f"annotate failed ({result.exit_code}): {result.status}")
    return dict(result.status.counters)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="narrator-module-requests-"))
    sample = make_sample_dataset(base / "sample", episodes=10, cameras=2)
    fleet = start_fleet(2)
    rows: list[tuple[str, dict[str, int], Counter[str]]] = []
    try:
        for i, (name, plan) in enumerate(CONFIGS.items()):
            fleet.reset()
            counters = measure(base / f"run{i}", sample, fleet.urls, plan)
            schemas: Counter[str] = Counter()
            for replica in range(len(fleet.urls)):
                schemas.update(fleet.stats(replica)["by_schema"])
            rows.append((name, counters, schemas))
    finally:
        fleet.close()
        shutil.rmtree(base, ignore_errors=True)
    print("requests per module, 10 episodes x 2 cameras (narrator.samples default sample)")
    print(
        f"{'configuration':<44}"
        + "".join(f"{m:>15}" for m in MODULES)
        + f"{'total':>8}{'plan images':>13}"
    )
    for name, counters, _ in rows:
        values = [counters.get(f"{m}:requests", 0) for m in MODULES]
        images = counters.get("plan:images", 0)
        print(f"{name:<44}" + "".join(f"{v:>15}" for v in values) + f"{sum(values):>8}{images:>13}")
    print("\nrequests per response schema (simulator count)")
    for name, _, schemas in rows:
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(schemas.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
