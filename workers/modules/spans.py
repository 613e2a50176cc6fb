"""Subtask spans: windowing the sampled frames, stitching window answers, snapping and merging.

The plan module shows the VLM the frames sampled across an episode. When there are more than
a request's frame budget, the samples are cut into windows that overlap by a few frames
(:func:`plan_windows`). Each window answers with subtask starts given as *positions among the
frames it was shown* (one image per frame; :func:`window_boundaries`) or as *episode times*
read off contact-sheet badges (:func:`window_boundaries_at_times`, which snaps each time to
the nearest stored frame inside the window); both give episode frame indices.

Stitching (:func:`stitch_windows`): every window that answered *owns* a stretch of the
episode and contributes only the boundaries inside it. Between two answering windows that
overlap, the cut lies in the middle of the overlap (both saw those frames); between windows
that do not overlap (a failed window lay between them) the cut is the later window's first
frame, so the earlier window's last subtask carries on through the gap. The first answering
window owns everything before its cut, and its first boundary is moved to frame 0.

:func:`build_spans` then makes the final cover: starts snapped to distinct frames; neighbours
with the same label (ignoring case) joined into one span; every span at least ``min_seconds``
long (a short span merges into its shorter neighbour, whose label it takes); at most
``max_spans`` spans (the adjacent pair with the smallest combined duration merges, keeping the
longer one's label).

Invariants (pure functions; checked by property tests):
* Spans are consecutive and non-overlapping and cover ``0..n-1``: the first starts at 0, each
  next one starts right after the previous ends, the last ends at ``n-1``.
* Starts are distinct, strictly increasing frames; neighbours have different labels; at most
  ``max_spans`` spans; every span lasts at least ``min_seconds`` unless only one span is left.
* A span's duration is ``t[end] - t[start] + 1/fps`` from *stored* timestamps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

_DURATION_TOLERANCE_S = 1e-4


@dataclass(frozen=True)
class Boundary:
    """A subtask starting at an episode-relative frame."""

    frame: int
    label: str


@dataclass(frozen=True)
class Span:
    """A subtask covering the episode frames ``start..end`` (both inclusive)."""

    start: int
    end: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label}


@dataclass(frozen=True)
class Window:
    """The episode frames shown in one subtask request, increasing."""

    frames: tuple[int, ...]


def window_overlap(budget: int) -> int:
    """Frames two neighbouring windows share: 1 for budgets below 4, else 2. Never more than
    half the budget, so windows that are not neighbours never overlap."""
    return 1 if budget < 4 else 2


def plan_windows(samples: Sequence[int], budget: int) -> list[Window]:
    """Cut the sampled frames into windows of at most ``budget`` frames; neighbours share
    :func:`window_overlap` frames. One window when the samples fit the budget."""
    if budget < 2:
        raise ValueError(f"a frame budget must be at least 2, got {budget}")
    if len(samples) <= budget:
        return [Window(tuple(samples))] if samples else []
    step = budget - window_overlap(budget)
    windows: list[Window] = []
    lo = 0
    while True:
        hi = min(lo + budget, len(samples))
        windows.append(Window(tuple(samples[lo:hi])))
        if hi == len(samples):
            return windows
        lo += step


def clean_label(text: str) -> str:
    """A label on one line without surrounding blanks or a trailing full stop."""
    return " ".join(text.split()).rstrip(".").strip()


def window_boundaries(window: Window, starts: Sequence[tuple[int, str]]) -> list[Boundary]:
    """Episode-frame boundaries from a window's answer of ``(position, label)`` pairs.

    Positions outside the window and empty labels are dropped; when several subtasks start at
    the same position, the last one named wins (the earlier ones would be empty).
    Raises ``ValueError`` when nothing usable remains.
    """
    by_frame: dict[int, str] = {}
    for position, label in starts:
        text = clean_label(label)
        if 0 <= position < len(window.frames) and text:
            by_frame[window.frames[position]] = text
    if not by_frame:
        raise ValueError("no subtask with a valid start_frame and a non-empty label")
    return [Boundary(frame, by_frame[frame]) for frame in sorted(by_frame)]


def nearest_frame_in(timestamps: npt.NDArray[np.floating], time_s: float, lo: int, hi: int) -> int:
    """The frame of ``lo..hi`` whose stored timestamp is nearest ``time_s`` (ties: earlier)."""
    stamps = timestamps[lo : hi + 1].astype(np.float64)
    i = int(np.searchsorted(stamps, time_s, side="left"))
    if i <= 0:
        return lo
    if i >= len(stamps):
        return hi
    before, after = stamps[i - 1], stamps[i]
    return lo + (i - 1 if time_s - before <= after - time_s else i)


def window_boundaries_at_times(
    window: Window, starts: Sequence[tuple[float, str]], timestamps: npt.NDArray[np.floating]
) -> list[Boundary]:
    """Episode-frame boundaries from a contact-sheet window's answer of ``(start time,
    label)`` pairs: each time snaps to the nearest stored frame between the window's first and
    last frame. Empty labels are dropped; of several starts on one frame the last wins.
    Raises ``ValueError`` when nothing usable remains."""
    lo, hi = window.frames[0], window.frames[-1]
    by_frame: dict[int, str] = {}
    for time_s, label in starts:
        text = clean_label(label)
        if text:
            by_frame[nearest_frame_in(timestamps, time_s, lo, hi)] = text
    if not by_frame:
        raise ValueError("no subtask with a valid start_s and a non-empty label")
    return [Boundary(frame, by_frame[frame]) for frame in sorted(by_frame)]


def _cut(earlier: Window, later: Window) -> int:
    """The first frame owned by ``later`` when ``earlier`` is the answering window before it."""
    shared = sorted(set(earlier.frames) & set(later.frames))
    if not shared:
        return later.frames[0]
    return shared[len(shared) // 2]


def stitch_windows(
    windows: Sequence[Window], answers: Sequence[Sequence[Boundary] | None]
) -> list[Boundary]:
    """One increasing list of boundaries for the whole episode, the first at frame 0.

    ``answers[i]`` holds window ``i``'s boundaries (from :func:`window_boundaries`) or None
    when that window's request failed. Raises ``ValueError`` when no window answered.
    """
    if len(windows) != len(answers):
        raise ValueError("one answer (or None) per window is needed")
    answered = [(w, a) for w, a in zip(windows, answers, strict=True) if a]
    if not answered:
        raise ValueError("no window produced a usable subtask answer")
    stitched: list[Boundary] = []
    for i, (window, boundaries) in enumerate(answered):
        lo = _cut(answered[i - 1][0], window) if i > 0 else None
        hi = _cut(window, answered[i + 1][0]) if i + 1 < len(answered) else None
        for b in boundaries:
            if (lo is None or b.frame >= lo) and (hi is None or b.frame < hi):
                stitched.append(b)
    if not stitched:  # the first answering window owns everything before its cut
        stitched.append(answered[0][1][0])
    first = stitched[0]
    stitched[0] = Boundary(0, first.label)
    return _distinct(stitched)


def _distinct(boundaries: Sequence[Boundary]) -> list[Boundary]:
    """Sorted by frame; of several boundaries on one frame the last given wins."""
    by_frame: dict[int, str] = {}
    for b in boundaries:
        by_frame[b.frame] = b.label
    return [Boundary(f, by_frame[f]) for f in sorted(by_frame)]


def _join_repeats(boundaries: Sequence[Boundary]) -> list[Boundary]:
    """Drop a boundary whose label repeats the one before it: the subtask simply goes on."""
    kept: list[Boundary] = []
    for b in boundaries:
        if not kept or kept[-1].label.casefold() != b.label.casefold():
            kept.append(b)
    return kept


def _join_repeat_spans(spans: Sequence[Span]) -> list[Span]:
    """Neighbouring spans that merging left with the same label become one span."""
    joined: list[Span] = []
    for span in spans:
        if joined and joined[-1].label.casefold() == span.label.casefold():
            joined[-1] = Span(joined[-1].start, span.end, joined[-1].label)
        else:
            joined.append(span)
    return joined


def _durations(
    spans: Sequence[Span], timestamps: npt.NDArray[np.floating], fps: float
) -> list[float]:
    period = 1.0 / fps
    return [float(timestamps[s.end]) - float(timestamps[s.start]) + period for s in spans]


def _to_spans(boundaries: Sequence[Boundary], n_frames: int) -> list[Span]:
    spans = []
    for i, b in enumerate(boundaries):
        end = boundaries[i + 1].frame - 1 if i + 1 < len(boundaries) else n_frames - 1
        spans.append(Span(b.frame, end, b.label))
    return spans


def _merge(spans: list[Span], i: int, label: str) -> None:
    """Replace spans ``i`` and ``i + 1`` by one span labelled ``label``."""
    spans[i : i + 2] = [Span(spans[i].start, spans[i + 1].end, label)]


def _merge_short(
    spans: list[Span], timestamps: npt.NDArray[np.floating], fps: float, min_seconds: float
) -> None:
    while len(spans) > 1:
        durations = _durations(spans, timestamps, fps)
        shortest = min(range(len(spans)), key=lambda k: durations[k])
        if durations[shortest] + _DURATION_TOLERANCE_S >= min_seconds:
            return
        if shortest == 0:
            neighbour = 1
        elif shortest == len(spans) - 1:
            neighbour = shortest - 1
        else:
            before, after = shortest - 1, shortest + 1
            neighbour = before if durations[before] <= durations[after] else after
        first = min(shortest, neighbour)
        _merge(spans, first, spans[neighbour].label)


def _merge_to_count(
    spans: list[Span], timestamps: npt.NDArray[np.floating], fps: float, max_spans: int
) -> None:
    while len(spans) > max_spans:
        durations = _durations(spans, timestamps, fps)
        pair = min(range(len(spans) - 1), key=lambda k: durations[k] + durations[k + 1])
        longer = pair if durations[pair] >= durations[pair + 1] else pair + 1
        _merge(spans, pair, spans[longer].label)


def build_spans(
    boundaries: Sequence[Boundary],
    timestamps: npt.NDArray[np.floating],
    *,
    fps: float,
    min_seconds: float,
    max_spans: int,
) -> list[Span]:
    """The final gap-free cover of an episode of ``len(timestamps)`` frames (see module doc).

    Boundaries outside the episode are dropped; the first remaining one moves to frame 0.
    Raises ``ValueError`` for an empty episode or when no boundary lies inside it.
    """
    n_frames = int(timestamps.shape[0])
    if n_frames == 0:
        raise ValueError("an episode without frames has no subtasks")
    if max_spans < 1 or fps <= 0:
        raise ValueError("max_spans must be at least 1 and fps positive")
    inside = _distinct([b for b in boundaries if 0 <= b.frame < n_frames])
    if not inside:
        raise ValueError("no subtask boundary lies inside the episode")
    inside[0] = Boundary(0, inside[0].label)
    spans = _to_spans(_join_repeats(inside), n_frames)
    _merge_short(spans, timestamps, fps, min_seconds)
    _merge_to_count(spans, timestamps, fps, max_spans)
    return _join_repeat_spans(spans)


def spans_from_extra(extra: object) -> list[Span]:
    """Read back the spans recorded in a plan result's ``extra["subtasks"]`` (JSON data).

    Raises ``ValueError`` naming what is malformed."""
    if not isinstance(extra, list):
        raise ValueError('extra["subtasks"] must be a list of {"start", "end", "label"}')
    spans = []
    for i, item in enumerate(extra):
        ok = isinstance(item, dict) and isinstance(item.get("label"), str)
        ok = ok and all(
            isinstance(item.get(k), int) and not isinstance(item.get(k), bool)
            for k in ("start", "end")
        )
        if not ok:
            raise ValueError(f'subtask {i} of extra["subtasks"] is malformed: {item!r}')
        spans.append(Span(int(item["start"]), int(item["end"]), str(item["label"])))
    return spans
