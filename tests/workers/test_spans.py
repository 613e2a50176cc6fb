"""Pure tests of subtask span windowing, stitching, snapping and merging
(workers/modules/spans.py) and of the plan's frame sampling, with many random inputs."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from narrator.workers.modules.spans import (
    Boundary,
    Span,
    Window,
    build_spans,
    plan_windows,
    spans_from_extra,
    stitch_windows,
    window_boundaries,
    window_overlap,
)
from narrator.workers.modules.ticks import sample_frames


def _timestamps(n: int, fps: float, jitter: random.Random | None = None) -> np.ndarray:
    stamps = np.arange(n, dtype=np.float64) / fps
    if jitter is not None:  # slightly irregular but increasing, as recorded data can be
        stamps = stamps + np.array([jitter.uniform(0, 0.2 / fps) for _ in range(n)])
        stamps[0] = 0.0
    return stamps.astype(np.float32)


def _assert_cover(spans: list[Span], n: int) -> None:
    assert spans, "at least one span"
    assert spans[0].start == 0
    assert spans[-1].end == n - 1
    for span in spans:
        assert span.start <= span.end
        assert span.label
    for before, after in itertools.pairwise(spans):
        assert after.start == before.end + 1, "consecutive, no gap, no overlap"
    starts = [s.start for s in spans]
    assert starts == sorted(set(starts)), "distinct, increasing starts"
    for before, after in itertools.pairwise(spans):
        assert before.label.casefold() != after.label.casefold(), "a repeated label is one span"


def _duration(span: Span, stamps: np.ndarray, fps: float) -> float:
    return float(stamps[span.end]) - float(stamps[span.start]) + 1.0 / fps


def test_build_spans_properties_over_random_inputs() -> None:
    rng = random.Random(1234)
    for _case in range(600):
        fps = rng.choice([10.0, 15.0, 30.0, 50.0])
        n = rng.randint(1, 400)
        stamps = _timestamps(n, fps, rng if rng.random() < 0.5 else None)
        k = rng.randint(1, 30)
        boundaries = [
            Boundary(rng.randint(-5, n + 5), rng.choice(["grasp cup", "lift cup", "place cup"]))
            for _ in range(k)
        ]
        if all(not 0 <= b.frame < n for b in boundaries):
            boundaries.append(Boundary(rng.randrange(n), "reach"))
        min_s = rng.choice([0.0, 0.5, 1.0, 2.5])
        max_spans = rng.randint(1, 10)
        spans = build_spans(boundaries, stamps, fps=fps, min_seconds=min_s, max_spans=max_spans)
        _assert_cover(spans, n)
        assert len(spans) <= max_spans
        if len(spans) > 1:
            for span in spans:
                assert _duration(span, stamps, fps) >= min_s - 1e-3, (spans, min_s)
        labels = {b.label for b in boundaries}
        assert {s.label for s in spans} <= labels


def test_build_spans_keeps_good_boundaries_unchanged() -> None:
    stamps = _timestamps(100, 10.0)
    boundaries = [Boundary(0, "reach"), Boundary(30, "grasp"), Boundary(70, "lift")]
    spans = build_spans(boundaries, stamps, fps=10.0, min_seconds=1.0, max_spans=8)
    assert spans == [Span(0, 29, "reach"), Span(30, 69, "grasp"), Span(70, 99, "lift")]


def test_short_span_merges_into_shorter_neighbour_and_takes_its_label() -> None:
    stamps = _timestamps(100, 10.0)
    # "twitch" lasts 0.3 s; its neighbours last 6 s ("reach") and 3.7 s ("lift")
    boundaries = [Boundary(0, "reach"), Boundary(60, "twitch"), Boundary(63, "lift")]
    spans = build_spans(boundaries, stamps, fps=10.0, min_seconds=1.0, max_spans=8)
    assert spans == [Span(0, 59, "reach"), Span(60, 99, "lift")]
    # with the neighbours' lengths swapped, it joins the span before it instead
    boundaries = [Boundary(0, "reach"), Boundary(37, "twitch"), Boundary(40, "lift")]
    spans = build_spans(boundaries, stamps, fps=10.0, min_seconds=1.0, max_spans=8)
    assert spans == [Span(0, 39, "reach"), Span(40, 99, "lift")]


def test_too_many_spans_merge_smallest_pair_keeping_longer_label() -> None:
    stamps = _timestamps(100, 10.0)
    boundaries = [Boundary(0, "a"), Boundary(40, "b"), Boundary(55, "c"), Boundary(60, "d")]
    spans = build_spans(boundaries, stamps, fps=10.0, min_seconds=0.0, max_spans=3)
    # pair (b, c) lasts 2.0 s, the smallest combined; b (1.5 s) is the longer of the two
    assert spans == [Span(0, 39, "a"), Span(40, 59, "b"), Span(60, 99, "d")]


def test_first_boundary_moves_to_frame_zero_and_duplicates_keep_last() -> None:
    stamps = _timestamps(50, 10.0)
    boundaries = [Boundary(20, "x"), Boundary(7, "late start"), Boundary(20, "y")]
    spans = build_spans(boundaries, stamps, fps=10.0, min_seconds=0.0, max_spans=5)
    assert spans == [Span(0, 19, "late start"), Span(20, 49, "y")]


def test_repeated_labels_join_into_one_span() -> None:
    stamps = _timestamps(90, 10.0)
    boundaries = [Boundary(0, "reach"), Boundary(30, "Reach"), Boundary(60, "lift")]
    spans = build_spans(boundaries, stamps, fps=10.0, min_seconds=0.0, max_spans=5)
    assert spans == [Span(0, 59, "reach"), Span(60, 89, "lift")]


def test_episode_shorter_than_min_gives_one_span() -> None:
    stamps = _timestamps(5, 10.0)
    spans = build_spans(
        [Boundary(0, "a"), Boundary(2, "b")], stamps, fps=10.0, min_seconds=1.0, max_spans=4
    )
    assert len(spans) == 1
    _assert_cover(spans, 5)


def test_build_spans_rejects_unusable_input() -> None:
    with pytest.raises(ValueError, match="inside the episode"):
        build_spans([Boundary(50, "a")], _timestamps(10, 10.0), fps=10, min_seconds=0, max_spans=2)
    with pytest.raises(ValueError, match="without frames"):
        build_spans([Boundary(0, "a")], _timestamps(0, 10.0), fps=10, min_seconds=0, max_spans=2)


def test_plan_windows_cover_samples_within_budget() -> None:
    rng = random.Random(7)
    for _case in range(300):
        n = rng.randint(1, 200)
        samples = sorted(rng.sample(range(1000), n))
        budget = rng.randint(2, 64)
        windows = plan_windows(samples, budget)
        assert all(2 <= len(w.frames) <= budget or len(samples) < 2 for w in windows)
        joined = sorted({f for w in windows for f in w.frames})
        assert joined == samples
        for a, b in itertools.pairwise(windows):
            shared = set(a.frames) & set(b.frames)
            assert len(shared) == window_overlap(budget)
        for a, c in zip(windows, windows[2:], strict=False):
            assert not set(a.frames) & set(c.frames), "only neighbours overlap"
        if len(samples) <= budget:
            assert len(windows) == 1


def test_window_boundaries_map_positions_to_episode_frames() -> None:
    window = Window((10, 20, 30, 40))
    got = window_boundaries(window, [(2, " lift  the cup. "), (0, "reach"), (9, "bad"), (1, " ")])
    assert got == [Boundary(10, "reach"), Boundary(30, "lift the cup")]
    with pytest.raises(ValueError):
        window_boundaries(window, [(7, "outside")])


def test_stitch_takes_each_windows_own_stretch() -> None:
    windows = [Window((0, 10, 20, 30)), Window((20, 30, 40, 50)), Window((40, 50, 60, 70))]
    answers = [
        [Boundary(0, "a"), Boundary(20, "b")],
        # window 1 re-sees the start of "b" at 20 (owned by window 0) and adds "c" at 40
        [Boundary(20, "b again"), Boundary(40, "c")],
        [Boundary(40, "c again"), Boundary(60, "d")],
    ]
    got = stitch_windows(windows, answers)
    assert got == [Boundary(0, "a"), Boundary(20, "b"), Boundary(40, "c"), Boundary(60, "d")]


def test_stitch_survives_failed_windows() -> None:
    windows = [Window((0, 10, 20, 30)), Window((20, 30, 40, 50)), Window((40, 50, 60, 70))]
    # the middle window failed: window 0's last subtask carries on until window 2 owns
    got = stitch_windows(windows, [[Boundary(0, "a")], None, [Boundary(60, "d")]])
    assert got == [Boundary(0, "a"), Boundary(60, "d")]
    # the first window failed: the first answering window's first subtask starts at frame 0
    got = stitch_windows(windows, [None, [Boundary(30, "b"), Boundary(40, "c")], None])
    assert got == [Boundary(0, "b"), Boundary(40, "c")]
    with pytest.raises(ValueError, match="no window"):
        stitch_windows(windows, [None, None, None])


def test_stitch_then_build_is_a_cover_for_random_windows() -> None:
    rng = random.Random(99)
    for _case in range(300):
        fps = 10.0
        n = rng.randint(2, 600)
        stamps = _timestamps(n, fps)
        samples = sample_frames(stamps, rng.choice([0.5, 1.0, 2.0]))
        windows = plan_windows(samples, rng.randint(2, 16))
        answers: list[list[Boundary] | None] = []
        for w in windows:
            if rng.random() < 0.2:
                answers.append(None)
                continue
            picks = [(rng.randrange(len(w.frames)), f"step {rng.randint(0, 9)}") for _ in range(3)]
            answers.append(window_boundaries(w, picks))
        if all(a is None for a in answers):
            answers[0] = window_boundaries(windows[0], [(0, "only")])
        boundaries = stitch_windows(windows, answers)
        assert boundaries[0].frame == 0
        assert [b.frame for b in boundaries] == sorted({b.frame for b in boundaries})
        spans = build_spans(boundaries, stamps, fps=fps, min_seconds=1.0, max_spans=6)
        _assert_cover(spans, n)
        assert len(spans) <= 6


def test_sample_frames_include_start_and_end() -> None:
    stamps = _timestamps(95, 10.0)  # 0.0 .. 9.4 s
    frames = sample_frames(stamps, 1.0)
    assert frames == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 94]


def test_spans_from_extra_round_trip_and_errors() -> None:
    spans = [Span(0, 9, "a"), Span(10, 19, "b")]
    assert spans_from_extra([s.to_dict() for s in spans]) == spans
    with pytest.raises(ValueError, match="malformed"):
        spans_from_extra([{"start": "0", "end": 9, "label": "a"}])
    with pytest.raises(ValueError, match="must be a list"):
        spans_from_extra(None)
