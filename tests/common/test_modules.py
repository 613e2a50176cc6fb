"""The module registry (pure): the job graph declared once, and what reads it."""

from __future__ import annotations

import pytest

from narrator.common.config import AnnotationSettings, load_config
from narrator.common.errors import ConfigError
from narrator.common.modules import (
    MODULES,
    SPECS,
    ModuleSpec,
    _check_registry,
    dependents,
    in_order,
    module_styles,
    owner_of_style,
    selection_problem,
    spec,
)
from narrator.common.prompts import PromptSet
from narrator.common.runs import compute_module_hashes
from narrator.common.staging import MODULE_STYLES

NAMES = ["plan.subtasks", "plan.memory", "interjections.ack", "vqa.question"]
PROMPTS = PromptSet(texts={n: f"text of {n}" for n in NAMES}, sources={n: n for n in NAMES})


def test_registry_is_in_dependency_order_and_names_every_module() -> None:
    assert MODULES == ("plan", "interjections", "vqa")
    assert spec("interjections").needs == ("plan",)
    for position, s in enumerate(SPECS):
        assert all(MODULES.index(n) < position for n in s.needs)
    with pytest.raises(KeyError, match="known: plan, interjections, vqa"):
        spec("motion")


def test_a_registry_with_a_need_declared_later_is_refused() -> None:
    later = ModuleSpec("a", runner="x:y", emits={}, needs=("b",))
    with pytest.raises(ValueError, match="needs"):
        _check_registry([later, ModuleSpec("b", runner="x:y", emits={})])
    with pytest.raises(ValueError, match="unique"):
        _check_registry([ModuleSpec("Bad-Name", runner="x:y", emits={})])


def test_selection_problems_and_order() -> None:
    assert selection_problem(("plan", "interjections", "vqa")) is None
    assert selection_problem(("vqa",)) is None
    assert selection_problem(("interjections",)) == (
        "the interjections module needs the plan module"
    )
    assert "unknown modules ['motion']" in (selection_problem(("motion",)) or "")
    assert in_order({"vqa", "plan"}) == ("plan", "vqa")
    assert dependents("plan", MODULES) == ("interjections",)
    assert dependents("plan", ("plan", "vqa")) == ()
    assert dependents("vqa", MODULES) == ()


def test_config_validates_modules_with_the_registry() -> None:
    assert load_config({"annotation": {"modules": ["vqa"]}}, env={}).annotation.modules == ("vqa",)
    with pytest.raises(ConfigError, match="needs the plan module"):
        load_config({"annotation": {"modules": ["interjections"]}}, env={})
    with pytest.raises(ConfigError, match="unknown modules"):
        load_config({"annotation": {"modules": ["plan", "motion"]}}, env={})


def test_styles_and_ownership_come_from_the_registry() -> None:
    assert module_styles() == MODULE_STYLES
    assert MODULE_STYLES["interjections"] == {
        "persistent": frozenset({"plan"}),
        "events": frozenset({"interjection", None}),
    }
    assert owner_of_style("subtask") == "plan"
    assert owner_of_style("plan") == "plan"
    assert owner_of_style("plan", anchors_here={"interjection"}) == "interjections"
    assert owner_of_style(None) == "interjections"
    assert owner_of_style("vqa") == "vqa"
    assert owner_of_style("motion") is None  # another tool's rows: always kept
    assert owner_of_style("trace") is None


def test_module_hashes_follow_the_graph() -> None:
    base = compute_module_hashes(AnnotationSettings(), PROMPTS, "m")
    plan_changed = compute_module_hashes(AnnotationSettings(plan={"max_subtasks": 2}), PROMPTS, "m")
    vqa_changed = compute_module_hashes(AnnotationSettings(vqa={"vqa_hz": 1.0}), PROMPTS, "m")
    # A plan setting changes the plan and what needs it; a vqa setting only vqa.
    assert plan_changed["plan"] != base["plan"]
    assert plan_changed["interjections"] != base["interjections"]
    assert plan_changed["vqa"] == base["vqa"]
    assert {m for m in base if vqa_changed[m] != base[m]} == {"vqa"}
    only = compute_module_hashes(AnnotationSettings(modules=("vqa",)), PROMPTS, "m")
    assert only == {"vqa": base["vqa"]}
