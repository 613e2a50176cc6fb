"""Why a recipe rendered nothing: from the ``if_present`` bindings that removed every
supervised turn on the selected frames, say which rows are missing and where the dataset has
them ("episode 3 has no `interjection` ...; episodes with one: 0 (frame 40), 2 (frame 38)").

Invariants:
* Read-only and bounded: besides the selected episodes it scans data files only until
  ``MAX_OTHER_EPISODES`` episodes with the row are found or ``MAX_SCANNED_EPISODES`` were read.
* A hint, never a rendering (see :func:`frames_with`).
* The lines are plain text for people; the first says what was selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from narrator.common.dataset.meta import DatasetMeta
from narrator.common.errors import ContractError
from narrator.consumer.frames import EpisodeInputs, read_file_inputs
from narrator.consumer.recipes import TrainingRecipe
from narrator.consumer.resolvers import ResolverCall, parse_spec, resolve

MAX_OTHER_EPISODES = 5
MAX_SCANNED_EPISODES = 500
MAX_REASONS = 3


@dataclass
class Misses:
    """Frames that rendered nothing, by (component, missing binding)."""

    frames: dict[tuple[str | None, str], dict[int, list[int]]] = field(default_factory=dict)

    def add(self, component: str | None, bindings: Sequence[str], episode: int, frame: int) -> None:
        for name in bindings:
            self.frames.setdefault((component, name), {}).setdefault(episode, []).append(frame)

    def ranked(self) -> list[tuple[tuple[str | None, str], dict[int, list[int]]]]:
        return sorted(self.frames.items(), key=lambda kv: -sum(len(f) for f in kv[1].values()))


def frame_ranges(frames: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    parts: list[str] = []
    ordered = sorted(set(frames))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(parts)


def frames_with(call: ResolverCall, inputs: EpisodeInputs) -> list[int]:
    """The frames of an episode where ``call`` selects a row (an ambiguous match counts).
    A hint, so it uses the first frame's persistent list for every frame (the list is the
    same on every frame of a valid episode) and reads events only where a frame has some."""
    if not inputs.annotated:
        return []
    candidates: list[int]
    if call.is_persistent():
        candidates = list(range(inputs.frames))
    else:
        assert inputs.events is not None
        lengths = inputs.events.value_lengths().to_numpy(zero_copy_only=False)
        candidates = [int(f) for f in (lengths > 0).nonzero()[0]]
    found: list[int] = []
    persistent = inputs.persistent_rows(0) if inputs.frames else []
    for frame in candidates:
        try:
            row = resolve(
                call, persistent=persistent, events=inputs.event_rows(frame), t=inputs.t(frame)
            )
        except ContractError:
            row = {}
        if row is not None:
            found.append(frame)
    return found


def _module_hint(call: ResolverCall) -> str:
    if call.style in {"subtask", "plan", "memory", "task_aug"}:
        return "the `plan` module writes these rows"
    if call.style == "interjection" or call.tool_name == "say":
        return "the `interjections` module writes these rows"
    if call.style == "vqa":
        return "the `vqa` module writes these rows"
    return "no narrator module writes these rows"


def _elsewhere(
    meta: DatasetMeta, call: ResolverCall, skip: set[int]
) -> tuple[dict[int, list[int]], int, bool]:
    """Episodes outside ``skip`` that have the row: {episode: frames}, episodes scanned,
    and whether the scan covered the whole dataset."""
    found: dict[int, list[int]] = {}
    scanned = 0
    for data_file in meta.files:
        for episode, inputs in read_file_inputs(meta, data_file).items():
            if episode in skip:
                continue
            scanned += 1
            frames = frames_with(call, inputs)
            if frames:
                found[episode] = frames
            if len(found) >= MAX_OTHER_EPISODES or scanned >= MAX_SCANNED_EPISODES:
                return found, scanned, False
    return found, scanned, True


def _episode_list(found: Mapping[int, list[int]]) -> str:
    return ", ".join(f"{ep} (frame {frame_ranges(frames)})" for ep, frames in sorted(found.items()))


def explain_nothing(
    meta: DatasetMeta,
    recipe: TrainingRecipe,
    misses: Misses,
    selected: Mapping[int, EpisodeInputs],
    frame_counts: Mapping[int, int],
    *,
    fallback: bool = False,
) -> list[str]:
    """Lines saying why nothing rendered on the selected frames."""
    total = sum(frame_counts.values())
    episodes = ", ".join(str(e) for e in sorted(selected))
    lines = [f"nothing rendered from {total} selected frame(s) of episode(s) {episodes}:"]
    if not any(inputs.annotated for inputs in selected.values()):
        lines.append(
            "  the dataset has no language columns; run `narrator annotate` first "
            "(or see LeRobot's task fallback with --fallback)"
        )
        return lines
    if not misses.frames:
        shown = "printed above" if fallback else "see it with --fallback"
        lines.append(
            "  the selected frames carry no language rows; LeRobot trains them on the task "
            f"fallback ({shown})"
        )
        return lines
    components = dict(recipe.components())
    cameras = {c.key for c in meta.cameras}
    for (component_name, binding), by_episode in misses.ranked()[:MAX_REASONS]:
        component = components[component_name]
        count = sum(len(f) for f in by_episode.values())
        who = f"component {component_name!r}" if component_name is not None else "the recipe"
        spec = component.binding_specs().get(binding)
        if spec is None:  # the built-in task binding
            lines.append(f"  on {count} frame(s) {who} needs `{binding}`, and the frame has none")
            continue
        call = parse_spec(spec)
        lines.append(
            f"  on {count} frame(s) {who} needs `{binding}` = {spec}, which matches no row there"
        )
        if call.camera is not None and call.camera not in cameras:
            lines.append(
                f"    the dataset has no camera {call.camera} (cameras: "
                f"{', '.join(sorted(cameras)) or 'none'}); edit the recipe's camera keys"
            )
            continue
        for episode in sorted(by_episode):
            inputs = selected[episode]
            present = frames_with(call, inputs)
            if present:
                lines.append(
                    f"    episode {episode} has `{binding}` only at frame(s) "
                    f"{frame_ranges(present)}; select them with --frames"
                )
            else:
                lines.append(f"    episode {episode} has no `{binding}`")
        found, scanned, complete = _elsewhere(meta, call, set(selected))
        if found:
            lines.append(f"    episodes with one: {_episode_list(found)}")
        elif complete:
            where = "no other episode has one" if scanned else "no episode has one"
            lines.append(f"    {where} ({_module_hint(call)})")
        else:
            lines.append(f"    none in the {scanned} other episode(s) scanned")
    return lines
