"""Recipe model and loading (SPEC section 5): YAML that says how the language rows active at a
frame time become one chat sample for training.

A recipe file holds either a *message recipe* (``messages`` plus optional ``bindings``) or a
*blend* of named, weighted message recipes. Bindings are resolver expressions:

* ``active_at(t, style=S)`` - the latest persistent row of style S with timestamp <= t;
* ``emitted_at(t[, style=S][, role=R][, tool_name=N][, camera=C])`` - an event on the frame,
  or a persistent row stamped exactly at t (``style=null`` selects speech atoms,
  ``camera=$camera`` the sample's camera);
* ``nth_prev(style=S, offset=k)`` / ``nth_next(style=S, offset=k)`` - the persistent row of
  style S k places before/after the one active at t.

Invariants:
* Loading validates everything that can be checked without data: unknown keys, unknown
  roles/styles/streams, unknown binding names used by ``${name}``, ``if_present`` or
  ``tool_calls_from``, message recipes without a target turn, blends without weight.
  A loaded :class:`Recipe` never fails later for a reason visible in its file.
* Expressions are parsed by a small grammar, never evaluated as code.
* Blend components keep the order of the file (their weights are cumulated in that order).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from narrator.common.contract import EVENT_STYLES, PERSISTENT_STYLES, ROLES
from narrator.common.errors import ConfigError

SHIPPED_RECIPES_DIR = Path(__file__).with_name("recipes")
STREAMS: frozenset[str] = frozenset({"high_level", "low_level"})
RESOLVERS: frozenset[str] = frozenset({"active_at", "emitted_at", "nth_prev", "nth_next"})
SAMPLE_CAMERA = "$camera"  # expression value meaning "the camera of the sample"
BUILTIN_NAMES: frozenset[str] = frozenset({"task", "camera"})  # substitutable, not bindings
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CALL = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.S)


# --- bindings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolver:
    """A parsed binding expression. ``style`` None with ``style_given`` selects style null."""

    kind: str  # one of RESOLVERS
    style: str | None = None
    style_given: bool = False
    role: str | None = None
    tool_name: str | None = None
    camera: str | None = None  # a camera key, SAMPLE_CAMERA, or None for any
    offset: int = 1

    def expression(self) -> str:
        args = ["t"] if self.kind in {"active_at", "emitted_at"} else []
        if self.style_given:
            args.append(f"style={self.style if self.style is not None else 'null'}")
        for key in ("role", "tool_name", "camera"):
            value = getattr(self, key)
            if value is not None:
                args.append(f"{key}={value}")
        if self.kind in {"nth_prev", "nth_next"}:
            args.append(f"offset={self.offset}")
        return f"{self.kind}({', '.join(args)})"


DEFAULT_BINDINGS: dict[str, Resolver] = {
    "subtask": Resolver("active_at", style="subtask", style_given=True),
    "memory": Resolver("active_at", style="memory", style_given=True),
    "plan": Resolver("active_at", style="plan", style_given=True),
    "speech": Resolver("emitted_at", role="assistant", tool_name="say"),
    "interjection": Resolver("emitted_at", style="interjection", style_given=True),
    "vqa": Resolver(
        "emitted_at", style="vqa", style_given=True, role="assistant", camera=SAMPLE_CAMERA
    ),
    "vqa_query": Resolver(
        "emitted_at", style="vqa", style_given=True, role="user", camera=SAMPLE_CAMERA
    ),
}


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def parse_binding(expr: str) -> Resolver:
    """Parse one resolver expression; raises ``ValueError`` saying what is wrong."""
    match = _CALL.match(expr)
    if match is None:
        raise ValueError(f"{expr!r} is not a resolver call like active_at(t, style=subtask)")
    kind, arg_text = match.group(1), match.group(2)
    if kind not in RESOLVERS:
        raise ValueError(f"unknown resolver {kind!r}; known: {sorted(RESOLVERS)}")
    kwargs: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in arg_text.split(",") if p.strip()):
        if "=" not in part:
            if i == 0 and part == "t":
                continue
            raise ValueError(f"{expr!r}: positional argument {part!r} (only a leading t is)")
        key, _, value = part.partition("=")
        key = key.strip()
        if key in kwargs:
            raise ValueError(f"{expr!r}: argument {key!r} given twice")
        kwargs[key] = _unquote(value.strip())
    allowed = {"style", "role", "tool_name", "camera"} if kind == "emitted_at" else {"style"}
    if kind in {"nth_prev", "nth_next"}:
        allowed = {"style", "offset"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"{expr!r}: {kind} takes {sorted(allowed)}, not {sorted(unknown)}")
    style_raw = kwargs.get("style")
    style = None if style_raw in (None, "null") else style_raw
    if kind != "emitted_at":
        if style is None or style not in PERSISTENT_STYLES:
            raise ValueError(
                f"{expr!r}: {kind} needs style= one of the persistent styles "
                f"{sorted(PERSISTENT_STYLES)}"
            )
    elif style is not None and style not in PERSISTENT_STYLES | EVENT_STYLES:
        raise ValueError(f"{expr!r}: unknown style {style!r}")
    role = kwargs.get("role")
    if role is not None and role not in ROLES:
        raise ValueError(f"{expr!r}: role must be one of {sorted(ROLES)}")
    offset = 1
    if "offset" in kwargs:
        if not kwargs["offset"].isdigit() or int(kwargs["offset"]) < 1:
            raise ValueError(f"{expr!r}: offset must be an integer >= 1")
        offset = int(kwargs["offset"])
    return Resolver(
        kind=kind,
        style=style,
        style_given=style_raw is not None,
        role=role,
        tool_name=kwargs.get("tool_name"),
        camera=kwargs.get("camera"),
        offset=offset,
    )


# --- the YAML shape (validated by pydantic) ------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextBlock(_Strict):
    type: Literal["text"]
    text: str


class ImageBlock(_Strict):
    """An image of the frame at t. ``camera`` is a key, ``${camera}`` or omitted (= the
    sample's camera; None means every camera the trainer feeds)."""

    type: Literal["image"]
    camera: str | None = None


class Turn(_Strict):
    role: Literal["user", "assistant", "system", "tool"]
    content: str | list[TextBlock | ImageBlock] | None = None
    stream: Literal["high_level", "low_level"] | None = None
    target: bool = False
    if_present: str | None = None
    tool_calls_from: str | None = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> Turn:
        if self.content is None and self.tool_calls_from is None:
            raise ValueError("a turn with content null needs tool_calls_from")
        return self

    def placeholders(self) -> set[str]:
        found: set[str] = set()
        texts: list[str] = []
        if isinstance(self.content, str):
            texts.append(self.content)
        elif isinstance(self.content, list):
            for block in self.content:
                texts.append(block.text if isinstance(block, TextBlock) else block.camera or "")
        for text in texts:
            found.update(PLACEHOLDER.findall(text))
        return found


class MessageRecipe(_Strict):
    name: str
    description: str = ""
    stream: Literal["high_level", "low_level"] | None = None  # default of its turns
    bindings: dict[str, str] = Field(default_factory=dict)
    messages: list[Turn]


class BlendItem(_Strict):
    weight: float = Field(gt=0)
    recipe: str | None = None  # shipped name or path relative to the blend file
    description: str = ""
    stream: Literal["high_level", "low_level"] | None = None
    bindings: dict[str, str] | None = None
    messages: list[Turn] | None = None


class BlendRecipe(_Strict):
    name: str
    description: str = ""
    blend: dict[str, BlendItem]


# --- compiled recipes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A loaded, validated message recipe."""

    name: str
    description: str
    turns: tuple[Turn, ...]
    streams: tuple[str, ...]  # resolved stream per turn
    bindings: Mapping[str, Resolver]  # defaults merged with the file's

    @property
    def uses_camera(self) -> bool:
        """True when rendering depends on the sample's camera (render once per camera)."""
        names = self.referenced_names()
        by_sample_camera = {n for n, r in self.bindings.items() if r.camera == SAMPLE_CAMERA}
        return "camera" in names or bool(names & by_sample_camera)

    def referenced_names(self) -> set[str]:
        names: set[str] = set()
        for turn in self.turns:
            names |= turn.placeholders()
            names |= {n for n in (turn.if_present, turn.tool_calls_from) if n is not None}
        return names


@dataclass(frozen=True)
class Blend:
    """A loaded blend: components in file order with their weights."""

    name: str
    description: str
    components: tuple[tuple[Recipe, float], ...]

    @property
    def uses_camera(self) -> bool:
        return any(recipe.uses_camera for recipe, _ in self.components)


AnyRecipe = Recipe | Blend


def compile_message_recipe(
    name: str,
    turns: list[Turn],
    raw_bindings: Mapping[str, str],
    *,
    description: str = "",
    stream: str | None = None,
) -> Recipe:
    """Check a message recipe and resolve its bindings; raises ``ValueError``."""
    bindings = dict(DEFAULT_BINDINGS)
    for bname, expr in raw_bindings.items():
        if not _NAME.match(bname) or bname in BUILTIN_NAMES:
            raise ValueError(f"binding name {bname!r} is not allowed (reserved or not a name)")
        try:
            bindings[bname] = parse_binding(expr)
        except ValueError as exc:
            raise ValueError(f"binding {bname!r}: {exc}") from None
    if not turns:
        raise ValueError("a message recipe needs at least one turn under `messages`")
    streams: list[str] = []
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        unknown = turn.placeholders() - set(bindings) - BUILTIN_NAMES
        if unknown:
            raise ValueError(f"{where} uses unknown binding(s) {sorted(unknown)}")
        for field_name in ("if_present", "tool_calls_from"):
            ref = getattr(turn, field_name)
            if ref is not None and ref not in bindings:
                raise ValueError(f"{where}.{field_name} names unknown binding {ref!r}")
        turn_stream = turn.stream or stream
        if turn_stream is None:
            raise ValueError(f"{where} has no stream (set it on the turn or the recipe)")
        streams.append(turn_stream)
    if not any(t.target for t in turns):
        raise ValueError("a message recipe needs at least one turn with target: true")
    return Recipe(name, description, tuple(turns), tuple(streams), bindings)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must hold a mapping with `messages` or `blend`")
    return data


def _recipe_path(name_or_path: str | Path, base: Path | None = None) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_absolute() and base is not None and (base / candidate).exists():
            return base / candidate
        return candidate
    if not _NAME.match(str(name_or_path)):
        raise ConfigError(f"recipe {name_or_path!r} is neither a file nor a shipped recipe name")
    return SHIPPED_RECIPES_DIR / f"{name_or_path}.yaml"


def shipped_recipe_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_RECIPES_DIR.glob("*.yaml"))


