"""Load ``deploy/docker-compose.yml`` the way Docker Compose reads it, without Docker.

Role: parse the YAML (anchors and ``<<`` merge keys are resolved by the YAML loader, as in
Compose) and apply Compose's variable interpolation to every string value, so the tests see
each service's effective command, environment and volumes for a given ``.env``.

Invariants: interpolation follows the Compose Specification's forms (``$VAR``, ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
``${VAR:+replacement}``, ``${VAR+replacement}`` and ``$$`` for a literal ``$``); a required
variable that is missing raises :class:`MissingVariableError` with Compose's message; mapping
keys are not interpolated (Compose does not interpolate them either).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO_ROOT / "deploy" / "docker-compose.yml"
PROMETHEUS_FILE = REPO_ROOT / "deploy" / "prometheus.yml"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"

_TOKEN = re.compile(
    r"\$(?:"
    r"(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r")"
)


class MissingVariableError(ValueError):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) variable is not set."""


def interpolate_text(text: str, env: Mapping[str, str]) -> str:
    """Substitute Compose variables in one string value."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if missing else str(value)
        if op in (":?", "?"):
            if missing:
                raise MissingVariableError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if missing else arg
        return "" if value is None else value

    return _TOKEN.sub(substitute, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Return ``node`` with every string value interpolated (lists and mappings walked)."""
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def load_compose_raw(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as YAML, merge keys resolved, variables left as written."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    return data


def load_compose(env: Mapping[str, str], path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file with variables interpolated from ``env`` (the ``.env`` values)."""
    result = interpolate(load_compose_raw(path), env)
    assert isinstance(result, dict)
    return result


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a dict, from either the mapping or the list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in raw)
        return {key: value for key, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def service_command(service: Mapping[str, Any]) -> list[str]:
    """A service's ``command`` as an argument list (the list form is required here)."""
    command = service.get("command")
    if not isinstance(command, list):
        raise ValueError(f"command must be written as a list, got {command!r}")
    return [str(arg) for arg in command]


def bind_mounts(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The service's bind mounts in long syntax (short-syntax entries are expanded)."""
    mounts: list[dict[str, Any]] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append(volume)
            continue
        parts = str(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/", "~", "$")):
            mode = parts[2] if len(parts) > 2 else "rw"
            mounts.append(
                {"type": "bind", "source": parts[0], "target": parts[1], "read_only": "ro" in mode}
            )
    return mounts
