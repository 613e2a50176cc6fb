"""The rows of one data file, assembled from staged module results (pure).

:func:`assemble_file` places each staged row on its frame with the timestamp copied from the
shard's ``timestamp`` column (never computed), adds the existing rows the run does not own
(:mod:`writer.merge`), sorts every list into the contract's order and validates every episode
with :func:`common.validation.validate_episode` (docs/CONTRACT.md, "Validation").

Invariants: no I/O; the same inputs give the same rows and findings in the same order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

import orjson

from narrator.common.contract import LanguageRow, sort_events, sort_persistent
from narrator.common.dataset.language import EpisodeLanguage
from narrator.common.dataset.meta import EpisodeFrames, FrameSize
from narrator.common.errors import ContractError
from narrator.common.staging import ModuleResult, StagedRow
from narrator.common.validation import Finding, validate_episode
from narrator.writer.merge import kept_rows, yield_to_interjections

PersistentRows = dict[int, list[LanguageRow]]  # episode -> sorted persistent rows
EventRows = dict[int, dict[int, list[LanguageRow]]]  # episode -> frame -> sorted event rows


def to_language_row(row: StagedRow, timestamp: float | None) -> LanguageRow:
    """A staged row as a contract row; tool calls become JSON texts."""
    calls = (
        tuple(orjson.dumps(c).decode() for c in row.tool_calls)
        if row.tool_calls is not None
        else None
    )
    return LanguageRow(
        role=row.role,
        content=row.content,
        style=row.style,
        timestamp=timestamp,
        camera=row.camera,
        tool_calls=calls,
    )


def _vqa_types(
    results: Mapping[tuple[str, int], ModuleResult], episode: int
) -> dict[tuple[int, str], str]:
    types: dict[tuple[int, str], str] = {}
    if ("vqa", episode) in results:
        for asked in results[("vqa", episode)].extra.get("question_types", []):
            types[(int(asked["frame"]), str(asked["camera"]))] = str(asked["type"])
    return types


def assemble_file(
    modules: Sequence[str],
    cameras: Collection[str],
    episodes: Sequence[int],
    frames: Mapping[int, EpisodeFrames],
    results: Mapping[tuple[str, int], ModuleResult],
    existing: Mapping[int, EpisodeLanguage] | None = None,
    frame_sizes: Mapping[int, Mapping[str, FrameSize]] | None = None,
    plans: bool = True,
) -> tuple[PersistentRows, EventRows, list[Finding]]:
    """Every episode's rows: the run's ``modules``' staged rows plus the existing rows they do
    not own, sorted, with the findings of validating them.

    On a frame with an interjection (new or kept) the plan module's plan row yields to the
    interjection's own (:func:`writer.merge.yield_to_interjections`). ``frame_sizes``
    (episode -> camera -> stored width, height) lets validation check VQA coordinates against
    the frames; ``plans`` False (``--no-plan``) lifts the rule that an interjection has a plan
    row on its frame.
    """
    persistent: PersistentRows = {}
    events: EventRows = {}
    findings: list[Finding] = []
    for ep in episodes:
        ts = frames[ep].timestamp
        timestamps = [float(t) for t in ts]
        p_rows: list[LanguageRow] = []
        e_rows: dict[int, list[LanguageRow]] = defaultdict(list)
        old = (existing or {}).get(ep)
        if old is not None and len(old.timestamps) == len(ts):
            keep_p, keep_e = kept_rows(old.persistent, old.events_by_frame, timestamps, modules)
            p_rows.extend(keep_p)
            for frame, rows in keep_e.items():
                e_rows[frame].extend(rows)
        interjection_frames = {
            row.frame
            for module in modules
            for row in results[(module, ep)].rows
            if row.style == "interjection"
        }
        interjection_frames |= {
            f for f, rows in e_rows.items() if any(r.style == "interjection" for r in rows)
        }
        for module in modules:
            staged = results[(module, ep)].rows
            if module == "plan":
                staged = yield_to_interjections(staged, interjection_frames)
            for row in staged:
                if not 0 <= row.frame < len(ts):
                    raise ContractError(f"episode {ep}: {module} row on missing frame {row.frame}")
                if row.column == "persistent":
                    p_rows.append(to_language_row(row, timestamps[row.frame]))
                else:
                    e_rows[row.frame].append(to_language_row(row, None))
        persistent[ep] = sort_persistent(p_rows)
        events[ep] = {f: sort_events(rows) for f, rows in sorted(e_rows.items())}
        findings += validate_episode(
            episode=ep,
            frame_timestamps=timestamps,
            persistent=persistent[ep],
            events_by_frame=events[ep],
            cameras=cameras,
            vqa_types=_vqa_types(results, ep) or None,
            frame_sizes=(frame_sizes or {}).get(ep),
            plans=plans,
        )
    return persistent, events, findings
