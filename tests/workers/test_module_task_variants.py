"""Task handling of the plan module: placeholder detection (pure), the task derived from the
video (off / if_short / always), and task_aug rows (the effective task first; free
rephrasings or the five axes), against the simulated VLM fleet over real HTTP."""

from __future__ import annotations

import pytest

from narrator.common.config import AnnotationSettings, PlanSettings
from narrator.workers.modules.answers import parse_axes
from narrator.workers.modules.plan import run_plan
from narrator.workers.modules.schemas import SCHEMA_NAMES
from narrator.workers.modules.task_variants import is_placeholder_task, wants_derived_task
from tests.support.module_support import (
    contract_findings,
    image_count,
    make_context,
    prompt_text,
    sim_client,
)

AXES = (
    "synonym_paraphrase",
    "omit_arm",
    "omit_orientation",
    "omit_grasp_method",
    "combined_omissions",
)


def _settings(**plan: object) -> AnnotationSettings:
    return AnnotationSettings(plan=PlanSettings(**plan))  # type: ignore[arg-type]


def test_placeholder_and_short_tasks() -> None:
    for task in ("", "  ", "debug", "TODO", "Test.", "task_3", "episode 12", "n/a", "untitled"):
        assert is_placeholder_task(task), task
    for task in ("open the drawer", "pick", "stack the blue block on the green block"):
        assert not is_placeholder_task(task), task
    assert wants_derived_task("pick cube", "if_short", 3)
    assert not wants_derived_task("open the drawer", "if_short", 3)
    assert wants_derived_task("debug", "if_short", 1)
    assert wants_derived_task("open the top drawer", "always", 3)
    assert not wants_derived_task("debug", "off", 3)


def test_axes_answers_keep_axis_order_counts_and_drop_repeats() -> None:
    counts = {"synonym_paraphrase": 2, "omit_arm": 1, "omit_orientation": 0}
    data = {
        "synonym_paraphrase": ["Grab the cup", "grab the cup", "Take the cup", "Fetch it"],
        "omit_arm": ["Pick up the cup", "Lift the cup"],
        "omit_orientation": ["Pick the cup up"],
    }
    got = parse_axes(data, counts, "pick up the cup with the left arm")
    assert got == ["Grab the cup", "Take the cup", "Pick up the cup"]
    assert parse_axes({"synonym_paraphrase": ["pick up the cup"]}, counts, "Pick up the cup") == []
    with pytest.raises(ValueError):
        parse_axes({"omit_arm": "x"}, counts, "t")


async def test_a_placeholder_task_is_derived_from_the_video_and_used_everywhere() -> None:
    ctx = make_context(n_frames=150, task="debug")
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    derive = client.calls_named(SCHEMA_NAMES["derive_task"])
    assert len(derive) == 1
    assert '"debug"' not in prompt_text(derive[0]), "no task hint in the derive request"
    assert image_count(derive[0]) == 2, "the whole episode, 20 frames a sheet"
    derived = out.extra["task"]
    assert derived != "debug" and len(derived.split()) >= 2
    assert all(c["started"] >= derive[0]["ended"] for c in client.calls if c is not derive[0])
    for name in ("describe", "subtasks", "memory", "task_aug"):
        for call in client.calls_named(SCHEMA_NAMES[name]):
            assert derived in prompt_text(call), name
            assert '"debug"' not in prompt_text(call), name
    task_augs = [r.content for r in out.rows if r.style == "task_aug"]
    assert task_augs[0] == derived and "debug" not in task_augs
    assert contract_findings(ctx, "plan", out.rows) == []


@pytest.mark.parametrize(
    ("mode", "task", "asked"),
    [
        ("off", "debug", False),
        ("if_short", "open the top drawer", False),
        ("if_short", "pick cube", True),
        ("always", "open the top drawer", True),
    ],
)
async def test_derive_modes(mode: str, task: str, asked: bool) -> None:
    ctx = make_context(n_frames=60, task=task, settings=_settings(derive_task_from_video=mode))
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    assert bool(client.calls_named(SCHEMA_NAMES["derive_task"])) == asked
    assert (out.extra["task"] != task) == asked
    assert next(r.content for r in out.rows if r.style == "task_aug") == out.extra["task"]


async def test_a_failed_derivation_keeps_the_dataset_task() -> None:
    ctx = make_context(n_frames=60, task="debug")
    rejected = frozenset({SCHEMA_NAMES["derive_task"]})
    async with sim_client(replicas=1, rejected=rejected) as (_fleet, client):
        out = await run_plan(ctx, client)
    assert out.extra["task"] == "debug"
    assert [f.item for f in out.failures] == ["derive_task"]
    assert next(r.content for r in out.rows if r.style == "task_aug") == "debug"


async def test_ten_rephrasings_after_the_effective_task_by_default() -> None:
    ctx = make_context(n_frames=60)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    (call,) = client.calls_named(SCHEMA_NAMES["task_aug"])
    items = call["schema"]["properties"]["rephrasings"]
    assert items["minItems"] == items["maxItems"] == 10
    assert "exactly 10" in prompt_text(call)
    task_augs = [r.content for r in out.rows if r.style == "task_aug"]
    assert task_augs[0] == ctx.task and 2 <= len(task_augs) <= 11
    assert len({t.casefold() for t in task_augs}) == len(task_augs), "no repeats"


async def test_axes_mode_asks_once_with_upstream_counts() -> None:
    ctx = make_context(
        n_frames=60,
        task="grasp the mug by its handle with the left arm and set it upright",
        settings=_settings(task_aug_axes=True),
    )
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    assert client.calls_named(SCHEMA_NAMES["task_aug"]) == []
    (call,) = client.calls_named(SCHEMA_NAMES["task_aug_axes"])
    props = call["schema"]["properties"]
    assert list(props) == list(AXES)
    assert [props[a]["maxItems"] for a in AXES] == [3, 3, 2, 2, 2]
    text = prompt_text(call)
    assert all(f'"{axis}" (at most' in text for axis in AXES)
    task_augs = [r.content for r in out.rows if r.style == "task_aug"]
    assert task_augs[0] == ctx.task and len(task_augs) <= 1 + 12
    assert len({t.casefold() for t in task_augs}) == len(task_augs)
    assert contract_findings(ctx, "plan", out.rows) == []


async def test_no_variants_no_rows() -> None:
    ctx = make_context(n_frames=60, settings=_settings(task_aug_count=0))
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    assert not [r for r in out.rows if r.style == "task_aug"]
    assert client.calls_named(SCHEMA_NAMES["task_aug"]) == []
