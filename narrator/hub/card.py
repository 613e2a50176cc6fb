"""The dataset card (``README.md``) uploaded by ``--push-to-hub`` (pure).

The card says what narrator annotated: the columns and styles written (rows per style), the
episodes (all or the ``--only-episodes`` selection), the model, the settings that shaped the
answers, and every prompt with its hash, so a row can be traced to the prompt that made it.

An existing card (the dataset's ``README.md``, as downloaded) is kept: its YAML front matter
keeps every key (``tags`` gains ``LeRobot``, ``narrator`` and ``language-annotations``,
``task_categories`` gains ``robotics``, and ``configs`` is added only when absent) and its
text keeps everything outside the block between :data:`BEGIN` and :data:`END`, which narrator
replaces (appended at the end the first time). Without a card, a new one in LeRobot's shape is
written (front matter, a pointer to LeRobot, ``meta/info.json``).

Invariant: the same facts and card text give the same output, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

BEGIN = "<!-- narrator:language-annotations:begin -->"
END = "<!-- narrator:language-annotations:end -->"
CARD_TAGS = ("LeRobot", "narrator", "language-annotations")
DATA_FILES_CONFIG = {"config_name": "default", "data_files": "data/*/*.parquet"}
# What each style holds, for readers of the card.
STYLE_MEANING = {
    "subtask": "the current subtask, on every frame of its span",
    "plan": "the steps still to do, from every subtask start and interjection",
    "memory": "what matters for the rest of the task, at each subtask boundary",
    "task_aug": "rephrasings of the task, at the first frame",
    "interjection": "something a person says during the episode",
    "speech": "the robot's spoken reply (a `say` tool call)",
    "vqa": "a question about one camera's frame and its JSON answer",
}


@dataclass(frozen=True)
class CardFacts:
    """What the card reports; gathered from the run record and the annotated dataset."""

    repo_id: str
    model: str
    run_id: str
    generation: str
    narrator_version: str
    codebase_version: str
    modules: tuple[str, ...]
    module_hashes: Mapping[str, str]
    prompts: Mapping[str, tuple[str, str]]  # name -> (hash, "shipped" or the user's file name)
    request_options: Mapping[str, Any]  # temperature, max_tokens, seed, reasoning_effort
    settings: Mapping[str, Any]  # the run's annotation settings (JSON-able)
    episodes_total: int  # episodes in the dataset
    episodes_annotated: int
    selection: tuple[str, ...] = ()  # --only-episodes ranges; () = every episode
    rows_by_style: Mapping[str, int] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)  # meta/info.json


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter mapping, the rest) of a card; no front matter gives ({}, text)."""
    if not text.startswith("---"):
        return {}, text
    lines = text.splitlines(keepends=True)
    for index in range(1, len(lines)):
        if lines[index].rstrip("\r\n") == "---":
            try:
                loaded = yaml.safe_load("".join(lines[1:index])) or {}
            except yaml.YAMLError:
                return {}, text  # not YAML after all: keep the text whole
            if not isinstance(loaded, dict):
                return {}, text
            return loaded, "".join(lines[index + 1 :])
    return {}, text


def _merged_list(current: Any, wanted: tuple[str, ...]) -> list[Any]:
    items = list(current) if isinstance(current, list) else ([current] if current else [])
    return items + [w for w in wanted if w not in items]


def front_matter(existing: Mapping[str, Any]) -> dict[str, Any]:
    """The card's metadata: the existing keys, plus what LeRobot's cards carry."""
    out = dict(existing)
    out["tags"] = _merged_list(existing.get("tags"), CARD_TAGS)
    out["task_categories"] = _merged_list(existing.get("task_categories"), ("robotics",))
    out.setdefault("configs", [dict(DATA_FILES_CONFIG)])
    return out


def _episodes_line(facts: CardFacts) -> str:
    if not facts.selection:
        return f"all {facts.episodes_total} episodes"
    return (
        f"{facts.episodes_annotated} of {facts.episodes_total} episodes "
        f"(`--only-episodes {','.join(facts.selection)}`; the others kept the rows they had)"
    )


def annotation_section(facts: CardFacts) -> str:
    """The block narrator owns in the card, between :data:`BEGIN` and :data:`END`."""
    lines = [
        BEGIN,
        "## Language annotations",
        "",
        f"Annotated by narrator {facts.narrator_version} with the "
        f"vision-language model `{facts.model}`: {_episodes_line(facts)}, modules "
        f"{', '.join(f'`{m}`' for m in facts.modules)}.",
        "",
        "The data files carry two columns in LeRobot's language format (see `meta/info.json`): "
        "`language_persistent` (rows in force until replaced, the same list on every frame of "
        "an episode) and `language_events` (rows on the one frame they happen at).",
        "",
    ]
    if facts.rows_by_style:
        lines += ["| style | rows | what it holds |", "|---|---:|---|"]
        for style, count in sorted(facts.rows_by_style.items()):
            lines.append(f"| `{style}` | {count} | {STYLE_MEANING.get(style, '')} |")
        lines.append("")
    lines += ["Requests:"]
    options = ", ".join(
        f"`{k}` {'unset' if v is None else v}" for k, v in facts.request_options.items()
    )
    lines += [f"{options}.", ""]
    lines += ["| prompt | sha256 (16 hex) | source |", "|---|---|---|"]
    for name, (digest, source) in sorted(facts.prompts.items()):
        lines.append(f"| `{name}` | `{digest}` | {source} |")
    lines += [
        "",
        f"Run `{facts.run_id}`, generation `{facts.generation}`; module hashes: "
        + ", ".join(f"`{m}` `{h}`" for m, h in sorted(facts.module_hashes.items()))
        + f". Dataset format `{facts.codebase_version}`.",
        "",
        "<details><summary>annotation settings</summary>",
        "",
        "```json",
        json.dumps(facts.settings, indent=2, sort_keys=True),
        "```",
        "",
        "</details>",
        END,
    ]
    return "\n".join(lines) + "\n"


def _new_body(facts: CardFacts) -> str:
    structure = json.dumps(dict(facts.info), indent=4, ensure_ascii=False)
    return (
        f"# {facts.repo_id}\n\n"
        "This dataset was created using [LeRobot](https://github.com/huggingface/lerobot).\n\n"
        "## Dataset Structure\n\n"
        f"[meta/info.json](meta/info.json):\n```json\n{structure}\n```\n\n"
    )


def _replace_section(body: str, section: str) -> str:
    start = body.find(BEGIN)
    end = body.find(END, start) if start >= 0 else -1
    if start >= 0 and end >= 0:
        tail = body[end + len(END) :]
        return body[:start] + section.rstrip("\n") + tail
    separator = (
        "" if not body or body.endswith("\n\n") else ("\n" if body.endswith("\n") else "\n\n")
    )
    return body + separator + section


def build_card(existing: str | None, facts: CardFacts) -> str:
    """The card text to upload: ``existing`` (None: no card yet) updated with ``facts``."""
    meta, body = split_front_matter(existing) if existing else ({}, _new_body(facts))
    if existing is not None and not body.strip():
        body = _new_body(facts)
    header = yaml.safe_dump(front_matter(meta), sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n" + _replace_section(body, annotation_section(facts))
