"""Tests of common.recipes: binding expressions, load-time validation, shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from narrator.common.errors import ConfigError
from narrator.consumer.recipes import (
    DEFAULT_BINDINGS,
    SAMPLE_CAMERA,
    Blend,
    Recipe,
    load_recipe,
    parse_binding,
    shipped_recipe_names,
)

REQUIRED_SHIPPED = {
    "low_level_subtask",
    "high_level_next_subtask",
    "memory_update",
    "interjection_response",
    "vqa",
    "blend",
}


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_binding_forms() -> None:
    r = parse_binding("active_at(t, style=subtask)")
    assert (r.kind, r.style, r.style_given) == ("active_at", "subtask", True)
    r = parse_binding("emitted_at(t, role=assistant, tool_name=say)")
    assert (r.kind, r.style_given, r.role, r.tool_name) == ("emitted_at", False, "assistant", "say")
    r = parse_binding("emitted_at(t, style=null)")
    assert r.style is None and r.style_given
    r = parse_binding("emitted_at(t, style='vqa', camera=$camera)")
    assert r.style == "vqa" and r.camera == SAMPLE_CAMERA
    r = parse_binding("nth_next(style=plan, offset=2)")
    assert (r.kind, r.style, r.offset) == ("nth_next", "plan", 2)
    assert parse_binding("nth_prev(style=memory)").offset == 1


def test_binding_expression_round_trip() -> None:
    for res in DEFAULT_BINDINGS.values():
        assert parse_binding(res.expression()) == res


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("subtask", "not a resolver call"),
        ("latest(t, style=subtask)", "unknown resolver"),
        ("active_at(t, style=vqa)", "persistent styles"),
        ("active_at(t)", "persistent styles"),
        ("emitted_at(t, style=gossip)", "unknown style"),
        ("emitted_at(t, role=robot)", "role must be"),
        ("nth_prev(style=subtask, offset=0)", "offset"),
        ("nth_prev(style=subtask, offset=x)", "offset"),
        ("active_at(t, style=plan, role=user)", "takes"),
        ("emitted_at(t, style=vqa, style=vqa)", "twice"),
        ("emitted_at(x, style=vqa)", "positional"),
    ],
)
def test_parse_binding_rejects(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_binding(expr)


def test_shipped_recipes_load() -> None:
    names = set(shipped_recipe_names())
    assert names >= REQUIRED_SHIPPED
    for name in names:
        recipe = load_recipe(name)
        if isinstance(recipe, Recipe):
            assert any(t.target for t in recipe.turns)
            assert len(recipe.streams) == len(recipe.turns)
            assert set(recipe.streams) <= {"high_level", "low_level"}
    vqa = load_recipe("vqa")
    assert isinstance(vqa, Recipe) and vqa.uses_camera
    low = load_recipe("low_level_subtask")
    assert isinstance(low, Recipe) and not low.uses_camera
    assert "low_level" in low.streams
    blend = load_recipe("blend")
    assert isinstance(blend, Blend)
    assert [r.name for r, _ in blend.components] == [
        "low_level_subtask",
        "high_level_next_subtask",
        "memory_update",
        "interjection_response",
        "vqa",
    ]
    assert blend.uses_camera


def test_load_by_path_with_bindings_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
name: mine
stream: high_level
bindings:
  before: nth_prev(style=subtask, offset=1)
messages:
  - role: user
    content: "${task} after ${before}, doing ${subtask}"
  - role: assistant
    stream: low_level
    target: true
    content: "${subtask}"
""",
    )
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.streams == ("high_level", "low_level")
    assert recipe.bindings["before"].kind == "nth_prev"
    assert recipe.bindings["subtask"] == DEFAULT_BINDINGS["subtask"]
    assert recipe.referenced_names() == {"task", "before", "subtask"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            "messages:\n  - {role: assistant, stream: high_level, target: true, "
            'content: "${nope}"}',
            "unknown binding",
        ),
        (
            "messages:\n  - {role: assistant, stream: high_level, target: true, "
            'content: "x", if_present: nope}',
            "if_present names unknown binding 'nope'",
        ),
        (
            "messages:\n  - {role: assistant, stream: high_level, target: true, "
            "content: null, tool_calls_from: nope}",
            "tool_calls_from names unknown binding 'nope'",
        ),
        (
            'messages:\n  - {role: user, stream: high_level, content: "${task}"}',
            "at least one turn with target",
        ),
        ("messages: []", "at least one turn"),
        (
            'messages:\n  - {role: assistant, target: true, content: "x"}',
            "no stream",
        ),
        (
            'messages:\n  - {role: robot, stream: high_level, target: true, content: "x"}',
            "role",
        ),
        (
            'messages:\n  - {role: user, stream: mid_level, target: true, content: "x"}',
            "stream",
        ),
        (
            "messages:\n  - {role: assistant, stream: high_level, target: true, content: null}",
            "content null needs tool_calls_from",
        ),
        (
            'messages:\n  - {role: user, stream: high_level, target: true, content: "x", '
            "colour: red}",
            "Extra inputs",
        ),
        (
            "bindings: {b: 'active_at(t, style=vqa)'}\n"
            'messages:\n  - {role: user, stream: high_level, target: true, content: "${b}"}',
            "binding 'b'",
        ),
        (
            "bindings: {task: 'active_at(t, style=plan)'}\n"
            'messages:\n  - {role: user, stream: high_level, target: true, content: "x"}',
            "reserved",
        ),
        ("description: nothing", "needs `messages`"),
    ],
)
def test_load_rejects(tmp_path: Path, body: str, fragment: str) -> None:
    path = write(tmp_path, "name: bad\n" + body + "\n")
    with pytest.raises(ConfigError, match=fragment) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_blend_inline_and_referenced(tmp_path: Path) -> None:
    write(
        tmp_path,
        "name: side\nmessages:\n  - {role: assistant, stream: high_level, target: true, "
        'content: "${plan}"}\n',
        "side.yaml",
    )
    path = write(
        tmp_path,
        """
name: mix
blend:
  sub: {weight: 3, recipe: low_level_subtask}
  side: {weight: 1, recipe: side.yaml}
  inline:
    weight: 0.5
    stream: high_level
    messages:
      - {role: assistant, target: true, content: "${memory}"}
""",
        "mix.yaml",
    )
    blend = load_recipe(path)
    assert isinstance(blend, Blend)
    assert [(r.name, w) for r, w in blend.components] == [
        ("low_level_subtask", 3),
        ("side", 1),
        ("inline", 0.5),
    ]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("blend: {}", "lists no recipes"),
        ("blend:\n  vqa: {weight: 0}", "greater than 0"),
        ("blend:\n  x: {weight: 1, recipe: does_not_exist}", "no recipe 'does_not_exist'"),
        ("blend:\n  x: {weight: 1, recipe: blend}", "itself a blend"),
        (
            "blend:\n  vqa: {weight: 1}\nmessages:\n  - {role: user, stream: high_level, "
            'target: true, content: "x"}',
            "either `messages` or `blend`",
        ),
    ],
)
def test_blend_rejects(tmp_path: Path, body: str, fragment: str) -> None:
    path = write(tmp_path, "name: bad\n" + body + "\n")
    with pytest.raises(ConfigError, match=fragment):
        load_recipe(path)


def test_unknown_name_lists_shipped() -> None:
    with pytest.raises(ConfigError, match=r"shipped recipes: .*vqa"):
        load_recipe("no_such_recipe")
    with pytest.raises(ConfigError, match="neither a file"):
        load_recipe("no such recipe!")


def test_unreadable_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n", "list.yaml"))
