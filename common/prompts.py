"""Prompt texts: one plain-text file per use, hashed so results can be traced to them.

Files live in ``common/prompts/`` and are named ``<module>.<use>.txt`` (for example
``plan.subtasks.txt``); the module prefix says which module a prompt belongs to, so a changed
prompt recomputes only that module. A user directory (``--prompt-dir``) may hold files of
the same names; each one found there replaces the shipped one.

Templates use ``string.Template`` syntax (``$task``, ``${n_frames}``, ``$$`` for a dollar);
rendering with a missing value is an error rather than a silently wrong prompt.

A replacement file is checked when the prompts are loaded, before any work
(:func:`check_override`): its ``$`` syntax must be valid, it may use only the placeholders the
shipped prompt of the same name uses (the values the module passes), and it must use the
ones in :data:`REQUIRED_PLACEHOLDERS` that the shipped prompt uses (without ``$task`` the
model is not told the task). The error names the file and the placeholder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from narrator.common.errors import ConfigError

SHIPPED_DIR = Path(__file__).with_name("prompts")
REQUIRED_PLACEHOLDERS = frozenset({"task"})


@dataclass(frozen=True)
class PromptSet:
    texts: dict[str, str]  # name ("plan.subtasks") -> text
    sources: dict[str, str]  # name -> file it came from

    def text(self, name: str) -> str:
        try:
            return self.texts[name]
        except KeyError:
            raise ConfigError(f"no prompt named {name!r}; known: {sorted(self.texts)}") from None

    def render(self, name: str, **values: Any) -> str:
        try:
            return Template(self.text(name)).substitute({k: str(v) for k, v in values.items()})
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"prompt {name!r} ({self.sources[name]}) uses a placeholder that was not "
                f"given: {exc}"
            ) from exc

    def hash(self, name: str) -> str:
        return hashlib.sha256(self.text(name).encode()).hexdigest()[:16]

    def hashes(self) -> dict[str, str]:
        return {name: self.hash(name) for name in sorted(self.texts)}

    def module_prompt_hashes(self, module: str) -> dict[str, str]:
        """name -> hash of every prompt of ``module``."""
        return {n: self.hash(n) for n in sorted(self.texts) if n.split(".", 1)[0] == module}

    def module_hash(self, module: str) -> str:
        """One hash over every prompt of ``module`` (names and texts)."""
        digest = hashlib.sha256()
        for name in sorted(n for n in self.texts if n.split(".", 1)[0] == module):
            digest.update(name.encode() + b"\0" + self.texts[name].encode() + b"\0")
        return digest.hexdigest()[:16]


def _read_dir(directory: Path) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(directory.glob("*.txt")):
        try:
            found[path.stem] = (path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read prompt file {path}: {exc}") from exc
    return found


def placeholders(text: str, source: str) -> set[str]:
    """The ``$names`` a template uses; ConfigError naming ``source`` if its syntax is bad."""
    template = Template(text)
    for match in template.pattern.finditer(text):
        if match.group("invalid") is not None:
            start = match.start("invalid") - 1  # the "$" itself
            line = text.count("\n", 0, start) + 1
            snippet = text[start : start + 8].splitlines()[0]
            raise ConfigError(
                f"prompt file {source}, line {line}: {snippet!r} is not a valid placeholder; "
                "write $name or ${name}, and $$ for a literal dollar sign"
            )
    return set(template.get_identifiers())


def check_override(name: str, text: str, source: str, shipped_text: str) -> None:
    """Refuse a replacement prompt whose placeholders the module cannot fill (see above)."""
    allowed = placeholders(shipped_text, f"shipped {name}")
    used = placeholders(text, source)
    unknown = sorted(used - allowed)
    if unknown:
        raise ConfigError(
            f"prompt file {source} uses ${unknown[0]}, which {name} does not provide"
            f"{' (nor ' + ', '.join('$' + u for u in unknown[1:]) + ')' if unknown[1:] else ''}; "
            f"it can use {', '.join('$' + a for a in sorted(allowed))}"
        )
    missing = sorted((REQUIRED_PLACEHOLDERS & allowed) - used)
    if missing:
        raise ConfigError(
            f"prompt file {source} does not use ${missing[0]}; a {name} prompt must include "
            f"it (the model is not told otherwise)"
        )


def load_prompts(override_dir: Path | None = None) -> PromptSet:
    """The shipped prompts, each replaced by a same-named file in ``override_dir`` if present."""
    found = _read_dir(SHIPPED_DIR)
    if override_dir is not None:
        if not Path(override_dir).is_dir():
            raise ConfigError(f"prompt directory {override_dir} does not exist")
        overrides = _read_dir(Path(override_dir))
        unknown = sorted(set(overrides) - set(found))
        if unknown:
            raise ConfigError(
                f"prompt directory {override_dir} has files that replace no shipped prompt: "
                f"{unknown}; shipped names are {sorted(found)}"
            )
        for name, (text, source) in sorted(overrides.items()):
            check_override(name, text, source, found[name][0])
        found.update(overrides)
    return PromptSet(
        texts={k: v[0] for k, v in found.items()}, sources={k: v[1] for k, v in found.items()}
    )
