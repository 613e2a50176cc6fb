"""Settings that change answers enter the module hashes of exactly the modules they affect
(``common.runs.compute_module_hashes``): every plan setting (including the camera the plan and
interjections modules look through) recomputes plan and interjections, never vqa; the vqa
camera and frames-per-tick settings recompute vqa only."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from narrator.common.config import AnnotationSettings, PlanSettings, VQASettings
from narrator.common.prompts import load_prompts
from narrator.common.runs import compute_module_hashes

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
