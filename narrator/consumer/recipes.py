"""Recipe model and loading: LeRobot's recipe format (upstream ``lerobot/configs/recipe.py``),
with the same keys, the same optionality and the same load-time rules, so a recipe file works
in both LeRobot and narrator.

A recipe is either a *message recipe* (``messages`` plus optional ``bindings``) or a *blend*
(``blend``: named message recipes, each with a positive ``weight`` and optionally
``route: vqa``). A turn (:class:`MessageTurn`) has ``role``, ``content`` (a string, a list of
blocks that are mappings with a ``type`` key, or null when ``tool_calls_from`` is set),
``stream`` (required: high_level or low_level), ``target``, ``if_present`` and
``tool_calls_from``. Bindings are resolver expressions (``narrator.consumer.resolvers``);
``DEFAULT_BINDINGS`` are always known, and ``task`` is built in.

Invariants:
* :meth:`TrainingRecipe.from_dict` accepts exactly the mappings LeRobot's ``from_dict``
  accepts and rejects the others for the same reason (unknown keys included: LeRobot builds
  its dataclasses with ``cls(**data)``, so a key such as ``name`` fails there too). Messages
  are LeRobot's, reworded to name the place in the file.
* A narrator-only check, :func:`check_renderable`, rejects before rendering what LeRobot
  accepts at load time but raises on at render time for every sample that uses the recipe
  (a binding expression that does not parse, an unknown resolver or argument, a style the
  resolver refuses, ``offset=0``, bindings that are not a mapping of strings).
* A loaded recipe is plain data (dataclasses); ``dataclasses.asdict`` of it goes back through
  ``from_dict`` to an equal recipe, as LeRobot's ``RenderMessagesStep.get_config`` relies on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from narrator.common.errors import ConfigError

SHIPPED_RECIPES_DIR = Path(__file__).with_name("recipes")

ROLES: tuple[str, ...] = ("user", "assistant", "system", "tool")
STREAMS: tuple[str, ...] = ("high_level", "low_level")
ROUTES: tuple[str, ...] = ("vqa",)

DEFAULT_BINDINGS: dict[str, str] = {
    "subtask": "active_at(t, style=subtask)",
    "memory": "active_at(t, style=memory)",
    "plan": "active_at(t, style=plan)",
    "speech": "emitted_at(t, role=assistant, tool_name=say)",
    "interjection": "emitted_at(t, style=interjection)",
    "vqa": "emitted_at(t, style=vqa, role=assistant)",
    "vqa_query": "emitted_at(t, style=vqa, role=user)",
}
TASK_BINDING = "task"  # built in: the frame's task (see render.resolve_task)

PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RecipeError(ConfigError):
    """A recipe file or recipe mapping that LeRobot would refuse (or fail to render)."""


Content = str | list[dict[str, Any]] | None


@dataclass
class MessageTurn:
    """One chat turn of a recipe template (LeRobot's ``MessageTurn``)."""

    role: str
    content: Content = None
    stream: str | None = None
    target: bool = False
    if_present: str | None = None
    tool_calls_from: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise RecipeError(f"unsupported message role {self.role!r}; use one of {list(ROLES)}")
        if self.stream is None:
            raise RecipeError(
                f"turn with role {self.role!r} is missing a stream; every turn must declare "
                f"one of {list(STREAMS)}"
            )
        if self.stream not in STREAMS:
            raise RecipeError(
                f"unsupported message stream {self.stream!r}; use one of {list(STREAMS)}"
            )
        if self.content is None and self.tool_calls_from is None:
            raise RecipeError("a turn needs content unless tool_calls_from is set")
        if self.content is not None and not isinstance(self.content, str | list):
            raise RecipeError(
                "content must be a string, a list of blocks (mappings with a `type` key), "
                "or null with tool_calls_from"
            )
        if isinstance(self.content, list):
            for block in self.content:
                if not isinstance(block, dict) or "type" not in block:
                    raise RecipeError(
                        "multimodal content blocks must be mappings with a `type` key, "
                        f"e.g. {{type: text, text: ...}}; got {block!r}"
                    )

    @classmethod
    def from_dict(cls, data: Any) -> MessageTurn:
        mapping = _as_mapping(data, "a turn")
        _check_keys(mapping, cls, "a turn")
        if "role" not in mapping:
            raise RecipeError("a turn needs `role`")
        return cls(**mapping)

    def referenced_bindings(self) -> set[str]:
        """Binding names this turn uses: ``if_present``, ``tool_calls_from`` and ``${...}``
        in a string content or in the string values of its blocks."""
        names: set[str] = set()
        for ref in (self.if_present, self.tool_calls_from):
            if ref is not None:
                names.add(ref)
        names |= placeholders_in_content(self.content)
        return names


@dataclass
class TrainingRecipe:
    """A message recipe or a blend of message recipes (LeRobot's ``TrainingRecipe``)."""

    messages: list[MessageTurn] | None = None
    bindings: dict[str, str] | None = None
    blend: dict[str, TrainingRecipe] | None = None
    weight: float | None = None
    route: str | None = None

    def __post_init__(self) -> None:
        if self.messages is not None and self.blend is not None:
            raise RecipeError("a recipe sets only one of `messages` or `blend`, not both")
        if self.messages is None and self.blend is None:
            raise RecipeError("a recipe must set one of `messages` or `blend`")
        if self.route is not None and self.route not in ROUTES:
            raise RecipeError(f"unsupported recipe route {self.route!r}; the only route is vqa")
        if self.blend is not None and self.route is not None:
            raise RecipeError("`route` may only be set on a message recipe inside a blend")
        if self.messages is not None:
            self._validate_message_recipe()
        if self.blend is not None:
            self._validate_blend()

    def _validate_message_recipe(self) -> None:
        assert self.messages is not None
        known = set(DEFAULT_BINDINGS) | set(self.bindings or {}) | {TASK_BINDING}
        for i, turn in enumerate(self.messages):
            missing = turn.referenced_bindings() - known
            if missing:
                raise RecipeError(
                    f"messages[{i}] references unknown binding(s) {sorted(missing)}; "
                    f"declare them under `bindings` (known: {sorted(known)})"
                )
        has_target = any(turn.target for turn in self.messages)
        has_low_level = any(turn.stream == "low_level" for turn in self.messages)
        if not (has_target or has_low_level):
            raise RecipeError(
                "a message recipe must contain at least one supervised turn: either "
                "`target: true` (text loss) or `stream: low_level` (action loss)"
            )

    def _validate_blend(self) -> None:
        assert self.blend is not None
        if not self.blend:
            raise RecipeError("a blend must contain at least one component")
        for name, component in self.blend.items():
            if component.blend is not None:
                raise RecipeError(f"blend component {name!r} cannot itself define a blend")
            if component.messages is None:
                raise RecipeError(f"blend component {name!r} must define messages")
            if component.weight is None:
                raise RecipeError(f"blend component {name!r} must define weight")
            if not isinstance(component.weight, int | float):
                raise RecipeError(
                    f"blend component {name!r} must have a numeric weight, not {component.weight!r}"
                )
            if component.weight <= 0:
                raise RecipeError(f"blend component {name!r} must have a positive weight")

    @classmethod
    def from_dict(cls, data: Any) -> TrainingRecipe:
        mapping = dict(_as_mapping(data, "a recipe"))
        _check_keys(mapping, cls, "a recipe")
        messages = mapping.get("messages")
        if messages is not None:
            if not isinstance(messages, list):
                raise RecipeError("`messages` must be a list of turns")
            turns: list[MessageTurn] = []
            for i, turn in enumerate(messages):
                try:
                    turns.append(
                        turn if isinstance(turn, MessageTurn) else MessageTurn.from_dict(turn)
                    )
                except RecipeError as exc:
                    raise RecipeError(f"messages[{i}]: {exc}") from None
            mapping["messages"] = turns
        blend = mapping.get("blend")
        if blend is not None:
            if not isinstance(blend, dict):
                raise RecipeError("`blend` must map component names to message recipes")
            components: dict[str, TrainingRecipe] = {}
            for name, component in blend.items():
                try:
                    components[name] = (
                        component
                        if isinstance(component, TrainingRecipe)
                        else cls.from_dict(component)
                    )
                except RecipeError as exc:
                    raise RecipeError(f"blend component {name!r}: {exc}") from None
            mapping["blend"] = components
        return cls(**mapping)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainingRecipe:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise RecipeError(
                f"recipe {path}: the YAML must hold a mapping at the top level "
                "(`messages:` or `blend:`)"
            )
        try:
            return cls.from_dict(data)
        except RecipeError as exc:
            raise RecipeError(f"recipe {path}: {exc}") from None

    def components(self) -> list[tuple[str | None, TrainingRecipe]]:
        """``[(name, message recipe)]`` in file order; ``[(None, self)]`` for a message recipe."""
        if self.blend is None:
            return [(None, self)]
        return [(name, component) for name, component in self.blend.items()]

    def referenced_binding_names(self) -> set[str]:
        names: set[str] = set()
        for turn in self.messages or []:
            names |= turn.referenced_bindings()
        return names

    def binding_specs(self) -> dict[str, str]:
        """Default bindings overridden and extended by the recipe's own, in LeRobot's order."""
        return {**DEFAULT_BINDINGS, **(self.bindings or {})}


def placeholders_in_content(content: Content) -> set[str]:
    if content is None:
        return set()
    if isinstance(content, str):
        return set(PLACEHOLDER_RE.findall(content))
    names: set[str] = set()
    for block in content:
        for value in block.values():
            if isinstance(value, str):
                names.update(PLACEHOLDER_RE.findall(value))
    return names


def _as_mapping(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecipeError(f"{what} must be a mapping, not {type(data).__name__} {data!r}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise RecipeError(f"{what} has non-text key(s) {bad!r}")
    return data


def _check_keys(data: Mapping[str, Any], cls: type, what: str) -> None:
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise RecipeError(
            f"{what} has unknown key(s) {unknown}; LeRobot's recipe format allows only "
            f"{allowed} (put notes in YAML comments)"
        )


def check_renderable(recipe: TrainingRecipe) -> None:
    """Narrator's early check: raise :class:`RecipeError` for what LeRobot loads but cannot
    render (every binding a component declares is resolved whenever it renders)."""
    from narrator.consumer.resolvers import check_spec

    for name, component in recipe.components():
        where = f"blend component {name!r}: " if name is not None else ""
        bindings = component.bindings
        if bindings is None:
            continue
        if not isinstance(bindings, dict):
            raise RecipeError(f"{where}`bindings` must map names to resolver expressions")
        for bname, spec in bindings.items():
            if not isinstance(bname, str) or not _NAME.match(bname):
                raise RecipeError(f"{where}binding name {bname!r} is not a name like prior_memory")
            if not isinstance(spec, str):
                raise RecipeError(
                    f"{where}binding {bname!r} must be a resolver expression such as "
                    f'"active_at(t, style=subtask)", not {spec!r}'
                )
            try:
                check_spec(spec)
            except RecipeError as exc:
                raise RecipeError(
                    f"{where}binding {bname!r}: {exc} (LeRobot loads this recipe but raises "
                    "on every sample that renders it)"
                ) from None


def shipped_recipe_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_RECIPES_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A YAML path as given, or the path of a shipped recipe named ``name_or_path``."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists() or "/" in str(name_or_path):
        return candidate
    if not _NAME.match(str(name_or_path)):
        raise RecipeError(f"recipe {name_or_path!r} is neither a file nor a shipped recipe name")
    return SHIPPED_RECIPES_DIR / f"{name_or_path}.yaml"


def load_recipe(name_or_path: str | Path) -> TrainingRecipe:
    """Load a shipped recipe by name (``vqa``) or a YAML file by path, with LeRobot's rules;
    raises :class:`RecipeError` naming the file and the problem."""
    path = recipe_path(name_or_path)
    if not path.is_file():
        raise RecipeError(
            f"no recipe {str(name_or_path)!r} ({path} is not a file); shipped recipes: "
            f"{', '.join(shipped_recipe_names())}"
        )
    return TrainingRecipe.from_yaml(path)
