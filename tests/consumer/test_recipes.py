"""Tests of narrator.consumer.recipes: LeRobot's recipe format with LeRobot's load-time rules
(upstream ``lerobot/configs/recipe.py``), narrator's early render check, and the shipped
recipes (they must parse with those rules, use only LeRobot's keys, and round-trip)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from narrator.common.errors import ConfigError
from narrator.consumer.recipes import (
    DEFAULT_BINDINGS,
    SHIPPED_RECIPES_DIR,
    MessageTurn,
    RecipeError,
    TrainingRecipe,
    check_renderable,
    load_recipe,
    shipped_recipe_names,
)

TEST_RECIPES = Path(__file__).with_name("recipes")
# The fields of LeRobot's dataclasses (upstream TrainingRecipe and MessageTurn): the only keys
# a recipe file may use, since LeRobot builds them with cls(**data).
LEROBOT_RECIPE_KEYS = {"messages", "bindings", "blend", "weight", "route"}
LEROBOT_TURN_KEYS = {"role", "content", "stream", "target", "if_present", "tool_calls_from"}
REQUIRED_SHIPPED = {
    "low_level_subtask",
    "high_level_next_subtask",
    "memory_update",
    "interjection_response",
    "vqa",
    "blend",
}

OK_TARGET = "{role: assistant, content: ok, stream: high_level, target: true}"


def load_text(tmp_path: Path, text: str) -> TrainingRecipe:
    path = tmp_path / "r.yaml"
    path.write_text(dedent(text), encoding="utf-8")
    return load_recipe(path)


# --- LeRobot's load-time rules -------------------------------------------------------------

BAD_RECIPES: list[tuple[str, str, str]] = [
    ("not_a_mapping", "- a\n- b\n", "mapping at the top level"),
    (
        "messages_and_blend",
        f"messages: [{OK_TARGET}]\nblend: {{a: {{weight: 1, messages: [{OK_TARGET}]}}}}\n",
        "only one of `messages` or `blend`",
    ),
    ("neither", "bindings: {x: 'active_at(t, style=subtask)'}\n", "must set one of"),
    ("unknown_top_key", f"name: mine\nmessages: [{OK_TARGET}]\n", "unknown key(s) ['name']"),
    (
        "unknown_turn_key",
        "messages: [{role: user, text: hi, stream: high_level, target: true}]\n",
        "unknown key(s) ['text']",
    ),
    ("turn_without_role", "messages: [{content: hi, stream: high_level}]\n", "needs `role`"),
    (
        "bad_role",
        "messages: [{role: robot, content: hi, stream: high_level, target: true}]\n",
        "unsupported message role 'robot'",
    ),
    ("missing_stream", "messages: [{role: user, content: hi, target: true}]\n", "missing a stream"),
    (
        "bad_stream",
        "messages: [{role: user, content: hi, stream: mid_level, target: true}]\n",
        "unsupported message stream 'mid_level'",
    ),
    (
        "null_content_without_tool_calls",
        "messages: [{role: assistant, content: null, stream: high_level, target: true}]\n",
        "needs content unless tool_calls_from",
    ),
    (
        "number_content",
        "messages: [{role: user, content: 3, stream: high_level, target: true}]\n",
        "content must be a string",
    ),
    (
        "block_without_type",
        "messages: [{role: user, content: [{text: hi}], stream: high_level, target: true}]\n",
        "mappings with a `type` key",
    ),
    (
        "unknown_placeholder",
        "messages: [{role: user, content: '${missing}', stream: high_level, target: true}]\n",
        "unknown binding(s) ['missing']",
    ),
    (
        "unknown_if_present",
        "messages: [{role: user, content: hi, stream: high_level, target: true, "
        "if_present: nope}]\n",
        "unknown binding(s) ['nope']",
    ),
    (
        "unknown_tool_calls_from",
        "messages: [{role: assistant, stream: high_level, target: true, tool_calls_from: nope}]\n",
        "unknown binding(s) ['nope']",
    ),
    (
        "unknown_placeholder_in_block",
        "messages: [{role: user, stream: high_level, target: true, "
        "content: [{type: image, feature: '${cam}'}]}]\n",
        "unknown binding(s) ['cam']",
    ),
    (
        "no_supervised_turn",
        "messages: [{role: user, content: hi, stream: high_level}]\n",
        "at least one supervised turn",
    ),
    ("empty_messages", "messages: []\n", "at least one supervised turn"),
    ("messages_not_list", "messages: {role: user}\n", "must be a list of turns"),
    (
        "bad_route",
        "blend: {a: {weight: 1, route: ocr, messages: [" + OK_TARGET + "]}}\n",
        "unsupported recipe route 'ocr'",
    ),
    (
        "route_on_blend",
        "route: vqa\nblend: {a: {weight: 1, messages: [" + OK_TARGET + "]}}\n",
        "may only be set on a message recipe inside a blend",
    ),
    ("empty_blend", "blend: {}\n", "at least one component"),
    ("no_weight", "blend: {a: {messages: [" + OK_TARGET + "]}}\n", "'a' must define weight"),
    ("zero_weight", "blend: {a: {weight: 0, messages: [" + OK_TARGET + "]}}\n", "positive weight"),
    (
        "negative_weight",
        "blend: {a: {weight: -1, messages: [" + OK_TARGET + "]}}\n",
        "positive weight",
    ),
    (
        "text_weight",
        "blend: {a: {weight: heavy, messages: [" + OK_TARGET + "]}}\n",
        "numeric weight",
    ),
    (
        "nested_blend",
        "blend: {a: {weight: 1, blend: {b: {weight: 1, messages: [" + OK_TARGET + "]}}}}\n",
        "cannot itself define a blend",
    ),
    ("component_without_messages", "blend: {a: {weight: 1}}\n", "must set one of"),
    ("component_not_mapping", "blend: {a: 3}\n", "must be a mapping"),
]


@pytest.mark.parametrize(
    ("text", "fragment"), [(t, f) for _, t, f in BAD_RECIPES], ids=[n for n, _, _ in BAD_RECIPES]
)
def test_lerobot_rejects_so_does_narrator(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert fragment in message
    assert str(tmp_path / "r.yaml") in message  # says which file
    assert isinstance(info.value, ConfigError)  # the CLI turns it into one line, exit 2


def test_blend_component_errors_name_the_component(tmp_path: Path) -> None:
    text = "blend:\n  mine:\n    weight: 1\n    messages: [{role: user, content: hi}]\n"
    with pytest.raises(RecipeError, match=r"blend component 'mine': messages\[0\]: .*stream"):
        load_text(tmp_path, text)


def test_what_lerobot_accepts_loads(tmp_path: Path) -> None:
    # A low-level-only turn needs no target; a top-level message recipe may carry weight and
    # route (they only mean something inside a blend); `${task}` needs no declaration;
    # placeholders with spaces or inside nested block values are not checked (not bindings).
    recipe = load_text(
        tmp_path,
        """
        weight: 3
        route: vqa
        messages:
          - {role: user, content: "${task} ${ spaced }", stream: low_level}
          - role: tool
            stream: high_level
            content: [{type: image, meta: {hint: "${nowhere}"}}]
        """,
    )
    assert recipe.messages is not None and recipe.weight == 3 and recipe.route == "vqa"
    assert [t.role for t in recipe.messages] == ["user", "tool"]
    assert recipe.messages[0].target is False and recipe.messages[0].stream == "low_level"


def test_defaults_and_declared_bindings() -> None:
    assert DEFAULT_BINDINGS == {
        "subtask": "active_at(t, style=subtask)",
        "memory": "active_at(t, style=memory)",
        "plan": "active_at(t, style=plan)",
        "speech": "emitted_at(t, role=assistant, tool_name=say)",
        "interjection": "emitted_at(t, style=interjection)",
        "vqa": "emitted_at(t, style=vqa, role=assistant)",
        "vqa_query": "emitted_at(t, style=vqa, role=user)",
    }
    recipe = TrainingRecipe.from_dict(
        {
            "bindings": {"subtask": "nth_next(style=subtask)", "extra": "active_at(t, style=plan)"},
            "messages": [{"role": "user", "content": "${extra}", "stream": "low_level"}],
        }
    )
    specs = recipe.binding_specs()
    assert specs["subtask"] == "nth_next(style=subtask)"  # a declared binding overrides
    assert list(specs)[-1] == "extra" and len(specs) == len(DEFAULT_BINDINGS) + 1


def test_unknown_recipe_name_lists_the_shipped_ones() -> None:
    with pytest.raises(RecipeError, match=r"shipped recipes: .*vqa"):
        load_recipe("no_such_recipe")


# --- narrator's early check: what LeRobot loads but cannot render ---------------------------

UNRENDERABLE: list[tuple[object, str]] = [
    ("subtask", "invalid resolver expression"),
    ("latest(t, style=subtask)", "unknown language resolver 'latest'"),
    ("active_at(t, style=vqa)", "event-only style 'vqa'"),
    ("active_at(t)", "requires a persistent style"),
    ("nth_prev(offset=1)", "requires a persistent style"),
    ("emitted_at(t, style=null)", "unknown language style 'null'"),
    ("nth_prev(style=memory, offset=0)", "offset must be non-zero"),
    ("nth_next(style=memory, offset=one)", "offset must be an integer"),
    ("active_at(t, style=subtask, offset=1)", "active_at takes"),
    ("emitted_at(t, speech)", "invalid resolver argument 'speech'"),
    ("active_at(t, style=subtask)\nextra", "invalid resolver expression"),
    (3, "must be a resolver expression"),
]


@pytest.mark.parametrize(("spec", "fragment"), UNRENDERABLE)
def test_check_renderable_rejects(spec: object, fragment: str) -> None:
    recipe = TrainingRecipe.from_dict(
        {
            "bindings": {"b": spec},
            "messages": [{"role": "user", "content": "${b}", "stream": "low_level"}],
        }
    )
    with pytest.raises(RecipeError, match="binding 'b'") as info:
        check_renderable(recipe)
    assert fragment in str(info.value)


def test_check_renderable_names_the_blend_component() -> None:
    recipe = TrainingRecipe.from_dict(
        {
            "blend": {
                "fine": {
                    "weight": 1,
                    "messages": [{"role": "user", "content": "x", "stream": "low_level"}],
                },
                "broken": {
                    "weight": 1,
                    "bindings": {"b": "active_at(t, style=interjection)"},
                    "messages": [{"role": "user", "content": "${b}", "stream": "low_level"}],
                },
            }
        }
    )
    with pytest.raises(RecipeError, match="blend component 'broken': binding 'b'"):
        check_renderable(recipe)


def test_check_renderable_rejects_bindings_that_are_not_a_mapping() -> None:
    recipe = TrainingRecipe(
        bindings=["x"],  # type: ignore[arg-type]
        messages=[MessageTurn(role="user", content="hi", stream="low_level")],
    )
    with pytest.raises(RecipeError, match="must map names"):
        check_renderable(recipe)


# --- shipped recipes and the project's test recipes ----------------------------------------


def _all_recipe_files() -> list[Path]:
    return sorted(SHIPPED_RECIPES_DIR.glob("*.yaml")) + sorted(TEST_RECIPES.glob("*.yaml"))


def _check_lerobot_shape(data: object, where: str) -> None:
    """An independent check of LeRobot's schema: keys, types, and required fields."""
    assert isinstance(data, dict), where
    assert set(data) <= LEROBOT_RECIPE_KEYS, (where, set(data) - LEROBOT_RECIPE_KEYS)
    assert ("messages" in data) != ("blend" in data), where
    if "blend" in data:
        assert "route" not in data and data["blend"], where
        for name, component in data["blend"].items():
            assert "blend" not in component, where
            assert isinstance(component.get("weight"), int | float) and component["weight"] > 0
            assert component.get("route") in (None, "vqa"), (where, name)
            _check_lerobot_shape(component, f"{where}:{name}")
        return
    bindings = data.get("bindings", {})
    assert isinstance(bindings, dict) and all(isinstance(v, str) for v in bindings.values())
    turns = data["messages"]
    assert isinstance(turns, list) and turns, where
    for turn in turns:
        assert set(turn) <= LEROBOT_TURN_KEYS and "role" in turn, (where, turn)
        assert turn["role"] in ("user", "assistant", "system", "tool")
        assert turn.get("stream") in ("high_level", "low_level"), (where, turn)
        assert turn.get("content") is not None or turn.get("tool_calls_from") is not None
        if isinstance(turn.get("content"), list):
            assert all(isinstance(b, dict) and "type" in b for b in turn["content"])
    assert any(t.get("target") or t.get("stream") == "low_level" for t in turns), where


@pytest.mark.parametrize("path", _all_recipe_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_files_use_lerobot_format_and_round_trip(path: Path) -> None:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    _check_lerobot_shape(raw, path.name)
    recipe = load_recipe(path)
    check_renderable(recipe)
    # RenderMessagesStep.get_config stores asdict(recipe) and rebuilds it with from_dict.
    again = TrainingRecipe.from_dict(dataclasses.asdict(recipe))
    assert again == recipe
    assert again.components() == recipe.components()


def test_the_shipped_set() -> None:
    assert set(shipped_recipe_names()) >= REQUIRED_SHIPPED
    blend = load_recipe("blend")
    assert blend.blend is not None
    assert sum(c.weight or 0 for c in blend.blend.values()) == pytest.approx(1.0)
    routed = [n for n, c in blend.blend.items() if c.route == "vqa"]
    assert routed == ["ask_vqa_top", "ask_vqa_wrist"]
    interjection = load_recipe("interjection_response")
    assert interjection.messages is not None
    assert any(t.tool_calls_from == "speech" and t.target for t in interjection.messages)
