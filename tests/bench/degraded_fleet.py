"""Wall time of `annotate` on a good replica alone vs on (good, half-hanging, dead) URLs.

    python -m tests.bench.degraded_fleet [--episodes 12] [--repeat 1]

The half-hanging replica never answers half of its requests but answers ``/health``; the dead
URL refuses connections. Issue 14.3's target is a ratio within 1.5 (the benchmark of record
belongs to ``make bench``); this script prints the measured ratio and asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from narrator.common.config import load_config
from narrator.local.redis_server import free_port
from narrator.local.run import annotate
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator import SimConfig
from narrator.simulator.fleet import start_fleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="narrator-degraded-"))
    original = make_sample_dataset(
        work / "original",
        episodes=args.episodes,
        cameras=1,
        episodes_per_file=3,
        min_length=60,
        max_length=120,
    )
    fleet = start_fleet(
        2, SimConfig(slots=16, base_s=0.05, per_image_s=0.02, per_output_token_s=0.001)
    )
    fleet.set_faults(1, hang_rate=0.5)
    dead = f"http://127.0.0.1:{free_port()}"

    def run(name: str, urls: list[str]) -> float:
        root = work / name
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root.parent / f".{name}.narrator", ignore_errors=True)
        shutil.copytree(original, root)
        config = load_config({"vlm": {"urls": urls}, "workers": 1}, env={})
        started = time.monotonic()
        result = annotate(config, root, progress=False)
        wall = time.monotonic() - started
        sys.stdout.write(f"{name}: exit {result.exit_code}, wall {wall:.1f} s\n")
        return wall

    try:
        for _ in range(args.repeat):
            good = run("good_alone", [fleet.urls[0]])
            fleet.reset()
            degraded = run("good_halfhanging_dead", [fleet.urls[0], fleet.urls[1], dead])
            stats = fleet.stats(1)
            sys.stdout.write(
                f"ratio {degraded / good:.2f} (half-hanging replica: {stats['requests_total']} "
                f"requests, {stats['hung']} hung)\n"
            )
    finally:
        fleet.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
