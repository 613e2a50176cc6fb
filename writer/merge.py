"""Which existing language rows a run keeps (pure).

A shard may already hold language rows: from an earlier narrator run, or from another tool
(``motion``, ``trace``). A run replaces only the rows its own modules produce; every other
row stays exactly as it was.

Ownership comes from the module registry (:func:`common.modules.owner_of_style`):
``subtask``, ``memory``, ``task_aug`` and the first-frame ``plan`` belong to the plan module;
``interjection`` rows, speech atoms and a ``plan`` row stamped on an interjection's frame
belong to the interjections module; ``vqa`` rows to the vqa module; any other style belongs
to no narrator module and is always kept.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from narrator.common.contract import LanguageRow
from narrator.common.modules import owner_of_style


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
