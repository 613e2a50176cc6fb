"""Staged module results: what a worker publishes to Redis and the writer reads back.

A :class:`ModuleResult` holds one module's rows for one episode. Rows carry the
*episode-relative frame index* they sit on, never a computed time: the writer copies the
timestamp from the shard's ``timestamp`` column (docs/CONTRACT.md §2, row rule 4).

A result also keeps the parsed answers of its successful requests, keyed by a hash of the
request (``answers``): a re-run of an episode whose result has failed items replays them
instead of asking again and asks only what failed (see :mod:`workers.answer_replay`).

Invariants:
* A module only emits the styles the registry gives it (:mod:`common.modules`); checked by
  :func:`check_module_rows`.
* Encoding is orjson, deterministic for equal inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from narrator.common.contract import column_for_style
from narrator.common.errors import ContractError
from narrator.common.modules import module_styles

# module -> column -> allowed styles (None = speech atom)
MODULE_STYLES: dict[str, dict[str, frozenset[str | None]]] = module_styles()


@dataclass(frozen=True, slots=True)
class StagedRow:
    column: str  # "persistent" | "events"
    frame: int  # episode-relative frame index
    role: str
    content: str | None
    style: str | None
    camera: str | None = None
    tool_calls: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """An item a module could not annotate (recorded; the rest of the episode goes on)."""

    module: str
    episode: int
    item: str
    kind: str  # error class name
    message: str


@dataclass
class ModuleResult:
    module: str
    episode: int
    module_hash: str
    rows: list[StagedRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # requests, tokens, images...
    prompt_hashes: dict[str, str] = field(default_factory=dict)  # prompt name -> hash used
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. plan's subtask spans
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # request key -> answer
    items: int = 0  # distinct items asked (answered or failed)

    @property
    def failed_items(self) -> int:
        return len({f.item for f in self.failures})

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def decode(cls, raw: bytes | str) -> ModuleResult:
        data = orjson.loads(raw)
        return cls(
            module=data["module"],
            episode=int(data["episode"]),
            module_hash=data["module_hash"],
            rows=[
                StagedRow(
                    **{
                        **r,
                        "tool_calls": tuple(r["tool_calls"])
                        if r.get("tool_calls") is not None
                        else None,
                    }
                )
                for r in data["rows"]
            ],
            failures=[Failure(**f) for f in data["failures"]],
            counts={k: int(v) for k, v in data["counts"].items()},
            extra=data.get("extra", {}),
            prompt_hashes=data.get("prompt_hashes", {}),
            answers=data.get("answers", {}),
            items=int(data.get("items", 0)),
        )


def check_module_rows(module: str, rows: list[StagedRow]) -> None:
    """Raise :class:`ContractError` if ``module`` emitted a style it does not own or a row
    into the wrong column."""
    allowed = MODULE_STYLES.get(module)
    if allowed is None:
        raise ContractError(f"unknown module {module!r}")
    for row in rows:
        try:
            natural = column_for_style(row.style)
        except ValueError as exc:
            raise ContractError(f"module {module} emitted {exc}") from None
        if row.column != natural:
            raise ContractError(
                f"module {module} put a {row.style!r} row into language_{row.column}; "
                f"it belongs in language_{natural}"
            )
        if row.style not in allowed.get(row.column, frozenset()):
            raise ContractError(f"module {module} may not emit style {row.style!r}")
