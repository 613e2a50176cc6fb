"""Which existing language rows a run keeps (pure).

A shard may already hold language rows: from an earlier narrator run, or from another tool
(``motion``, ``trace``). A run replaces only the rows its own modules produce; every other
row stays exactly as it was.

Ownership (from the module registry, :func:`common.modules.owner_of_style`): ``subtask``,
``memory``, ``task_aug`` and the ``plan`` rows at subtask starts belong to the plan module;
``interjection`` rows, speech atoms and a ``plan`` row stamped on an interjection's frame
belong to the interjections module; ``vqa`` rows to the vqa module; any other style belongs
to no narrator module and is always kept.

Precedence (:func:`yield_to_interjections`): the plan module schedules a plan row at every
subtask start, and interjections sit on subtask starts, so on an interjection's frame the
interjections module's refreshed plan (which reflects what the person asked) replaces the
scheduled one: one plan row per timestamp.

Episodes a run does not annotate (``--only-episodes``: the other episodes of a shard it
rewrites) keep all their rows, in their order, whatever their owner
(:func:`untouched_episodes`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from narrator.common.contract import LanguageRow
from narrator.common.dataset.language import EpisodeLanguage
from narrator.common.modules import owner_of_style
from narrator.common.staging import StagedRow


def row_owner(row: LanguageRow, *, interjection_times: Collection[float]) -> str | None:
    anchors = ("interjection",) if row.timestamp in interjection_times else ()
    return owner_of_style(row.style, anchors_here=anchors)


def kept_rows(
    persistent: Sequence[LanguageRow],
    events_by_frame: Mapping[int, Sequence[LanguageRow]],
    timestamps: Sequence[float],
    run_modules: Collection[str],
) -> tuple[list[LanguageRow], dict[int, list[LanguageRow]]]:
    """The existing rows of one episode that a run of ``run_modules`` must keep."""
    interjection_times = {
        float(timestamps[f])
        for f, rows in events_by_frame.items()
        if any(r.style == "interjection" for r in rows)
    }

    def keep(row: LanguageRow) -> bool:
        owner = row_owner(row, interjection_times=interjection_times)
        return owner is None or owner not in run_modules

    events: dict[int, list[LanguageRow]] = {}
    for frame, rows in events_by_frame.items():
        kept = [r for r in rows if keep(r)]
        if kept:
            events[frame] = kept
    return [r for r in persistent if keep(r)], events


def yield_to_interjections(
    plan_rows: Sequence[StagedRow], interjection_frames: Collection[int]
) -> list[StagedRow]:
    """The plan module's staged rows without its plan rows on ``interjection_frames`` (frames
    where an interjection, new or kept from an earlier run, carries its own plan row)."""
    frames = set(interjection_frames)
    return [r for r in plan_rows if not (r.style == "plan" and r.frame in frames)]


def untouched_episodes(
    existing: Mapping[int, EpisodeLanguage],
    shard_episodes: Collection[int],
    annotated: Collection[int],
) -> tuple[dict[int, list[LanguageRow]], dict[int, dict[int, list[LanguageRow]]]]:
    """The rows of the shard's episodes outside ``annotated``, exactly as they were (same
    rows, same order; an episode without rows gets none): what an ``--only-episodes`` run
    writes back for the episodes it does not annotate."""
    skip = set(annotated)
    persistent: dict[int, list[LanguageRow]] = {}
    events: dict[int, dict[int, list[LanguageRow]]] = {}
    for episode in shard_episodes:
        old = existing.get(episode)
        if episode in skip or old is None:
            continue
        persistent[episode] = list(old.persistent)
        events[episode] = {frame: list(rows) for frame, rows in old.events_by_frame.items()}
    return persistent, events
