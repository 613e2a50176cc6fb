"""``narrator validate ROOT [--json]``: check an annotated dataset against the contract.

Prints a summary per rule and per episode (episodes with findings; ``--all-episodes`` for
every one) and the first findings in full; ``--json`` prints the whole report as JSON
instead. Exit code 1 when any error is found, 0 otherwise (warnings do not fail); 2 when
ROOT is no directory at all (a typo, not a broken dataset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the checker imports pyarrow: only when the command runs
    from narrator.inspection.dataset_check import CheckReport

DEFAULT_SHOWN = 20


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "validate", help="check an annotated dataset's language columns against the contract"
    )
    p.add_argument("root", type=Path, help="dataset root (holding meta/ and data/)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the full report as JSON (default: a readable summary)",
    )
    p.add_argument(
        "--all-episodes",
        action="store_true",
        help="list every episode, not only those with findings (default: only those)",
    )
    p.add_argument(
        "--show",
        type=int,
        default=DEFAULT_SHOWN,
        metavar="N",
        help=f"print the first N findings in full (default {DEFAULT_SHOWN})",
    )
    p.set_defaults(func=run)


def format_report(report: CheckReport, *, all_episodes: bool = False, show: int = 20) -> str:
    """The human-readable summary of a check (pure)."""
    lines = [
        f"{report.root}: {report.files_checked} data file(s), {len(report.episodes)} episode(s), "
        f"{report.errors} error(s), {report.warnings} warning(s)",
    ]
    by_rule = report.by_rule()
    if by_rule:
        lines.append("")
        lines.append("by rule:")
        for rule, entry in by_rule.items():
            lines.append(f"  {rule:<26} {entry['severity']:<8} {entry['count']}")
    lines.append("")
    lines.append("by episode:")
    shown = 0
    for episode, stats in sorted(report.episodes.items()):
        if not all_episodes and not (stats.errors or stats.warnings):
            continue
        shown += 1
        styles = " ".join(f"{k}={v}" for k, v in sorted(stats.styles.items()))
        lines.append(
            f"  episode {episode:>6}: {stats.frames} frames, {stats.errors} error(s), "
            f"{stats.warnings} warning(s); {styles or 'no rows'}"
        )
    clean = len(report.episodes) - shown
    if not all_episodes:
        lines.append(f"  {clean} episode(s) without findings")
    if report.findings and show > 0:
        lines.append("")
        lines.append(
            f"findings (first {min(show, len(report.findings))} of {len(report.findings)}):"
        )
        for f in report.findings[:show]:
            where = "dataset" if f.episode < 0 else f"episode {f.episode}"
            if f.timestamp is not None:
                where += f" t={f.timestamp:.6g}"
            if f.camera is not None:
                where += f" {f.camera}"
            lines.append(f"  {f.severity:<7} {f.rule:<24} {where}: {f.message}")
    lines.append("")
    lines.append("OK" if report.ok else "FAILED: the dataset breaks the contract (errors above)")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import orjson

    from narrator.common.errors import ConfigError
    from narrator.inspection.dataset_check import check_annotated_dataset

    root: Path = args.root
    if not root.exists():
        raise ConfigError(f"{root}: no such directory; give the root of a LeRobot v3 dataset")
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; give the root of a LeRobot v3 dataset")
    report = check_annotated_dataset(args.root)
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_report(report, all_episodes=args.all_episodes, show=args.show))
    return 0 if report.ok else 1
