"""Prompt texts: one plain-text file per use, hashed so results can be traced to them.

Files live in ``common/prompts/`` and are named ``<module>.<use>.txt`` (for example
``plan.subtasks.txt``); the module prefix says which module a prompt belongs to, so a changed
prompt recomputes only that module. A user directory (``--prompt-dir``) may hold files of
the same names; each one found there replaces the shipped one.

Templates use ``string.Template`` syntax (``$task``, ``${n_frames}``); rendering with a
missing value is an error rather than a silently wrong prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from narrator.common.errors import ConfigError

SHIPPED_DIR = Path(__file__).with_name("prompts")


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
        found.update(overrides)
    return PromptSet(
        texts={k: v[0] for k, v in found.items()}, sources={k: v[1] for k, v in found.items()}
    )
