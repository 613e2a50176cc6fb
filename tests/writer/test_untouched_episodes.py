"""``writer.merge.untouched_episodes`` (pure): the episodes of a rewritten shard that an
``--only-episodes`` run does not annotate keep every row, of every owner, in its order."""

from __future__ import annotations

import numpy as np

from narrator.common.contract import LanguageRow, speech_atom
from narrator.common.dataset.language import EpisodeLanguage
from narrator.writer.merge import untouched_episodes


def _episode(index: int) -> EpisodeLanguage:
    persistent = [
        LanguageRow("assistant", "grasp the cup", "subtask", 0.0, None, None),
        LanguageRow("assistant", "1. grasp\n2. lift", "plan", 0.0, None, None),
        LanguageRow("assistant", "lean left", "motion", 0.5, None, None),  # another tool's row
    ]
    events = {
        0: [speech_atom("On it.")],
        3: [LanguageRow("user", "Where is the cup?", "vqa", None, "observation.images.top", None)],
    }
    return EpisodeLanguage(index, np.arange(4, dtype=np.float32) / 10, 0, persistent, events)


def test_unannotated_episodes_keep_all_their_rows_in_order() -> None:
    existing = {1: _episode(1), 2: _episode(2)}
    persistent, events = untouched_episodes(existing, [1, 2, 3], annotated=[2])
    assert set(persistent) == {1} and set(events) == {1}  # 2 is annotated, 3 has no rows
    assert persistent[1] == existing[1].persistent
    assert events[1] == existing[1].events_by_frame
    persistent[1].append(persistent[1][0])
    assert len(existing[1].persistent) == 3, "the existing rows are copied, not shared"


def test_a_run_over_every_episode_keeps_nothing_whole() -> None:
    existing = {1: _episode(1), 2: _episode(2)}
    assert untouched_episodes(existing, [1, 2], annotated=[1, 2]) == ({}, {})
