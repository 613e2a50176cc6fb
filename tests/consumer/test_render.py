"""Tests of narrator.consumer.render against LeRobot's documented rendering semantics
(upstream ``render_sample`` and ``RenderMessagesStep``): substitution, image blocks, tool
calls, if_present, low-level-only turns, "renders to nothing", blend choice, VQA routing,
task resolution and the training fallback. Expected values are written from those rules."""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from typing import Any

import pytest

from narrator.consumer.recipes import TrainingRecipe
from narrator.consumer.render import (
    choose_component,
    render_sample,
    render_traced,
    render_training,
    resolve_task,
)
from narrator.consumer.resolvers import AmbiguousBindingError
from tests.consumer.test_resolvers import PERSISTENT, TOP, WRIST, ev, p, say

EVENTS_VQA = [
    ev("vqa", "how many cups (top)?", "user", TOP),
    ev("vqa", '{"label": "cup", "count": 3}', "assistant", TOP),
    ev("vqa", "how many cups (wrist)?", "user", WRIST),
    ev("vqa", '{"label": "cup", "count": 1}', "assistant", WRIST),
]
EVENTS_INTERJECTION = [ev("interjection", "skip wiping"), say("Skipping wiping.")]


def recipe(data: dict[str, Any]) -> TrainingRecipe:
    return TrainingRecipe.from_dict(data)


def turn(role: str, content: Any, stream: str = "high_level", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "stream": stream, **extra}


