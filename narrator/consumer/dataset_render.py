"""Rendering a recipe over the frames of a dataset, one sample per frame, with the inputs
LeRobot gives its renderer: ``sample_idx`` = the frame's ``index``, ``t`` = its stored
``timestamp``, ``task`` = its task, and its own language lists.

The records it yields carry LeRobot's fields (``messages``, ``message_streams``,
``target_message_indices``) plus where they come from (``episode``, ``frame`` (position in
the episode), ``index``, ``timestamp``, ``task``, ``component`` for a blend, and ``source``
with the ``RenderMessagesStep`` fallback).

Invariants:
* Frame selection is checked before anything renders: a frame beyond an episode is a
  :class:`~narrator.common.errors.ConfigError` naming the episode and its length.
* Without the fallback a frame is yielded only when ``render_sample`` returns a sample (source
  ``nothing`` otherwise); with it, through ``RenderMessagesStep``'s rules, every frame that
  LeRobot keeps is yielded (``unchanged`` ones without messages; ``dropped`` ones not).
* Frames that render nothing are remembered per (component, missing binding) for
  :func:`narrator.consumer.explain.explain_nothing`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from narrator.common.dataset.meta import DatasetMeta
from narrator.common.errors import ConfigError
from narrator.consumer.explain import Misses
from narrator.consumer.frames import EpisodeInputs, read_episode_inputs, task_text
from narrator.consumer.recipes import TrainingRecipe
from narrator.consumer.render import TrainingSample, render_traced, render_training
from narrator.consumer.resolvers import AmbiguousBindingError, parse_spec


def parse_frames(text: str | None) -> list[int] | None:
    """``"0,10,20"`` -> ``[0, 10, 20]`` (sorted, unique); None when not given."""
    if text is None:
        return None
    try:
        frames = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(
            f"--frames {text!r}: give comma-separated integers like 0,10,20"
        ) from None
    if not frames or frames[0] < 0:
        raise ConfigError(f"--frames {text!r}: give non-negative frame indices like 0,10,20")
    return frames


def select_frames(
    meta: DatasetMeta, episodes: Sequence[int], frames: list[int] | None, every: int | None
) -> dict[int, list[int]]:
    """Episode -> the frames to render; raises ConfigError for a frame beyond its episode."""
    if every is not None and every < 1:
        raise ConfigError(f"--every {every}: give a step of at least 1")
    plan: dict[int, list[int]] = {}
    for episode in episodes:
        length = meta.episode(episode).length
        if frames is not None:
            beyond = [f for f in frames if f >= length]
            if beyond:
                raise ConfigError(
                    f"--frames {','.join(map(str, beyond))}: episode {episode} has {length} "
                    f"frames (0-{length - 1})"
                )
            plan[episode] = list(frames)
        else:
            plan[episode] = list(range(0, length, every or 1))
    return plan


def _image_features(recipe: TrainingRecipe) -> set[str]:
    found: set[str] = set()
    for turn in recipe.messages or []:
        for block in turn.content if isinstance(turn.content, list) else []:
            feature = block.get("feature")
            if isinstance(feature, str) and "${" not in feature:
                found.add(feature)
    return found


def camera_notes(meta: DatasetMeta, recipe: TrainingRecipe) -> list[str]:
    """One line per (component, camera key) the recipe names that the dataset lacks: LeRobot
    renders nothing from a binding on such a camera and passes an image ``feature`` through."""
    features = set(meta.info.get("features", {}))
    cameras = ", ".join(c.key for c in meta.cameras) or "none"
    notes: list[str] = []
    for name, component in recipe.components():
        uses: dict[str, list[str]] = {}
        used = component.referenced_binding_names() | set(component.bindings or {})
        for binding, spec in sorted(component.binding_specs().items()):
            camera = parse_spec(spec).camera if binding in used else None
            if camera is not None and camera not in features:
                uses.setdefault(camera, []).append(f"binding `{binding}`")
        for feature in sorted(_image_features(component) - features):
            uses.setdefault(feature, []).append("an image block")
        where = f"component {name!r}" if name is not None else "the recipe"
        for key, what in sorted(uses.items()):
            notes.append(
                f"{where} names {key} ({', '.join(what)}), which this dataset lacks "
                f"(cameras: {cameras})"
            )
    return notes


@dataclass
class RenderRun:
    """Counts and misses of one pass (filled while iterating)."""

    frames: dict[int, int] = field(default_factory=dict)  # episode -> frames visited
    sources: dict[str, int] = field(default_factory=dict)
    misses: Misses = field(default_factory=Misses)
    inputs: dict[int, EpisodeInputs] = field(default_factory=dict)

    @property
    def rendered(self) -> int:
        return self.sources.get("recipe", 0)


def iter_samples(
    meta: DatasetMeta,
    recipe: TrainingRecipe,
    plan: dict[int, list[int]],
    *,
    fallback: bool = False,
    run: RenderRun | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per frame that renders (or, with ``fallback``, that LeRobot keeps)."""
    run = run if run is not None else RenderRun()
    for episode, frames in plan.items():
        inputs = read_episode_inputs(meta, episode)
        run.inputs[episode] = inputs
        for frame in frames:
            if frame >= inputs.frames:
                raise ConfigError(
                    f"episode {episode} has {inputs.frames} rows in {inputs.data_file}, "
                    f"not the {meta.episode(episode).length} its metadata says"
                )
            run.frames[episode] = run.frames.get(episode, 0) + 1
            task = task_text(meta, inputs, frame)
            frame_inputs: dict[str, Any] = {
                "recipe": recipe,
                "persistent": inputs.persistent_rows(frame),
                "events": inputs.event_rows(frame),
                "t": inputs.t(frame),
                "sample_idx": int(inputs.index[frame]),
                "task": task,
            }
            try:
                if fallback:
                    sample = render_training(**frame_inputs)
                else:
                    traced = render_traced(**frame_inputs)
                    source = "recipe" if traced.rendered is not None else "nothing"
                    sample = TrainingSample(
                        source, traced.rendered, traced.component, traced.missing
                    )
            except AmbiguousBindingError as exc:
                raise AmbiguousBindingError(f"episode {episode} frame {frame}: {exc}") from exc
            run.sources[sample.source] = run.sources.get(sample.source, 0) + 1
            if sample.source != "recipe":
                run.misses.add(sample.component, sample.missing, episode, frame)
            if sample.rendered is None and sample.source != "unchanged":
                continue
            record: dict[str, Any] = {
                "episode": episode,
                "frame": frame,
                "index": int(inputs.index[frame]),
                "timestamp": inputs.t(frame),
                "task": task,
            }
            if recipe.blend is not None:
                record["component"] = sample.component
            if fallback:
                record["source"] = sample.source
            if sample.rendered is not None:
                record.update(sample.rendered)
            yield record
