"""How the configuration model reaches people and processes: flags, env variables, child env.

Everything here is derived from the fields of a pydantic config model (in narrator,
:class:`narrator.common.config.NarratorConfig`), so a new field is a new CLI flag and a new
environment variable without any other edit:

* **flag**: ``--`` + the section's ``cli_prefix`` + the field name with ``-`` for ``_``
  (``vqa.vqa_hz`` -> ``--vqa-hz``, ``vlm.connect_timeout_s`` -> ``--vlm-connect-timeout-s``),
  unless the field's :class:`Surface` names one. Its help is the field's ``description``
  (which states the unit) followed by the default and the environment variable.
* **env**: ``NARRATOR_`` + the field path joined by ``__``, upper case (``NARRATOR_WORKERS``,
  ``NARRATOR_VLM__TIMEOUT_S``, ``NARRATOR_ANNOTATION__VQA__VQA_HZ``), plus the short names
  the docs use (``NARRATOR_MODEL``, ``NARRATOR_VLM_URLS``), declared on the field.
* **commands**: the subcommands that take the flag: the field's :class:`Surface`, else its
  section model's ``cli_commands`` class variable.
* **switch with a value**: a bool field whose Surface names a ``value_path`` takes an optional
  value on its flag (``--push-to-hub`` or ``--push-to-hub REPO``), which sets that other field.
* **child env**: :func:`child_environment` writes a config as variables such that
  :func:`env_overrides` reads back the same config (the one-machine runner passes its whole
  config to the worker and writer processes this way; secrets never go through argv).

Invariants (checked by ``tests/cli/test_config_surface.py``): every field has a description
and an env name; every field has a flag unless its Surface gives the reason it has none;
flags and env names are unique.

Pure: no argparse and no I/O here; ``narrator/cli/options.py`` turns :func:`settings_of`
into argparse arguments.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import orjson
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from narrator.common.errors import ConfigError

ENV_PREFIX = "NARRATOR_"

# Subcommands that build a config from flags.
ANNOTATE = "annotate"
ENQUEUE = "enqueue"
WORKER = "worker"
WRITER = "writer"
STATUS = "status"
RETRY_FAILED = "retry-failed"
CONFIG_COMMANDS: tuple[str, ...] = (ANNOTATE, ENQUEUE, WORKER, WRITER, STATUS, RETRY_FAILED)

Kind = Literal["bool", "int", "float", "str", "path", "secret", "choice", "list", "json"]


@dataclass(frozen=True)
class Surface:
    """Per-field overrides of the derived surface (put in the field's ``Annotated``)."""

    flag: str | None = None  # instead of the derived --name
    flag_aliases: tuple[str, ...] = ()  # further flag names that keep working
    env: str | None = None  # the documented (primary) variable; the derived one still works
    commands: frozenset[str] | None = None  # instead of the section's
    no_flag: str | None = None  # why this field has no flag (e.g. a secret stays out of argv)
    repeat: bool = False  # a list flag given once per value (--vlm-url A --vlm-url B)
    metavar: str | None = None
    default_text: str | None = None  # how to say the default when its value says little
    # A bool switch whose flag may also carry a value, stored into the field at this path
    # (``--push-to-hub`` alone, or ``--push-to-hub REPO`` setting ``hub.push_repo_id`` too).
    value_path: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Setting:
    """One leaf field of the config model as users and processes see it."""

    path: tuple[str, ...]
    kind: Kind
    description: str
    default: Any
    env: str  # primary variable
    env_aliases: tuple[str, ...]  # other accepted names
    flag: str | None
    flag_aliases: tuple[str, ...]
    commands: frozenset[str]
    group: str
    choices: tuple[str, ...] = ()
    repeat: bool = False
    metavar: str | None = None
    default_text: str | None = None
    no_flag: str | None = None
    value_path: tuple[str, ...] | None = None  # see Surface.value_path

    @property
    def dest(self) -> str:
        """The argparse destination (unique because paths are)."""
        return "cfg__" + "__".join(self.path)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def env_names(self) -> tuple[str, ...]:
        return (self.env, *self.env_aliases)

    def default_shown(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return format_value(self.kind, self.default) or "unset"

    def help(self) -> str:
        """One line: what it is (with unit), its default and its environment variable."""
        text = self.description.rstrip(".")
        return f"{text} (default: {self.default_shown()}; env {self.env})"

    def names(self) -> str:
        """How an error message names the setting: its flag and its variable."""
        return f"{self.flag} / {self.env}" if self.flag else self.env


def _strip_optional(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _kind_of(path: tuple[str, ...], annotation: Any) -> tuple[Kind, tuple[str, ...]]:
    inner = _strip_optional(annotation)
    origin = get_origin(inner)
    if inner is bool:
        return "bool", ()
    if inner is int:
        return "int", ()
    if inner is float:
        return "float", ()
    if inner is str:
        return "str", ()
    if inner is SecretStr:
        return "secret", ()
    if isinstance(inner, type) and issubclass(inner, Path):
        return "path", ()
    if origin is Literal:
        return "choice", tuple(str(a) for a in get_args(inner))
    if origin in (tuple, list) and all(a in (str, Ellipsis) for a in get_args(inner)):
        return "list", ()
    if origin is dict or inner is dict:
        return "json", ()
    raise TypeError(
        f"config field {'.'.join(path)} has type {annotation!r}, which has no flag/env form; "
        "use bool, int, float, str, Path, SecretStr, a Literal, tuple[str, ...] or dict"
    )


def _surface_of(info: FieldInfo) -> Surface:
    for item in info.metadata:
        if isinstance(item, Surface):
            return item
    return Surface()


def _walk(
    model: type[BaseModel],
    path: tuple[str, ...],
    prefix: str,
    commands: frozenset[str],
    group: str,
) -> Iterator[Setting]:
    for name, info in model.model_fields.items():
        here = (*path, name)
        annotation = info.annotation
        if _is_model(annotation):
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
            yield from _walk(
                annotation,
                here,
                prefix + str(getattr(annotation, "cli_prefix", "")),
                frozenset(getattr(annotation, "cli_commands", commands)),
                str(getattr(annotation, "cli_group", group)),
            )
            continue
        surface = _surface_of(info)
        kind, choices = _kind_of(here, annotation)
        derived_env = ENV_PREFIX + "__".join(p.upper() for p in here)
        env = surface.env or derived_env
        flag = None
        if surface.no_flag is None:
            flag = surface.flag or "--" + (prefix + name).replace("_", "-")
        yield Setting(
            path=here,
            kind=kind,
            description=info.description or "",
            default=info.get_default(call_default_factory=True),
            env=env,
            env_aliases=(derived_env,) if env != derived_env else (),
            flag=flag,
            flag_aliases=surface.flag_aliases,
            commands=surface.commands if surface.commands is not None else commands,
            group=group,
            choices=choices,
            repeat=surface.repeat,
            metavar=surface.metavar,
            default_text=surface.default_text,
            no_flag=surface.no_flag,
            value_path=surface.value_path,
        )


def settings_of(model: type[BaseModel]) -> tuple[Setting, ...]:
    """Every leaf field of ``model`` (depth first, in declaration order); checks uniqueness."""
    found = tuple(
        _walk(
            model,
            (),
            str(getattr(model, "cli_prefix", "")),
            frozenset(getattr(model, "cli_commands", (ANNOTATE, ENQUEUE))),
            str(getattr(model, "cli_group", "settings")),
        )
    )
    seen: dict[str, str] = {}
    for setting in found:
        for name in (setting.flag, *setting.flag_aliases, *setting.env_names):
            if name is None:
                continue
            if name in seen:
                raise TypeError(f"{name} names both {seen[name]} and {setting.dotted}")
            seen[name] = setting.dotted
    return found


def format_value(kind: Kind, value: Any) -> str | None:
    """A value as a flag or an environment variable spells it (None: not set)."""
    if value is None:
        return None
    if kind == "secret":
        return str(value.get_secret_value() if isinstance(value, SecretStr) else value)
    if kind == "bool":
        return "true" if value else "false"
    if kind == "list":
        return ",".join(str(v) for v in value)
    if kind == "json":
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return str(value)


def parse_text(setting: Setting, raw: str, source: str) -> Any:
    """A flag's or variable's text as the value handed to the model (which validates it)."""
    if setting.kind == "list":
        return [part.strip() for part in raw.split(",") if part.strip()]
    if setting.kind == "json":
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not valid JSON ({exc}); give a JSON object") from exc
        if not isinstance(value, dict):
            raise ConfigError(f"{source} must be a JSON object like '{{\"key\": value}}'")
        return value
    return raw


def set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def env_overrides(settings: tuple[Setting, ...], env: Mapping[str, str]) -> dict[str, Any]:
    """``NARRATOR_*`` variables in the config's nested dict shape.

    Known names (primary first, so it wins over an alias) map to their field; any other
    ``NARRATOR_A__B`` reaches field ``a.b`` generically, so a misspelt one is reported by the
    model's validation instead of being ignored. Empty values count as unset.
    """
    out: dict[str, Any] = {}
    known: set[str] = set()
    for setting in settings:
        for name in reversed(setting.env_names):  # the primary name last: it wins
            known.add(name)
            raw = env.get(name, "")
            if raw != "":
                set_path(out, setting.path, parse_text(setting, raw, name))
    for name, raw in env.items():
        if name in known or not name.startswith(ENV_PREFIX) or "__" not in name or raw == "":
            continue
        set_path(out, tuple(p.lower() for p in name.removeprefix(ENV_PREFIX).split("__")), raw)
    return out


def is_config_variable(settings: tuple[Setting, ...], name: str) -> bool:
    """Whether :func:`env_overrides` would read ``name``."""
    if any(name in s.env_names for s in settings):
        return True
    return name.startswith(ENV_PREFIX) and "__" in name


def value_at(config: BaseModel, path: tuple[str, ...]) -> Any:
    node: Any = config
    for part in path:
        node = getattr(node, part)
    return node


def child_environment(
    settings: tuple[Setting, ...], config: BaseModel, base: Mapping[str, str]
) -> dict[str, str]:
    """``base`` without its config variables, plus ``config`` written as variables.

    Loading the result with :func:`env_overrides` (and no flags or YAML) gives ``config``
    back, whatever the parent's own flags, YAML file and variables were.
    """
    env = {k: v for k, v in base.items() if not is_config_variable(settings, k)}
    for setting in settings:
        text = format_value(setting.kind, value_at(config, setting.path))
        if text is not None and text != "":
            env[setting.env] = text
    return env


def setting_for(settings: tuple[Setting, ...], loc: tuple[str | int, ...]) -> Setting | None:
    """The setting a validation error location points into (None for a section)."""
    for setting in settings:
        if tuple(loc[: len(setting.path)]) == setting.path:
            return setting
    return None
