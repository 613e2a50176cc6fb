"""Rendering one sample, as LeRobot's ``render_sample`` does (upstream
``lerobot/datasets/language_render.py``): a recipe plus the language rows of one frame become
``{"messages", "message_streams", "target_message_indices"}``, or None.

Steps, each LeRobot's:
1. A blend first tries its ``route: vqa`` components: every one that renders on this frame is
   a candidate; one candidate wins outright, several are chosen among by weight with
   ``blake2b(f"vqa:{sample_idx}", digest_size=8)``.
2. Otherwise one component is chosen by weight (file order, cumulative) with
   ``blake2b(str(sample_idx), digest_size=8)`` read big-endian as a fraction of 2**64.
3. Bindings: ``task`` (:func:`resolve_task`), then every default or declared binding the
   component references or declares, resolved at ``t``.
4. Turns: a turn whose ``if_present`` binding is None is skipped; ``${name}`` becomes the
   bound row's content ("" for none or a null content, the text itself for ``task``); string
   values of content blocks are substituted and every other key (``feature`` of an image
   block) passes through; ``tool_calls_from`` copies the bound row's ``tool_calls`` unchanged
   (no ids are added) when it has any.
5. A sample with no target turn and no low_level turn left renders to None.

Invariants: pure (no I/O); the same inputs give the same sample; :func:`render_traced`
additionally says which component was used and, for None, which ``if_present`` bindings
removed the supervised turns.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from narrator.consumer.recipes import PLACEHOLDER_RE, TASK_BINDING, RecipeError, TrainingRecipe
from narrator.consumer.resolvers import Row, resolve_spec

Rendered = dict[str, list[Any]]
Bound = dict[str, Row | str | None]


@dataclass(frozen=True)
class Rendering:
    """What :func:`render_traced` found for one frame."""

    rendered: Rendered | None
    component: str | None  # the blend component used; None for a message recipe
    missing: tuple[str, ...] = ()  # if_present bindings whose absence left nothing to train


def _fraction(key: str) -> float:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_component(recipe: TrainingRecipe, sample_idx: int) -> tuple[str | None, TrainingRecipe]:
    """The weighted choice for ``sample_idx`` (the recipe itself when it is no blend)."""
    if recipe.blend is None:
        return None, recipe
    items = list(recipe.blend.items())
    total = sum(component.weight or 0.0 for _, component in items)
    draw = _fraction(str(sample_idx)) * total
    cumulative = 0.0
    for name, component in items:
        cumulative += component.weight or 0.0
        if draw < cumulative:
            return name, component
    return items[-1]


def resolve_task(
    task: str | None,
    dataset_ctx: Any,
    *,
    persistent: Sequence[Row],
    sample_idx: int,
) -> str | None:
    """The ``${task}`` text: the given task; else a ``task_aug`` (role user) rephrasing picked
    by ``blake2b(f"task_aug:{sample_idx}")`` modulo their count; else the context's task."""
    if task is not None:
        return task
    rephrasings = [
        row for row in persistent if row.get("style") == "task_aug" and row.get("role") == "user"
    ]
    if rephrasings:
        digest = hashlib.blake2b(f"task_aug:{sample_idx}".encode(), digest_size=8).digest()
        chosen = rephrasings[int.from_bytes(digest, "big") % len(rephrasings)].get("content")
        if chosen:
            return str(chosen)
    if dataset_ctx is None:
        return None
    if isinstance(dataset_ctx, Mapping):
        value = dataset_ctx.get("task")
    else:
        value = getattr(dataset_ctx, "task", None)
    return None if value is None else str(value)


def resolve_bindings(
    recipe: TrainingRecipe,
    *,
    persistent: Sequence[Row],
    events: Sequence[Row],
    t: float,
    sample_idx: int,
    task: str | None,
    dataset_ctx: Any = None,
) -> Bound:
    bound: Bound = {
        TASK_BINDING: resolve_task(task, dataset_ctx, persistent=persistent, sample_idx=sample_idx)
    }
    declared = recipe.bindings or {}
    needed = recipe.referenced_binding_names() | set(declared)
    for name, spec in recipe.binding_specs().items():
        if name in needed:
            bound[name] = resolve_spec(spec, persistent=persistent, events=events, t=t)
    return bound


def _substitute(template: str, bound: Bound) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in bound:
            raise RecipeError(f"unknown template binding {name!r}")
        value = bound[name]
        if value is None:
            return ""
        if isinstance(value, Mapping):
            content = value.get("content")
            return "" if content is None else str(content)
        return str(value)

    return PLACEHOLDER_RE.sub(replace, template)


def _render_content(content: str | list[dict[str, Any]], bound: Bound) -> Any:
    if isinstance(content, str):
        return _substitute(content, bound)
    blocks = []
    for block in content:
        rendered = copy.deepcopy(block)
        for key, value in rendered.items():
            if isinstance(value, str):
                rendered[key] = _substitute(value, bound)
        blocks.append(rendered)
    return blocks


