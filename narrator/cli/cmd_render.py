"""``narrator render ROOT --recipe NAME_OR_FILE``: print the chat samples LeRobot builds from an
annotated dataset with a recipe in LeRobot's format (JSON lines, or ``--format pretty``).

Each frame gets what LeRobot's ``render_sample`` returns for it (``sample_idx`` = the frame's
``index``, ``task`` = the frame's task): ``messages``, ``message_streams`` and
``target_message_indices``, plus ``episode``, ``frame``, ``index``, ``timestamp``, ``task`` and,
for a blend, ``component``. Frames that render nothing are not printed; when nothing renders
at all, the reason goes to stderr. ``--fallback`` applies ``RenderMessagesStep``: frames the
recipe misses become LeRobot's low-level task sample (``source`` says which).

Frames: ``--frames 0,10,20`` (positions in the episode; one beyond an episode is an error),
``--every N``, or every frame.

Invariant: importing this module imports no heavy library (pyarrow, PyAV, aiohttp, redis);
:func:`run` imports what it needs, so ``narrator --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "consumer" / "recipes"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    shipped = ", ".join(sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml")))
    p = subparsers.add_parser(
        "render", help="print the chat samples LeRobot trains on, rendered with a recipe"
    )
    p.add_argument("root", type=Path, help="annotated dataset root (holding meta/ and data/)")
    p.add_argument(
        "--recipe",
        required=True,
        metavar="NAME_OR_FILE",
        help=f"a recipe YAML in LeRobot's format, or a shipped recipe: {shipped}",
    )
    p.add_argument(
        "--episode",
        type=int,
        action="append",
        metavar="N",
        help="episode index to render (repeatable; default: every episode)",
    )
    frames = p.add_mutually_exclusive_group()
    frames.add_argument(
        "--frames",
        metavar="LIST",
        help="comma-separated frame positions within the episode, e.g. 0,10,20 (default: all)",
    )
    frames.add_argument("--every", type=int, metavar="N", help="every Nth frame (default 1)")
    p.add_argument(
        "--fallback",
        action="store_true",
        help="apply LeRobot's RenderMessagesStep: frames the recipe misses train on the task "
        "as a low-level sample, as in training (default: off, such frames are skipped)",
    )
    p.add_argument(
        "--format", choices=["jsonl", "pretty"], default="jsonl", help="output (default jsonl)"
    )
    p.set_defaults(func=run)


def _block_text(block: dict[str, Any]) -> str:
    if block.get("type") == "text":
        return str(block.get("text", ""))
    extra = " ".join(f"{k}={v}" for k, v in block.items() if k != "type")
    return f"[{block.get('type')}{' ' + extra if extra else ''}]"


def format_pretty(record: dict[str, Any]) -> str:
    import orjson

    head = (
        f"== episode {record['episode']} frame {record['frame']} index {record['index']} "
        f"t={record['timestamp']:.3f}s"
    )
    if record.get("component"):
        head += f" component={record['component']}"
    if record.get("source"):
        head += f" source={record['source']}"
    lines = [head]
    if "messages" not in record:
        lines.append("  (no messages: LeRobot passes the frame through unchanged)")
    targets = set(record.get("target_message_indices", []))
    for i, message in enumerate(record.get("messages", [])):
        content = message.get("content")
        if isinstance(content, list):
            parts = [_block_text(b) for b in content]
        else:
            parts = [] if content is None else [str(content)]
        for call in message.get("tool_calls", []):
            function = call.get("function", {}) if isinstance(call, dict) else {}
            args = orjson.dumps(function.get("arguments")).decode()
            parts.append(f"<tool_call {function.get('name')}({args})>")
        mark = "*" if i in targets else " "
        stream = record["message_streams"][i]
        body = " ".join(parts).replace("\n", "\n      ")
        lines.append(f"{mark} {message['role']} [{stream}]: {body}")
    return "\n".join(lines) + "\n\n"


def run(args: argparse.Namespace) -> int:
    import orjson

    from narrator.common.dataset.reader import load_dataset_meta
    from narrator.consumer.dataset_render import (
        RenderRun,
        camera_notes,
        iter_samples,
        parse_frames,
        select_frames,
    )
    from narrator.consumer.explain import explain_nothing
    from narrator.consumer.recipes import check_renderable, load_recipe

    recipe = load_recipe(args.recipe)
    check_renderable(recipe)
    meta = load_dataset_meta(args.root)
    episodes = args.episode if args.episode else sorted(meta.episodes)
    plan = select_frames(meta, episodes, parse_frames(args.frames), args.every)
    for note in camera_notes(meta, recipe):
        sys.stderr.write(f"note: {note}\n")
    state = RenderRun()
    for record in iter_samples(meta, recipe, plan, fallback=args.fallback, run=state):
        if args.format == "jsonl":
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
        else:
            sys.stdout.write(format_pretty(record))
    visited = sum(state.frames.values())
    if args.fallback:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(state.sources.items()))
        sys.stderr.write(f"{visited} frame(s) through RenderMessagesStep: {counts}\n")
    else:
        sys.stderr.write(
            f"{state.rendered} sample(s) rendered from {visited} frame(s) with {args.recipe}\n"
        )
    if state.rendered == 0 and visited:
        for line in explain_nothing(
            meta, recipe, state.misses, state.inputs, state.frames, fallback=args.fallback
        ):
            sys.stderr.write(line + "\n")
    return 0
