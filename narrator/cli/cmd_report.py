"""``narrator report ROOT --out report.html``: one self-contained HTML page showing what an
annotated dataset holds (subtask timelines over frame thumbnails, plan and memory changes,
interjections and speech, VQA answers drawn on their frames, validation findings).

The page needs no network: CSS, JS and images are inline. ``--max-episodes`` bounds its size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from narrator.common.errors import ConfigError

DEFAULT_MAX_EPISODES = 200


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("report", help="write a self-contained HTML report of annotations")
    p.add_argument("root", type=Path, help="annotated dataset root")
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="HTML file to write (required)"
    )
    p.add_argument(
        "--max-episodes",
        type=int,
        default=DEFAULT_MAX_EPISODES,
        metavar="N",
        help=f"show the first N episodes (default {DEFAULT_MAX_EPISODES})",
    )
    p.add_argument(
        "--thumbnails",
        type=int,
        default=8,
        metavar="K",
        help="frame thumbnails per episode (default: 8)",
    )
    p.add_argument(
        "--max-vqa",
        type=int,
        default=6,
        metavar="K",
        help="VQA frames drawn per episode (default: 6)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from narrator.inspection.report.build import ReportOptions, build_report

    if args.max_episodes < 1 or args.thumbnails < 0 or args.max_vqa < 0:
        raise ConfigError("--max-episodes must be >= 1, --thumbnails and --max-vqa >= 0")
    out: Path = args.out
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the HTML file to write there")
    if not out.parent.resolve().is_dir():
        raise ConfigError(f"--out {out}: the directory {out.parent} does not exist")
    options = ReportOptions(
        max_episodes=args.max_episodes, thumbnails=args.thumbnails, max_vqa=args.max_vqa
    )
    summary = build_report(args.root, args.out, options)
    sys.stdout.write(
        f"wrote {args.out} ({summary.bytes_written // 1024} KiB): {summary.episodes_shown} of "
        f"{summary.episodes_total} episode(s), {summary.errors} validation error(s)\n"
    )
    return 0