def fraction(key: str) -> float:
    """LeRobot's draw: blake2b (8-byte digest) read big-endian, as a fraction of 2**64."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def expected_component(weights: list[tuple[str, float]], key: str) -> str:
    draw = fraction(key) * sum(w for _, w in weights)
    cumulative = 0.0
    for name, weight in weights:
        cumulative += weight
        if draw < cumulative:
            return name
    return weights[-1][0]


def test_substitution_image_blocks_and_tool_calls() -> None:
    r = recipe(
        {
            "messages": [
                turn(
                    "user",
                    [
                        {"type": "image", "feature": TOP, "extra": {"k": "${task}"}},
                        {"type": "text", "text": "${task}: ${interjection}"},
                    ],
                    if_present="interjection",
                ),
                turn("assistant", "${plan}", target=True, tool_calls_from="speech"),
                turn("assistant", "[${speech}]", "low_level"),
            ]
        }
    )
    events = copy.deepcopy(EVENTS_INTERJECTION)
    out = render_sample(
        recipe=r, persistent=PERSISTENT, events=events, t=2.0, sample_idx=0, task="clean up"
    )
    assert out == {
        "messages": [
            {
                "role": "user",
                "content": [
                    # every key but the substituted string values passes through unchanged
                    {"type": "image", "feature": TOP, "extra": {"k": "${task}"}},
                    {"type": "text", "text": "clean up: skip wiping"},
                ],
            },
            {
                "role": "assistant",
                "content": "plan 0",
                # the row's tool calls, as stored: no ids, no re-shaping
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "say", "arguments": {"text": "Skipping wiping."}},
                    }
                ],
            },
            # a speech atom has no content, so ${speech} is empty
            {"role": "assistant", "content": "[]"},
        ],
        "message_streams": ["high_level", "high_level", "low_level"],
        "target_message_indices": [1],
    }
    out["messages"][1]["tool_calls"][0]["function"]["name"] = "changed"
    assert events == EVENTS_INTERJECTION  # the sample holds copies


def test_if_present_skips_and_renders_to_nothing() -> None:
    r = recipe(
        {
            "messages": [
                turn("user", "${vqa_query}", if_present="vqa_query"),
                turn("assistant", "${vqa}", target=True, if_present="vqa"),
            ]
        }
    )
    traced = render_traced(
        recipe=r, persistent=PERSISTENT, events=EVENTS_INTERJECTION, t=0.0, sample_idx=0
    )
    assert traced.rendered is None and traced.missing == ("vqa",)
    # One camera's pair: the camera-less defaults resolve.
    out = render_sample(recipe=r, persistent=PERSISTENT, events=EVENTS_VQA[:2], t=0.0, sample_idx=0)
    assert out is not None and out["messages"][1]["content"] == '{"label": "cup", "count": 3}'
    # Both cameras: the referenced camera-less default is ambiguous, as in LeRobot.
    with pytest.raises(AmbiguousBindingError):
        render_sample(recipe=r, persistent=PERSISTENT, events=EVENTS_VQA, t=0.0, sample_idx=0)


def test_unreferenced_defaults_are_not_resolved() -> None:
    r = recipe(
        {
            "messages": [
                turn("user", "${task}"),
                turn("assistant", "${subtask}", "low_level", target=True),
            ]
        }
    )
    out = render_sample(
        recipe=r, persistent=PERSISTENT, events=EVENTS_VQA, t=1.0, sample_idx=0, task="x"
    )
    assert out is not None and out["messages"][1] == {"role": "assistant", "content": "subtask 1"}


def test_low_level_only_turns_render_without_target() -> None:
    r = recipe({"messages": [turn("user", "${subtask}", "low_level", if_present="subtask")]})
    out = render_sample(recipe=r, persistent=PERSISTENT, events=[], t=0.5, sample_idx=0)
    assert out == {
        "messages": [{"role": "user", "content": "subtask 0"}],
        "message_streams": ["low_level"],
        "target_message_indices": [],
    }
    no_subtask = [row for row in PERSISTENT if row["style"] != "subtask"]
    assert render_sample(recipe=r, persistent=no_subtask, events=[], t=0.5, sample_idx=0) is None


def test_tool_calls_from_a_row_without_calls_keeps_a_bare_message() -> None:
    # Without if_present, a content-null turn whose binding has no tool calls stays in the
    # sample as {"role": ...} (LeRobot does not drop it).
    r = recipe(
        {
            "messages": [
                turn("user", "${task}"),
                {
                    "role": "assistant",
                    "stream": "high_level",
                    "target": True,
                    "tool_calls_from": "speech",
                },
            ]
        }
    )
    out = render_sample(recipe=r, persistent=PERSISTENT, events=[], t=0.0, sample_idx=0, task="go")
    assert out is not None
    assert out["messages"] == [{"role": "user", "content": "go"}, {"role": "assistant"}]
    assert out["target_message_indices"] == [1]


def _blend(weights: list[tuple[str, float]]) -> TrainingRecipe:
    return recipe(
        {
            "blend": {
                name: {
                    "weight": w,
                    "messages": [turn("user", "${task}"), turn("assistant", name, target=True)],
                }
                for name, w in weights
            }
        }
    )


def test_blend_choice_is_lerobots_hash_over_weights_in_file_order() -> None:
    weights = [("a", 0.5), ("b", 1.5), ("c", 2.0)]
    r = _blend(weights)
    chosen = Counter()
    for idx in range(3000):
        out = render_sample(recipe=r, persistent=[], events=[], t=0.0, sample_idx=idx, task="x")
        assert out is not None
        name = out["messages"][1]["content"]
        assert name == expected_component(weights, str(idx)), idx
        assert choose_component(r, idx)[0] == name
        chosen[name] += 1
    assert chosen["a"] / 3000 == pytest.approx(0.125, abs=0.03)
    assert chosen["c"] / 3000 == pytest.approx(0.5, abs=0.03)
    # The order of the file matters: the same weights listed in another order pick otherwise.
    reordered = _blend([("c", 2.0), ("b", 1.5), ("a", 0.5)])
    assert any(choose_component(reordered, i)[0] != choose_component(r, i)[0] for i in range(50))


def _vqa_component(camera: str, weight: float) -> dict[str, Any]:
    return {
        "weight": weight,
        "route": "vqa",
        "bindings": {
            "vqa_query": f"emitted_at(t, style=vqa, role=user, camera={camera})",
            "vqa": f"emitted_at(t, style=vqa, role=assistant, camera={camera})",
        },
        "messages": [
            turn(
                "user",
                [{"type": "image", "feature": camera}, {"type": "text", "text": "${vqa_query}"}],
                if_present="vqa_query",
            ),
            turn("assistant", "${vqa}", target=True, if_present="vqa"),
        ],
    }


VQA_BLEND = {
    "blend": {
        "subtask": {
            "weight": 0.98,
            "messages": [turn("user", "${task}"), turn("assistant", "${subtask}", target=True)],
        },
        "top": _vqa_component(TOP, 0.005),
        "wrist": _vqa_component(WRIST, 0.015),
    }
}


def test_vqa_route_wins_over_weighted_choice() -> None:
    r = recipe(VQA_BLEND)
    top_only = EVENTS_VQA[:2]
    for idx in range(40):
        out = render_traced(
            recipe=r, persistent=PERSISTENT, events=top_only, t=3.0, sample_idx=idx, task="x"
        )
        assert out.component == "top" and out.rendered is not None
        assert out.rendered["messages"][0]["content"][0] == {"type": "image", "feature": TOP}
    # Both cameras: chosen among the routed components by their weights, with the "vqa:" key.
    picks = Counter()
    for idx in range(2000):
        out = render_traced(
            recipe=r, persistent=PERSISTENT, events=EVENTS_VQA, t=3.0, sample_idx=idx, task="x"
        )
        assert out.component == expected_component([("top", 0.005), ("wrist", 0.015)], f"vqa:{idx}")
        picks[out.component] += 1
    assert picks["wrist"] / 2000 == pytest.approx(0.75, abs=0.04)


def test_without_vqa_the_weighted_choice_may_pick_a_vqa_component_that_renders_nothing() -> None:
    r = recipe(VQA_BLEND)
    weights = [("subtask", 0.98), ("top", 0.005), ("wrist", 0.015)]
    seen = set()
    for idx in range(400):
        out = render_traced(
            recipe=r, persistent=PERSISTENT, events=[], t=3.0, sample_idx=idx, task="x"
        )
        assert out.component == expected_component(weights, str(idx))
        seen.add(out.component)
        if out.component == "subtask":
            assert out.rendered is not None
        else:
            assert out.rendered is None and out.missing == ("vqa",)
    assert seen == {"subtask", "top", "wrist"}


def test_task_resolution() -> None:
    aug = [p("task_aug", 0.0, f"rephrasing {i}", "user") for i in range(3)]
    aug.append(p("task_aug", 0.0, "not a user row"))
    # 1. The given task wins (RenderMessagesStep always gives the frame's task).
    assert resolve_task("canonical", None, persistent=aug, sample_idx=5) == "canonical"
    assert resolve_task("", None, persistent=aug, sample_idx=5) == ""
    # 2. Else a user task_aug row picked by blake2b("task_aug:<idx>") modulo their count.
    for idx in range(30):
        digest = hashlib.blake2b(f"task_aug:{idx}".encode(), digest_size=8).digest()
        expected = f"rephrasing {int.from_bytes(digest, 'big') % 3}"
        assert resolve_task(None, {"task": "ctx"}, persistent=aug, sample_idx=idx) == expected
    # 3. Else the context's task (a mapping or an object), else None.
    assert resolve_task(None, {"task": "ctx"}, persistent=PERSISTENT, sample_idx=0) == "ctx"

    class Ctx:
        task = "attr"

    assert resolve_task(None, Ctx(), persistent=[], sample_idx=0) == "attr"
    assert resolve_task(None, None, persistent=[], sample_idx=0) is None
    r = recipe(
        {
            "messages": [
                turn("user", "[${task}]", "low_level"),
                turn("assistant", "x", target=True, if_present="task"),
            ]
        }
    )
    out = render_sample(recipe=r, persistent=[], events=[], t=0.0, sample_idx=0)
    assert out == {
        "messages": [{"role": "user", "content": "[]"}],
        "message_streams": ["low_level"],
        "target_message_indices": [],
    }


def test_a_declared_task_binding_replaces_the_task() -> None:
    r = recipe(
        {
            "bindings": {"task": "active_at(t, style=plan)"},
            "messages": [turn("user", "${task}", "low_level")],
        }
    )
    out = render_sample(
        recipe=r, persistent=PERSISTENT, events=[], t=0.0, sample_idx=0, task="given"
    )
    assert out is not None and out["messages"][0]["content"] == "plan 0"


TASK_RECIPE = {
    "messages": [
        turn("user", "${task}"),
        turn("assistant", "${interjection}", target=True, if_present="interjection"),
    ]
}


def test_render_training_applies_render_messages_step_rules() -> None:
    r = recipe(TASK_RECIPE)
    fallback = {
        "messages": [{"role": "user", "content": "pick"}],
        "message_streams": ["low_level"],
        "target_message_indices": [],
    }
    # No language at all: the task fallback, without consulting the recipe.
    empty = render_training(recipe=r, persistent=[], events=[], t=0.0, sample_idx=0, task="pick")
    assert (empty.source, empty.rendered) == ("fallback", fallback)
    always = recipe({"messages": [turn("user", "${task}"), turn("assistant", "ok", target=True)]})
    assert (
        render_training(
            recipe=always, persistent=None, events=None, t=0.0, sample_idx=0, task="pick"
        ).rendered
        == fallback
    )
    # No language and no task: the frame passes through without messages.
    none = render_training(recipe=r, persistent=[], events=[], t=0.0, sample_idx=0, task=None)
    assert (none.source, none.rendered) == ("unchanged", None)
    # Language but nothing rendered: the fallback, or dropped without a task.
    miss = render_training(
        recipe=r, persistent=PERSISTENT, events=[], t=0.0, sample_idx=0, task="pick"
    )
    assert (miss.source, miss.rendered, miss.missing) == ("fallback", fallback, ("interjection",))
    gone = render_training(recipe=r, persistent=PERSISTENT, events=[], t=0.0, sample_idx=0, task="")
    assert (gone.source, gone.rendered) == ("dropped", None)
    hit = render_training(
        recipe=r,
        persistent=PERSISTENT,
        events=EVENTS_INTERJECTION,
        t=2.0,
        sample_idx=0,
        task="pick",
    )
    assert hit.source == "recipe" and hit.rendered is not None
    assert hit.rendered["messages"][1] == {"role": "assistant", "content": "skip wiping"}
