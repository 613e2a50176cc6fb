"""The encoder watchdog of the sample generator: a stuck encoder is killed and restarted, an
encoder error reaches the caller with its type, a finished encode appears atomically."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from narrator.samples import encode_guard
from narrator.samples.encode_guard import EncoderStalledError, encode_guarded
from narrator.samples.video import read_frame_code, scene_frame, write_video

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the watchdog needs fork")


def frames(n: int = 4) -> list[np.ndarray]:
    return [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(n)]


def writes_bytes(path: Path, items: Iterable[np.ndarray]) -> None:
    path.write_bytes(bytes(int(f[0, 0, 0]) for f in items))


def hangs_the_first_time(marker: Path):  # type: ignore[no-untyped-def]
    def encode(path: Path, items: Iterable[np.ndarray]) -> None:
        attempt = len(marker.read_text()) if marker.exists() else 0
        marker.write_text("x" * (attempt + 1))
        if attempt == 0:
            next(iter(items))
            while True:  # a deadlocked encoder: no progress, ever
                time.sleep(3600)
        writes_bytes(path, items)

    return encode


def test_a_stuck_encoder_is_killed_and_the_next_attempt_writes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode_guard, "STALL_S", 3.0)
    marker, out = tmp_path / "attempts", tmp_path / "video.mp4"
    encode_guarded(out, iter(frames()), hangs_the_first_time(marker))
    assert marker.read_text() == "xx"  # two attempts: the stuck one and the good one
    assert out.read_bytes() == bytes([0, 1, 2, 3])  # the frames, from the start, once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attempts", "video.mp4"]


def test_an_encoder_that_always_stalls_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode_guard, "STALL_S", 1.0)
    monkeypatch.setattr(encode_guard, "ATTEMPTS", 2)

    def stuck(path: Path, items: Iterable[np.ndarray]) -> None:
        while True:
            time.sleep(3600)

    with pytest.raises(EncoderStalledError, match="made no progress"):
        encode_guarded(tmp_path / "video.mp4", iter(frames()), stuck)
    assert list(tmp_path.iterdir()) == []


def test_an_encoder_error_is_raised_with_its_type(tmp_path: Path) -> None:
    def broken(path: Path, items: Iterable[np.ndarray]) -> None:
        raise ValueError("no frames to write")

    with pytest.raises(ValueError, match="no frames to write"):
        encode_guarded(tmp_path / "video.mp4", iter(frames()), broken)
    assert list(tmp_path.iterdir()) == []


def test_svt_av1_goes_through_the_guard_and_decodes(tmp_path: Path) -> None:
    pictures = [
        scene_frame(96, 72, file_frame=i, episode=2, progress=i / 5, task_index=0, camera=0)
        for i in range(6)
    ]
    out = tmp_path / "video.mp4"
    write_video(out, iter(pictures), fps=10, codec="libsvtav1")
    import av

    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert [read_frame_code(f)[0] for f in decoded] == list(range(6))
