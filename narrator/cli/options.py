"""Config flags of the subcommands, derived from the config model, and their way back into it.

:func:`add_config_flags` adds one argparse argument per setting of
:func:`narrator.common.config.config_settings` that the subcommand takes (name, help with
default, unit and variable all come from the model's fields; nothing here lists a setting).
:func:`config_from_args` is the one place where argparse results become a
:class:`~narrator.common.config.NarratorConfig`, through
:func:`narrator.common.config.load_config`, which also reads ``NARRATOR_*`` variables and an
optional YAML file (precedence: flags > environment > YAML > defaults).

Values reach the model as text and are validated there, so a bad flag gets the model's
message naming the flag (exit 2, one line).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from narrator.common.config import NarratorConfig, config_settings, load_config
from narrator.common.config_surface import Setting, parse_text, set_path

_METAVARS = {
    "int": "N",
    "float": "X",
    "str": "TEXT",
    "path": "PATH",
    "secret": "TEXT",
    "list": "A,B",
    "json": "JSON",
}


def _metavar(setting: Setting) -> str | None:
    if setting.metavar:
        return setting.metavar
    if setting.kind in ("int", "float") and setting.path[-1].endswith(("_s", "_seconds")):
        return "SECONDS"
    if setting.kind == "float" and setting.path[-1].endswith("_hz"):
        return "HZ"
    return _METAVARS.get(setting.kind)


def _add(group: Any, setting: Setting) -> None:
    assert setting.flag is not None
    names = [setting.flag, *setting.flag_aliases]
    common: dict[str, Any] = {"dest": setting.dest, "help": setting.help(), "default": None}
    if setting.kind == "bool" and setting.value_path is not None:
        # A switch that may name its target: --flag, --flag VALUE, and --no-flag.
        group.add_argument(*names, nargs="?", const=True, metavar=_metavar(setting), **common)
        negative = "--no-" + setting.flag.removeprefix("--")
        group.add_argument(
            negative,
            dest=setting.dest,
            action="store_const",
            const=False,
            default=None,
            help=f"do not {setting.flag.removeprefix('--').replace('-', ' ')} (default)",
        )
    elif setting.kind == "bool":
        group.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
    elif setting.kind == "choice":
        group.add_argument(*names, choices=setting.choices, **common)
    elif setting.repeat:
        group.add_argument(*names, action="append", metavar=_metavar(setting), **common)
    else:
        group.add_argument(*names, metavar=_metavar(setting), **common)


def add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """``--config`` and every setting's flag that ``command`` takes, grouped by section."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML config file in the config's nested shape; flags and env override it "
        "(default: none)",
    )
    groups: dict[str, list[Setting]] = defaultdict(list)
    for setting in config_settings():
        if command in setting.commands and setting.flag is not None:
            groups[setting.group].append(setting)
    for title, settings in groups.items():
        group = parser.add_argument_group(title)
        for setting in settings:
            _add(group, setting)
    env_only = [
        f"{s.env} ({s.description}; no flag: {s.no_flag})"
        for s in config_settings()
        if command in s.commands and s.flag is None
    ]
    if env_only:
        parser.epilog = "Set only in the environment: " + "; ".join(env_only) + "."


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, in the config's nested shape (absent flags left out)."""
    values = vars(args)
    out: dict[str, Any] = {}
    for setting in config_settings():
        raw = values.get(setting.dest)
        if raw is None:
            continue
        if setting.kind == "bool" and isinstance(raw, str) and setting.value_path is not None:
            set_path(out, setting.value_path, raw)  # --flag VALUE: the switch and its value
            value: Any = True
        elif setting.kind == "bool":
            value = bool(raw)
        elif isinstance(raw, list):  # a repeated flag; each may also hold a comma list
            value = [v for text in raw for v in parse_text(setting, text, str(setting.flag))]
        else:
            value = parse_text(setting, str(raw), str(setting.flag))
        set_path(out, setting.path, value)
    return out


def config_from_args(args: argparse.Namespace) -> NarratorConfig:
    return load_config(cli_overrides(args), yaml_path=getattr(args, "config", None))
