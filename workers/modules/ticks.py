"""Regular sampling of an episode: ticks at a rate, snapped to the nearest stored frame.

Tick ``k`` of a rate ``hz`` lies at time ``k / hz`` seconds from the episode start, for every
``k`` whose time is not after the episode's last stored timestamp. Each tick snaps to the
frame whose *stored* timestamp is nearest (a tie goes to the earlier frame); ticks that snap
to the same frame count once. Timestamps are never computed from ``fps``.

Invariants (pure functions):
* The result is strictly increasing episode-relative frame indices within ``0..n-1``.
* Frame 0 is always the first result of :func:`tick_frames` for a non-empty episode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_EPSILON_S = 1e-6


def tick_times(last_time_s: float, hz: float) -> list[float]:
    """Times ``k / hz`` for ``k = 0, 1, ...`` up to and including ``last_time_s``."""
    if hz <= 0:
        raise ValueError(f"a tick rate must be positive, got {hz}")
    if last_time_s < 0:
        return []
    count = math.floor(last_time_s * hz + _EPSILON_S) + 1
    return [k / hz for k in range(count)]


def nearest_frames(timestamps: npt.NDArray[np.floating], times: Sequence[float]) -> list[int]:
    """The distinct frames whose stored timestamps are nearest to ``times``, in increasing
    order. ``timestamps`` must be non-decreasing (as stored for one episode)."""
    n = int(timestamps.shape[0])
    if n == 0 or not times:
        return []
    stamps = timestamps.astype(np.float64)
    wanted = np.asarray(times, dtype=np.float64)
    right = np.clip(np.searchsorted(stamps, wanted, side="left"), 0, n - 1)
    left = np.clip(right - 1, 0, n - 1)
    take_left = np.abs(wanted - stamps[left]) <= np.abs(stamps[right] - wanted)
    chosen = np.where(take_left, left, right)
    return sorted({int(f) for f in chosen})


def tick_frames(timestamps: npt.NDArray[np.floating], hz: float) -> list[int]:
    """Frames hit by ticks at ``hz`` over an episode with these stored timestamps."""
    if int(timestamps.shape[0]) == 0:
        return []
    start = float(timestamps[0])
    last = float(timestamps[-1])
    times = [start + t for t in tick_times(last - start, hz)]
    return nearest_frames(timestamps, times)


def anchored_frames(timestamps: npt.NDArray[np.floating], hz: float, per_tick: int) -> list[int]:
    """For every tick frame at ``hz``, it and the ``per_tick - 1`` frames after it (as far as
    the episode goes): the frames VQA asks about, distinct and increasing."""
    if per_tick < 1:
        raise ValueError(f"frames per tick must be at least 1, got {per_tick}")
    n_frames = int(timestamps.shape[0])
    anchored = {
        frame + offset
        for frame in tick_frames(timestamps, hz)
        for offset in range(per_tick)
        if frame + offset < n_frames
    }
    return sorted(anchored)


def sample_frames(timestamps: npt.NDArray[np.floating], hz: float) -> list[int]:
    """:func:`tick_frames` plus the episode's last frame, so a sampled view always shows how
    the episode ends."""
    frames = tick_frames(timestamps, hz)
    last = int(timestamps.shape[0]) - 1
    if frames and frames[-1] != last:
        frames.append(last)
    return frames


def spread_frames(center: int, count: int, step: int, n_frames: int) -> list[int]:
    """Up to ``count`` distinct frames ``step`` apart around ``center``: ``count // 2`` before
    it and the rest from ``center`` on, clipped to ``0..n_frames-1``, increasing."""
    if n_frames <= 0 or count <= 0:
        return []
    before = count // 2
    wanted = [center + (i - before) * max(1, step) for i in range(count)]
    return sorted({min(max(f, 0), n_frames - 1) for f in wanted})
