"""``narrator sample-dataset OUT``: write a synthetic LeRobot v3 dataset (parquet shards and
mp4 videos of coloured objects moved per task) to try narrator without a dataset of one's own.
The generator is narrator.samples.dataset; every option here is one of its arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from narrator.common.errors import ConfigError


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"--{name} must be at least {minimum}, got {value}")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sample-dataset", help="write a synthetic LeRobot v3 dataset")
    p.add_argument("out", type=Path, help="directory to create (must be absent or empty)")
    p.add_argument("--episodes", type=int, default=10, metavar="N", help="episodes (default: 10)")
    p.add_argument(
        "--cameras", type=int, default=2, metavar="K", help="video cameras, 0-4 (default: 2)"
    )
    p.add_argument("--fps", type=int, default=10, help="frames per second (default: 10)")
    p.add_argument(
        "--episodes-per-file",
        type=int,
        default=3,
        metavar="N",
        help="episodes per data/video file (default: 3)",
    )
    p.add_argument(
        "--chunks-size", type=int, default=2, metavar="N", help="files per chunk (default: 2)"
    )
    p.add_argument(
        "--min-length", type=int, default=25, metavar="FRAMES", help="shortest episode, in "
        "frames (default: 25)",
    )  # fmt: skip
    p.add_argument(
        "--max-length", type=int, default=90, metavar="FRAMES", help="longest episode, in "
        "frames (default: 90)",
    )  # fmt: skip
    p.add_argument("--width", type=int, default=96, metavar="PX", help="frame width, in pixels, "
                   "even (default: 96)")  # fmt: skip
    p.add_argument("--height", type=int, default=72, metavar="PX", help="frame height, in "
                   "pixels, even (default: 72)")  # fmt: skip
    p.add_argument(
        "--codec", help="video encoder, e.g. libaom-av1 or libx264 (default: AV1 if it works)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from narrator.samples.dataset import CAMERA_NAMES, make_sample_dataset

    for name in ("episodes", "fps", "episodes_per_file", "chunks_size", "min_length"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if not 0 <= args.cameras <= len(CAMERA_NAMES):
        raise ConfigError(f"--cameras must be 0-{len(CAMERA_NAMES)}, got {args.cameras}")
    if args.max_length < args.min_length:
        raise ConfigError(
            f"--max-length {args.max_length} is shorter than --min-length {args.min_length}"
        )
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory; give a new one")

    try:
        root = make_sample_dataset(
            out,
            episodes=args.episodes,
            cameras=args.cameras,
            fps=args.fps,
            episodes_per_file=args.episodes_per_file,
            chunks_size=args.chunks_size,
            min_length=args.min_length,
            max_length=args.max_length,
            width=args.width,
            height=args.height,
            codec=args.codec,
            seed=args.seed,
        )
    except (ValueError, RuntimeError) as exc:  # the generator's argument checks
        raise ConfigError(str(exc)) from exc
    sys.stdout.write(
        f"wrote a sample dataset to {root}: {args.episodes} episodes, {args.cameras} "
        f"camera(s) at {args.width}x{args.height}, {args.fps} fps\n"
    )
    return 0
