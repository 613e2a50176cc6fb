"""``narrator render ROOT --recipe NAME``: print the chat samples a recipe makes from an
annotated dataset (JSON lines, or a readable layout with ``--format pretty``).

Frames: ``--frames 0,10,20`` (episode-relative), ``--every N`` (every Nth frame), or every
frame by default. A recipe that depends on the camera (``vqa``) renders once per camera.
Frames where the recipe has no target render nothing and are not printed.

Invariants:
* ``sample_index`` is the frame's global dataset index, stable whatever is selected, so a
  blend picks the same component for the same frame in every invocation (all cameras of a
  frame share that component).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from narrator.common.dataset.language import EpisodeLanguage, read_episode_language
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import ConfigError
from narrator.consumer.recipes import AnyRecipe, Blend, load_recipe
from narrator.consumer.render import AmbiguousBindingError, blend_choice, render_sample


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("render", help="render training samples with a recipe")
    p.add_argument("root", type=Path, help="annotated dataset root")
    p.add_argument(
        "--recipe", required=True, help="shipped recipe name (e.g. blend, vqa) or a YAML path"
    )
    p.add_argument("--episode", type=int, action="append", help="episode index (repeatable)")
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--frames", help="comma-separated episode-relative frame indices")
    frames.add_argument("--every", type=int, metavar="N", help="every Nth frame")
    p.add_argument("--format", choices=["jsonl", "pretty"], default="jsonl")
    p.set_defaults(func=run)


def parse_frames(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        frames = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(
            f"--frames {text!r}: give comma-separated integers like 0,10,20"
        ) from None
    if not frames or frames[0] < 0:
        raise ConfigError(f"--frames {text!r}: give non-negative frame indices")
    return frames


def _frames_of(lang: EpisodeLanguage, frames: list[int] | None, every: int | None) -> list[int]:
    if frames is not None:
        return [f for f in frames if f < lang.frames]
    return list(range(0, lang.frames, every or 1))


def iter_samples(
    meta: DatasetMeta,
    recipe: AnyRecipe,
    episodes: list[int],
    *,
    frames: list[int] | None = None,
    every: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Rendered samples (with ``episode`` and ``frame`` added), in episode/frame/camera order.

    A blend picks its component per frame (sample index = global frame index); a component
    or recipe that depends on the camera renders once per camera of the dataset.
    """
    all_cameras: list[str | None] = [c.key for c in meta.cameras] or [None]
    for episode in episodes:
        lang = read_episode_language(meta, episode)
        task = meta.tasks.get(lang.task_index, "")
        first_global = meta.episode(episode).from_index
        for frame in _frames_of(lang, frames, every):
            index = first_global + frame
            chosen = blend_choice(recipe, index) if isinstance(recipe, Blend) else recipe
            for camera in all_cameras if chosen.uses_camera else [None]:
                try:
                    sample = render_sample(
                        chosen,
                        persistent=lang.persistent,
                        events=lang.events_by_frame.get(frame, []),
                        t=float(lang.timestamps[frame]),
                        task=task,
                        sample_index=index,
                        camera=camera,
                    )
                except AmbiguousBindingError as exc:
                    raise AmbiguousBindingError(f"episode {episode}, frame {frame}: {exc}") from exc
                if sample is not None:
                    yield {"episode": episode, "frame": frame, **sample}


def _block_text(block: dict[str, Any]) -> str:
    if block.get("type") == "image":
        return f"[image {block.get('camera') or 'all cameras'} @ {block.get('timestamp'):.3f}s]"
    return str(block.get("text", ""))


def format_pretty(sample: dict[str, Any]) -> str:
    head = f"== episode {sample['episode']} frame {sample['frame']} t={sample['t']:.3f}s"
    head += f" recipe={sample['recipe']}"
    if sample.get("camera"):
        head += f" camera={sample['camera']}"
    lines = [head]
    for message, stream, target in zip(
        sample["messages"], sample["streams"], sample["targets"], strict=True
    ):
        content = message.get("content")
        parts = [_block_text(b) for b in content] if isinstance(content, list) else [content or ""]
        for call in message.get("tool_calls", []):
            fn = call["function"]
            parts.append(f"<tool {fn['name']}({orjson.dumps(fn['arguments']).decode()})>")
        text = " ".join(p for p in parts if p)
        mark = "*" if target else " "
        body = text.replace("\n", "\n      ")
        lines.append(f"{mark} {message['role']} [{stream}]: {body}")
    return "\n".join(lines) + "\n\n"


def run(args: argparse.Namespace) -> int:
    if args.every is not None and args.every < 1:
        raise ConfigError("--every must be at least 1")
    recipe = load_recipe(args.recipe)
    meta = load_dataset_meta(args.root)
    episodes = args.episode if args.episode else sorted(meta.episodes)
    for episode in episodes:
        meta.episode(episode)  # a clear error for an unknown episode, before any output
    count = 0
    for sample in iter_samples(
        meta, recipe, episodes, frames=parse_frames(args.frames), every=args.every
    ):
        if args.format == "jsonl":
            sys.stdout.write(orjson.dumps(sample).decode() + "\n")
        else:
            sys.stdout.write(format_pretty(sample))
        count += 1
    sys.stderr.write(f"{count} sample(s) rendered with recipe {args.recipe}\n")
    return 0
