"""``narrator demo``: make a sample dataset, start the simulated VLM, annotate, summarise.

Everything runs locally and needs no GPU and no network: the VLM is the project's simulated
OpenAI-compatible server (two replicas on loopback ports), Redis is the embedded one.

Invariant: ``--out`` is emptied only when it is a previous demo output (it holds the
``.narrator-demo`` marker this command writes, or only what a demo writes); any other
non-empty directory is refused, so a mistyped ``--out`` never deletes a user's files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from narrator.common.errors import ConfigError

MARKER = ".narrator-demo"
DEMO_ENTRIES = frozenset({"dataset", "state", MARKER})  # what a demo writes into --out
DEMO_CAMERAS = (0, 1, 2)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="sample dataset + simulated VLM + annotate, end to end")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        metavar="DIR",
        help="working directory: new, empty or a previous demo output, which is replaced "
        "(default: demo-output)",
    )
    p.add_argument("--episodes", type=int, default=6, metavar="N", help="episodes (default: 6)")
    p.add_argument(
        "--cameras", type=int, default=2, metavar="K", help="video cameras, 0-2 (default: 2)"
    )
    p.add_argument(
        "--workers", type=int, default=2, metavar="N", help="worker processes (default: 2)"
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="reuse the dataset of a previous demo in --out (default: make a new one)",
    )
    p.set_defaults(func=run)


def is_demo_output(out: Path) -> bool:
    """Whether ``out`` is something this command made (and may therefore replace)."""
    if (out / MARKER).is_file():
        return True
    entries = {p.name for p in out.iterdir()}
    # Outputs of demos from before the marker existed: only a dataset and a state dir.
    return bool(entries) and entries <= DEMO_ENTRIES and (out / "dataset" / "meta").is_dir()


def prepare_out(out: Path, *, keep: bool) -> None:
    """Make ``out`` ready for a demo; refuse (ConfigError) anything that is not ours."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()):
        if not is_demo_output(out):
            raise ConfigError(
                f"--out {out} is not empty and is not a narrator demo output (no {MARKER} "
                "file); refusing to delete it. Give a new or empty directory with --out"
            )
        if not keep:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `narrator demo`; the next demo may replace it\n")


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {args.episodes}")
    if args.cameras not in DEMO_CAMERAS:
        raise ConfigError(f"--cameras must be 0, 1 or 2, got {args.cameras}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    out: Path = args.out.resolve()
    prepare_out(out, keep=args.keep)

    from narrator.common.config import load_config
    from narrator.common.lifecycle import install_stop_handlers
    from narrator.local.run import annotate
    from narrator.samples.dataset import make_sample_dataset
    from narrator.simulator.fleet import start_fleet

    install_stop_handlers()
    root = out / "dataset"
    if not root.exists():
        make_sample_dataset(root, episodes=args.episodes, cameras=args.cameras)
    fleet = start_fleet(2)
    try:
        config = load_config(
            {
                "vlm": {"urls": list(fleet.urls)},
                "workers": args.workers,
                "state_dir": str(out / "state"),
            }
        )
        result = annotate(config, root, progress=True)
    finally:
        fleet.close()
    if result.exit_code != 0:
        return result.exit_code
    sys.stdout.write(summarise(root, result.run_id))
    return 0


def _question_first(item: dict[str, Any]) -> tuple[str, str, int]:
    """Display order of one frame's events: by style and camera, a VQA question before its
    answer (the dataset stores events by style, role, camera: answers first)."""
    return (item["style"] or "", item["camera"] or "", 0 if item["role"] == "user" else 1)


def summarise(root: Path, run_id: str) -> str:
    """Counts by style, a few rows of the first episode, and the validator's verdict."""
    import pyarrow.parquet as pq

    from narrator.common.contract import (
        EVENTS_COLUMN,
        PERSISTENT_COLUMN,
        row_from_dict,
        speech_text,
    )
    from narrator.inspection.dataset_check import check_annotated_dataset

    styles: Counter[str] = Counter()
    samples: list[str] = []
    frames = 0
    episodes_seen: set[int] = set()
    for shard in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(
            shard, columns=["episode_index", "frame_index", PERSISTENT_COLUMN, EVENTS_COLUMN]
        )
        frames += table.num_rows
        eps = table.column("episode_index").to_pylist()
        fidx = table.column("frame_index").to_pylist()
        pers = table.column(PERSISTENT_COLUMN).to_pylist()
        events = table.column(EVENTS_COLUMN).to_pylist()
        for ep, frame, p_rows, e_rows in zip(eps, fidx, pers, events, strict=True):
            first = not episodes_seen
            if ep not in episodes_seen:
                episodes_seen.add(ep)
                for item in p_rows:
                    styles[item["style"]] += 1
                    if first:
                        text = (item["content"] or "").replace("\n", " | ")
                        samples.append(f"  t={item['timestamp']:5.2f}s {item['style']:<12} {text}")
            for item in sorted(e_rows, key=_question_first):
                row = row_from_dict(item)
                styles[row.style or "speech"] += 1
                if ep == min(episodes_seen) and len(samples) < 24:
                    text = speech_text(row) if row.style is None else row.content
                    where = f"frame {frame:>3}"
                    label = f"{row.style or 'speech (say)'}{'@' + row.camera if row.camera else ''}"
                    samples.append(f"  {where} {label:<12} {row.role:>9}: {text}")
    report = check_annotated_dataset(root)
    lines = [
        f"narrator demo: run {run_id} annotated {len(episodes_seen)} episodes, {frames} frames",
        f"dataset: {root}",
        "rows by style: " + ", ".join(f"{k}={v}" for k, v in sorted(styles.items())),
        f"validate: {report.errors} error(s), {report.warnings} warning(s)",
        f"episode {min(episodes_seen)} (persistent rows, then events):",
        *samples,
        "",
    ]
    return "\n".join(lines)
