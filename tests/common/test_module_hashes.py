"""Settings that change answers enter the module hashes of exactly the modules they affect
(``common.runs.compute_module_hashes``): every plan setting (including the camera the plan and
interjections modules look through) recomputes plan and interjections, never vqa; the vqa
camera and frames-per-tick settings recompute vqa only."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from narrator.common.config import AnnotationSettings, PlanSettings, VQASettings
from narrator.common.prompts import load_prompts
from narrator.common.runs import compute_module_hashes, generation_of

PROMPTS = load_prompts()


def _other_value(model: type[Any], name: str) -> Any:
    field = model.model_fields[name]
    default = field.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default + 0.5
    choices = get_args(field.annotation)
    if choices and all(isinstance(c, str) for c in choices):
        return next(c for c in choices if c != default)
    if name == "camera":
        return "wrist"
    raise AssertionError(f"no other value known for {name}")


def _hashes(settings: AnnotationSettings) -> dict[str, str]:
    return compute_module_hashes(settings, PROMPTS, "model")


@pytest.mark.parametrize("name", list(PlanSettings.model_fields))
def test_every_plan_setting_recomputes_plan_and_interjections_only(name: str) -> None:
    base = _hashes(AnnotationSettings())
    plan = PlanSettings(**{name: _other_value(PlanSettings, name)})
    changed = _hashes(AnnotationSettings(plan=plan))
    assert changed["plan"] != base["plan"]
    assert changed["interjections"] != base["interjections"]
    assert changed["vqa"] == base["vqa"]


@pytest.mark.parametrize(
    ("name", "value"), [("vqa_cameras", ("wrist",)), ("vqa_frames_per_tick", 2)]
)
def test_vqa_camera_settings_recompute_vqa_only(name: str, value: object) -> None:
    base = _hashes(AnnotationSettings())
    changed = _hashes(AnnotationSettings(vqa=VQASettings(**{name: value})))  # type: ignore[arg-type]
    assert changed["vqa"] != base["vqa"]
    assert changed["plan"] == base["plan"] and changed["interjections"] == base["interjections"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature", 0.7), ("max_tokens", 300), ("seed", 5), ("reasoning_effort", "low")],
)
def test_request_options_recompute_every_module(name: str, value: object) -> None:
    base = _hashes(AnnotationSettings())
    changed = _hashes(AnnotationSettings(**{name: value}))  # type: ignore[arg-type]
    assert all(changed[m] != base[m] for m in base), name


def test_the_episode_selection_names_another_generation_not_other_answers() -> None:
    hashes = _hashes(AnnotationSettings())
    whole = generation_of(hashes)
    assert generation_of(hashes, ("3", "7", "10-20")) != whole
    assert generation_of(hashes, ("3", "7", "10-20")) != generation_of(hashes, ("3",))
    assert generation_of(hashes, ()) == whole