def render_messages(
    recipe: TrainingRecipe, bound: Bound
) -> tuple[Rendered | None, tuple[str, ...]]:
    """Expand a message recipe's turns with ``bound``; also the missing ``if_present`` names
    of skipped supervised turns (for explaining a None)."""
    assert recipe.messages is not None
    messages: list[dict[str, Any]] = []
    streams: list[str | None] = []
    targets: list[int] = []
    missing: list[str] = []
    for turn in recipe.messages:
        if turn.if_present is not None and bound.get(turn.if_present) is None:
            if (turn.target or turn.stream == "low_level") and turn.if_present not in missing:
                missing.append(turn.if_present)
            continue
        message: dict[str, Any] = {"role": turn.role}
        if turn.content is not None:
            message["content"] = _render_content(turn.content, bound)
        if turn.tool_calls_from is not None:
            row = bound.get(turn.tool_calls_from)
            calls = row.get("tool_calls") if isinstance(row, Mapping) else None
            if calls:
                message["tool_calls"] = copy.deepcopy(calls)
        if turn.target:
            targets.append(len(messages))
        messages.append(message)
        streams.append(turn.stream)
    if not targets and "low_level" not in streams:
        return None, tuple(missing)
    return {
        "messages": messages,
        "message_streams": streams,
        "target_message_indices": targets,
    }, ()


def _render_component(
    component: TrainingRecipe,
    *,
    persistent: Sequence[Row],
    events: Sequence[Row],
    t: float,
    sample_idx: int,
    task: str | None,
    dataset_ctx: Any,
) -> tuple[Rendered | None, tuple[str, ...]]:
    bound = resolve_bindings(
        component,
        persistent=persistent,
        events=events,
        t=t,
        sample_idx=sample_idx,
        task=task,
        dataset_ctx=dataset_ctx,
    )
    return render_messages(component, bound)


def _routed_vqa(
    recipe: TrainingRecipe, sample_idx: int, **inputs: Any
) -> tuple[str, Rendered] | None:
    assert recipe.blend is not None
    candidates: list[tuple[str, float, Rendered]] = []
    for name, component in recipe.blend.items():
        if component.route != "vqa":
            continue
        rendered, _ = _render_component(component, sample_idx=sample_idx, **inputs)
        if rendered is not None:
            candidates.append((name, float(component.weight or 0.0), rendered))
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0][0], candidates[0][2]
    draw = _fraction(f"vqa:{sample_idx}") * sum(weight for _, weight, _ in candidates)
    cumulative = 0.0
    for name, weight, rendered in candidates:
        cumulative += weight
        if draw < cumulative:
            return name, rendered
    return candidates[-1][0], candidates[-1][2]


def render_traced(
    *,
    recipe: TrainingRecipe,
    persistent: Sequence[Row] | None,
    events: Sequence[Row] | None,
    t: float,
    sample_idx: int,
    task: str | None = None,
    dataset_ctx: Any = None,
) -> Rendering:
    """:func:`render_sample` plus the component it used and why it rendered nothing."""
    inputs: dict[str, Any] = {
        "persistent": [dict(row) for row in persistent or [] if row is not None],
        "events": [dict(row) for row in events or [] if row is not None],
        "t": float(t),
        "task": task,
        "dataset_ctx": dataset_ctx,
    }
    if recipe.blend is not None:
        routed = _routed_vqa(recipe, sample_idx, **inputs)
        if routed is not None:
            return Rendering(routed[1], routed[0])
    name, component = choose_component(recipe, sample_idx)
    rendered, missing = _render_component(component, sample_idx=sample_idx, **inputs)
    return Rendering(rendered, name, missing)


def render_sample(
    *,
    recipe: TrainingRecipe,
    persistent: Sequence[Row] | None,
    events: Sequence[Row] | None,
    t: float,
    sample_idx: int,
    task: str | None = None,
    dataset_ctx: Any = None,
) -> Rendered | None:
    """The sample LeRobot's ``render_sample`` returns for these inputs (None: nothing)."""
    return render_traced(
        recipe=recipe,
        persistent=persistent,
        events=events,
        t=t,
        sample_idx=sample_idx,
        task=task,
        dataset_ctx=dataset_ctx,
    ).rendered


def fallback_low_level(task: Any) -> Rendered | None:
    """``RenderMessagesStep``'s fallback: a non-empty task string becomes one low-level user
    turn with no text target; anything else gives None."""
    if not isinstance(task, str) or not task:
        return None
    return {
        "messages": [{"role": "user", "content": task}],
        "message_streams": ["low_level"],
        "target_message_indices": [],
    }


@dataclass(frozen=True)
class TrainingSample:
    """What LeRobot's ``RenderMessagesStep`` makes of one frame.

    ``source``: ``recipe`` (rendered), ``fallback`` (the task as low-level supervision),
    ``unchanged`` (no language and no task: the frame trains without messages), or
    ``dropped`` (language present, nothing rendered, no task: the frame is skipped)."""

    source: str
    rendered: Rendered | None
    component: str | None
    missing: tuple[str, ...] = ()


def render_training(
    *,
    recipe: TrainingRecipe,
    persistent: Sequence[Row] | None,
    events: Sequence[Row] | None,
    t: float,
    sample_idx: int,
    task: str | None,
    dataset_ctx: Any = None,
) -> TrainingSample:
    """One frame through ``RenderMessagesStep``: no language at all goes straight to the
    fallback (the recipe is not consulted); otherwise the recipe, then the fallback."""
    if not persistent and not events:
        rendered = fallback_low_level(task)
        return TrainingSample("unchanged" if rendered is None else "fallback", rendered, None)
    traced = render_traced(
        recipe=recipe,
        persistent=persistent,
        events=events,
        t=t,
        sample_idx=sample_idx,
        task=task,
        dataset_ctx=dataset_ctx,
    )
    if traced.rendered is not None:
        return TrainingSample("recipe", traced.rendered, traced.component)
    rendered = fallback_low_level(task)
    source = "dropped" if rendered is None else "fallback"
    return TrainingSample(source, rendered, traced.component, traced.missing)
