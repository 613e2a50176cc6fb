"""Tests of common.render (resolvers, substitution, skipping, blends and the shipped recipes
over one hand-built episode) and of ``narrator render`` over an annotated dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from narrator.cli.cmd_render import iter_samples
from narrator.common.contract import (
    SAY_TOOL,
    LanguageRow,
    sort_events,
    sort_persistent,
    speech_atom,
)
from narrator.common.dataset.reader import load_dataset_meta
from narrator.consumer.recipes import (
    Blend,
    Recipe,
    load_recipe,
    parse_binding,
    shipped_recipe_names,
)
from narrator.consumer.render import AmbiguousBindingError, blend_choice, render_sample, resolve
from tests.support.annotated_fixture import make_annotated_dataset

TOP, WRIST = "observation.images.top", "observation.images.wrist"
TS = [float(v) for v in np.arange(50, dtype=np.float32) / np.float32(10)]
TASK = "put the cup on the plate"
BBOX = {"detections": [{"label": "cup", "bbox_format": "xyxy", "bbox": [10, 20, 60, 90]}]}


def p(style: str, frame: int, content: str, role: str = "assistant") -> LanguageRow:
    return LanguageRow(role, content, style, TS[frame], None, None)


def ev(style: str, content: str, role: str = "user", camera: str | None = None) -> LanguageRow:
    return LanguageRow(role, content, style, None, camera, None)


PERSISTENT = sort_persistent(
    [
        p("subtask", 0, "reach the cup"),
        p("plan", 0, "1. reach\n2. grasp\n3. place"),
        p("subtask", 10, "grasp the cup"),
        p("memory", 10, "reached the cup"),
        p("subtask", 20, "place the cup on the plate"),
        p("memory", 20, "cup in hand"),
        p("plan", 20, "1. place it gently"),
    ]
)
EVENTS = {
    0: [speech_atom("Okay, I will put the cup on the plate.")],
    20: sort_events([ev("interjection", "gently please"), speech_atom("Will do.")]),
    30: sort_events(
        [
            ev("vqa", "where is the cup?", "user", TOP),
            ev("vqa", orjson.dumps(BBOX).decode(), "assistant", TOP),
            ev("vqa", "how many cups?", "user", WRIST),
            ev("vqa", '{"label":"cup","count":1}', "assistant", WRIST),
        ]
    ),
}


def render(
    recipe_name: str, frame: int, camera: str | None = None, index: int = 0
) -> dict[str, Any] | None:
    return render_sample(
        load_recipe(recipe_name),
        persistent=PERSISTENT,
        events=EVENTS.get(frame, []),
        t=TS[frame],
        task=TASK,
        sample_index=index,
        camera=camera,
    )


def at(expr: str, frame: int, camera: str | None = None) -> LanguageRow | None:
    return resolve(
        "b",
        parse_binding(expr),
        persistent=PERSISTENT,
        events=EVENTS.get(frame, []),
        t=TS[frame],
        camera=camera,
    )


def content(row: LanguageRow | None) -> str | None:
    return None if row is None else row.content


def test_active_at() -> None:
    assert content(at("active_at(t, style=subtask)", 0)) == "reach the cup"
    assert content(at("active_at(t, style=subtask)", 9)) == "reach the cup"
    assert content(at("active_at(t, style=subtask)", 10)) == "grasp the cup"
    assert content(at("active_at(t, style=subtask)", 49)) == "place the cup on the plate"
    assert at("active_at(t, style=memory)", 5) is None
    assert content(at("active_at(t, style=memory)", 15)) == "reached the cup"
    assert at("active_at(t, style=motion)", 5) is None


def test_emitted_at_events_and_stamped_persistent_rows() -> None:
    assert content(at("emitted_at(t, style=interjection)", 20)) == "gently please"
    assert at("emitted_at(t, style=interjection)", 21) is None
    assert content(at("emitted_at(t, style=memory)", 10)) == "reached the cup"
    assert at("emitted_at(t, style=memory)", 11) is None
    speech = at("emitted_at(t, role=assistant, tool_name=say)", 20)
    assert speech is not None and speech.style is None
    assert at("emitted_at(t, tool_name=wave)", 20) is None
    assert at("emitted_at(t, style=null)", 20) == speech
    answer = at("emitted_at(t, style=vqa, role=assistant, camera=$camera)", 30, WRIST)
    assert content(answer) == '{"label":"cup","count":1}'
    fixed = at(f"emitted_at(t, style=vqa, role=user, camera={TOP})", 30)
    assert content(fixed) == "where is the cup?"


def test_nth_prev_and_next() -> None:
    assert content(at("nth_prev(style=subtask, offset=1)", 15)) == "reach the cup"
    assert at("nth_prev(style=subtask, offset=2)", 15) is None
    assert content(at("nth_prev(style=subtask, offset=2)", 25)) == "reach the cup"
    assert content(at("nth_next(style=subtask, offset=1)", 5)) == "grasp the cup"
    assert content(at("nth_next(style=subtask, offset=2)", 5)) == "place the cup on the plate"
    assert at("nth_next(style=subtask, offset=1)", 25) is None
    assert content(at("nth_next(style=memory, offset=1)", 5)) == "reached the cup"
    assert at("nth_prev(style=memory, offset=1)", 5) is None


def test_more_than_one_match_is_an_error() -> None:
    with pytest.raises(AmbiguousBindingError, match="matches 2 rows"):
        at("emitted_at(t, style=vqa, role=assistant)", 30)
    with pytest.raises(AmbiguousBindingError, match="vqa"):
        render("vqa", 30)  # two cameras answered and no camera was chosen
    doubled = [*PERSISTENT, p("task_aug", 0, "a"), p("task_aug", 0, "b")]
    with pytest.raises(AmbiguousBindingError):
        resolve(
            "aug",
            parse_binding("active_at(t, style=task_aug)"),
            persistent=doubled,
            events=[],
            t=TS[3],
        )


def test_low_level_subtask() -> None:
    sample = render("low_level_subtask", 12)
    assert sample is not None
    assert sample["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image", "camera": None, "timestamp": TS[12]},
                {"type": "text", "text": f"Task: {TASK}"},
            ],
        },
        {"role": "assistant", "content": "grasp the cup"},
    ]
    assert sample["streams"] == ["high_level", "low_level"]
    assert sample["targets"] == [False, True]
    assert sample["recipe"] == "low_level_subtask" and "tools" not in sample
    assert (
        render_sample(
            load_recipe("low_level_subtask"),
            persistent=[],
            events=[],
            t=0.0,
            task=TASK,
            sample_index=0,
        )
        is None
    )


def test_high_level_next_subtask() -> None:
    sample = render("high_level_next_subtask", 12)
    assert sample is not None
    text = sample["messages"][1]["content"][1]["text"]
    assert "Memory: reached the cup" in text and "Current subtask: grasp the cup" in text
    assert sample["messages"][-1] == {"role": "assistant", "content": "place the cup on the plate"}
    assert render("high_level_next_subtask", 25) is None  # last subtask: nothing next


def test_memory_update_only_at_boundaries() -> None:
    sample = render("memory_update", 20)
    assert sample is not None
    assert "Memory so far: reached the cup" in sample["messages"][1]["content"]
    assert "Just finished: grasp the cup" in sample["messages"][1]["content"]
    assert sample["messages"][-1]["content"] == "cup in hand"
    assert sample["targets"] == [False, False, True]
    assert render("memory_update", 21) is None
    assert render("memory_update", 0) is None


def test_interjection_response_has_say_tool_call() -> None:
    sample = render("interjection_response", 20)
    assert sample is not None
    roles = [m["role"] for m in sample["messages"]]
    assert roles == ["system", "user", "user", "assistant", "assistant"]
    call_turn = sample["messages"][3]
    assert call_turn["content"] is None
    assert call_turn["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "say", "arguments": {"text": "Will do."}},
        }
    ]
    assert sample["messages"][2]["content"] == "gently please"
    assert "1. reach" in sample["messages"][1]["content"][1]["text"]  # the previous plan
    assert sample["messages"][4]["content"] == "1. place it gently"
    assert sample["tools"] == [SAY_TOOL]
    assert render("interjection_response", 0) is None  # speech but no interjection


def test_vqa_per_camera() -> None:
    top = render("vqa", 30, TOP)
    wrist = render("vqa", 30, WRIST)
    assert top is not None and wrist is not None
    assert top["messages"][0]["content"][0] == {"type": "image", "camera": TOP, "timestamp": TS[30]}
    assert top["messages"][0]["content"][1]["text"] == "where is the cup?"
    assert orjson.loads(top["messages"][1]["content"]) == BBOX
    assert wrist["messages"][1]["content"] == '{"label":"cup","count":1}'
    assert render("vqa", 31, TOP) is None


def test_missing_binding_substitutes_empty(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\nstream: high_level\nmessages:\n"
        '  - {role: assistant, target: true, content: "[${memory}] ${speech} ${camera}"}\n',
        encoding="utf-8",
    )
    recipe = load_recipe(path)
    first = render_sample(
        recipe, persistent=PERSISTENT, events=EVENTS[0], t=0.0, task="", sample_index=0
    )
    assert first is not None
    assert first["messages"][0]["content"] == "[] Okay, I will put the cup on the plate. "


def test_blend_is_deterministic_and_follows_weights() -> None:
    blend = load_recipe("blend")
    assert isinstance(blend, Blend)
    picks = [blend_choice(blend, i).name for i in range(4000)]
    assert picks == [blend_choice(blend, i).name for i in range(4000)]
    counts = Counter(picks)
    total_weight = sum(w for _, w in blend.components)
    for recipe, weight in blend.components:
        expected = 4000 * weight / total_weight
        assert abs(counts[recipe.name] - expected) < 0.15 * expected + 20
    sample = None
    for i in range(50):
        if blend_choice(blend, i).name == "low_level_subtask":
            sample = render_sample(
                blend, persistent=PERSISTENT, events=[], t=TS[5], task=TASK, sample_index=i
            )
            break
    assert sample is not None and sample["recipe"] == "low_level_subtask"


def test_single_recipe_ignores_sample_index() -> None:
    recipe = load_recipe("low_level_subtask")
    assert isinstance(recipe, Recipe)
    a = render("low_level_subtask", 12, index=0)
    b = render("low_level_subtask", 12, index=999)
    assert a == b


# --- narrator render over a real annotated dataset -------------------------------------------


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_annotated_dataset(tmp_path_factory.mktemp("render") / "ds", episodes=3)


REPO_ROOT = Path(__file__).resolve().parents[2]


def narrator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NARRATOR_LOG_LEVEL": "warning"},
        cwd=REPO_ROOT,
    )


def test_every_shipped_recipe_renders_the_dataset(annotated: Path) -> None:
    meta = load_dataset_meta(annotated)
    for name in shipped_recipe_names():
        samples = list(iter_samples(meta, load_recipe(name), sorted(meta.episodes)))
        assert samples, name
        for sample in samples:
            assert len(sample["messages"]) == len(sample["streams"]) == len(sample["targets"])
            assert any(sample["targets"])
            orjson.dumps(sample)
        by_recipe = Counter(s["recipe"] for s in samples)
        if name == "blend":
            assert len(by_recipe) >= 3
        else:
            assert set(by_recipe) == {name}
    vqa = list(iter_samples(meta, load_recipe("vqa"), [0]))
    assert {s["camera"] for s in vqa} == {c.key for c in meta.cameras}
    interjections = list(iter_samples(meta, load_recipe("interjection_response"), [0, 1, 2]))
    assert len(interjections) == 3
    assert all(s["tools"] == [SAY_TOOL] for s in interjections)


def test_cli_render_jsonl_and_pretty(annotated: Path) -> None:
    done = narrator(
        "render", str(annotated), "--recipe", "vqa", "--episode", "1", "--frames", "5,15"
    )
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [(s["frame"], s["camera"]) for s in lines] == [
        (5, TOP),
        (5, WRIST),
        (15, TOP),
        (15, WRIST),
    ]
    assert all(s["episode"] == 1 for s in lines)
    assert "4 sample(s)" in done.stderr

    done = narrator(
        "render", str(annotated), "--recipe", "interjection_response", "--format", "pretty"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("== episode") == 3
    assert '<tool say({"text":"Sure, slowly."})>' in done.stdout


def test_cli_render_blend_is_stable_across_selections(annotated: Path) -> None:
    every = narrator("render", str(annotated), "--recipe", "blend", "--every", "4")
    assert every.returncode == 0, every.stderr
    picked = {
        (s["episode"], s["frame"]): s["recipe"]
        for s in map(orjson.loads, every.stdout.splitlines())
    }
    frame, recipe = next((k[1], v) for k, v in picked.items() if k[0] == 2)
    one = narrator(
        "render", str(annotated), "--recipe", "blend", "--episode", "2", "--frames", str(frame)
    )
    assert one.returncode == 0, one.stderr
    assert {orjson.loads(line)["recipe"] for line in one.stdout.splitlines()} == {recipe}


def test_cli_render_errors(annotated: Path) -> None:
    done = narrator("render", str(annotated), "--recipe", "nope")
    assert done.returncode == 2 and "no recipe 'nope'" in done.stderr
    done = narrator("render", str(annotated), "--recipe", "vqa", "--episode", "99")
    assert done.returncode == 2 and "episode 99" in done.stderr
    done = narrator("render", str(annotated), "--recipe", "vqa", "--frames", "a,b")
    assert done.returncode == 2 and "--frames" in done.stderr