def _pydantic_problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
    )


def _load_message_recipe(path: Path, data: dict[str, Any]) -> Recipe:
    try:
        model = MessageRecipe.model_validate(data)
        return compile_message_recipe(
            model.name,
            model.messages,
            model.bindings,
            description=model.description,
            stream=model.stream,
        )
    except ValidationError as exc:
        raise ConfigError(f"recipe {path}: {_pydantic_problems(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"recipe {path}: {exc}") from None


def _load_blend(path: Path, data: dict[str, Any]) -> Blend:
    try:
        model = BlendRecipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"recipe {path}: {_pydantic_problems(exc)}") from None
    if not model.blend:
        raise ConfigError(f"recipe {path}: `blend` lists no recipes")
    components: list[tuple[Recipe, float]] = []
    for cname, item in model.blend.items():
        if item.messages is not None:
            if item.recipe is not None:
                raise ConfigError(
                    f"recipe {path}: blend item {cname!r} has both recipe and messages"
                )
            try:
                recipe = compile_message_recipe(
                    cname,
                    item.messages,
                    item.bindings or {},
                    description=item.description,
                    stream=item.stream,
                )
            except ValueError as exc:
                raise ConfigError(f"recipe {path}: blend item {cname!r}: {exc}") from None
        else:
            loaded = load_recipe(item.recipe or cname, _base=path.parent)
            if isinstance(loaded, Blend):
                raise ConfigError(f"recipe {path}: blend item {cname!r} is itself a blend")
            recipe = loaded
        components.append((recipe, item.weight))
    return Blend(model.name, model.description, tuple(components))


def load_recipe(name_or_path: str | Path, *, _base: Path | None = None) -> AnyRecipe:
    """Load a shipped recipe by name (``vqa``) or a YAML file by path; raises ConfigError
    naming the file and every problem found."""
    path = _recipe_path(name_or_path, _base)
    if not path.is_file():
        raise ConfigError(
            f"no recipe {name_or_path!r} ({path} does not exist); shipped recipes: "
            f"{', '.join(shipped_recipe_names())}"
        )
    data = _read_yaml(path)
    if "blend" in data and "messages" in data:
        raise ConfigError(f"recipe {path}: use either `messages` or `blend`, not both")
    if "blend" in data:
        return _load_blend(path, data)
    if "messages" in data:
        return _load_message_recipe(path, data)
    raise ConfigError(f"recipe {path}: needs `messages` (a message recipe) or `blend`")
