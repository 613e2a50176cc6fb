"""Synthetic video for sample datasets: coded scenes and an mp4 writer.

Every frame shows the scene of its task (:mod:`narrator.samples.scene`): a few coloured
objects on a grey table and an arm that moves one of them as the episode progresses, with a
progress bar at the bottom. Camera 1 (and every odd camera) sees the table mirrored left to
right, so the cameras' views differ.

Every frame also carries a code band at the top: a row of blocks spelling, in binary, the
frame's position in its mp4 file, and a second row spelling the episode index. The blocks are
large and black/white, so the code survives lossy compression; :func:`read_frame_code` reads
it back from a decoded frame, which lets decode tests check they got the right frame.

Invariants: frames are RGB uint8 of even size; the mp4 holds frame k at k/fps; encoding is
deterministic (one thread per encoder).
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import av
import numpy as np

from narrator.samples.encode_guard import encode_guarded
from narrator.samples.scene import BACKGROUND, PROGRESS_BAR, layout, scene_for_task

CODE_BITS = 12
CODE_BAND_ROWS = 8
CODEC_PREFERENCE: tuple[str, ...] = ("libsvtav1", "libaom-av1", "libx264", "h264")
_CODEC_OPTIONS: dict[str, dict[str, str]] = {
    # One SVT-AV1 thread: its thread pool deadlocks here (see narrator.samples.encode_guard).
    "libsvtav1": {"preset": "10", "crf": "30", "svtav1-params": "lp=1"},
    "libaom-av1": {"cpu-used": "8", "crf": "30"},
    "libx264": {"preset": "veryfast", "crf": "20"},
    "h264": {"preset": "veryfast", "crf": "20"},
    "libx265": {"preset": "veryfast", "crf": "24", "x265-params": "log-level=error"},
}
PROGRESS_BAR_ROWS = 4


# --- video -------------------------------------------------------------------------------


def write_video(
    path: Path, frames: Iterable[np.ndarray], *, fps: int, codec: str, gop: int = 2
) -> None:
    """Encode RGB uint8 frames (H, W, 3; even sizes) into an mp4, yuv420p, frame k at k/fps.

    SVT-AV1 runs under :func:`~narrator.samples.encode_guard.encode_guarded` (a watched child
    process, restarted if the encoder deadlocks); other encoders run in this process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encode = functools.partial(_encode, fps=fps, codec=codec, gop=gop)
    if codec == "libsvtav1":
        encode_guarded(path, frames, encode)
    else:
        encode(path, frames)


def _encode(path: Path, frames: Iterable[np.ndarray], *, fps: int, codec: str, gop: int) -> None:
    _quiet_svt_av1()
    with av.open(str(path), "w", format="mp4") as container:
        stream: Any = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = int(frame.shape[0]), int(frame.shape[1])
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = gop
                stream.codec_context.thread_count = 1
                stream.options = dict(_CODEC_OPTIONS.get(codec, {}))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"no frames to write to {path}")
        for packet in stream.encode():
            container.mux(packet)


def _quiet_svt_av1() -> None:
    """SVT-AV1 prints a banner per encoder at its default log level; keep errors only."""
    os.environ.setdefault("SVT_LOG", "1")


@functools.cache
def encoder_works(codec: str) -> bool:
    """Whether this PyAV build can encode a tiny clip with ``codec``."""
    _quiet_svt_av1()
    try:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp4") as container:
            stream: Any = container.add_stream(codec, rate=10)
            stream.height, stream.width, stream.pix_fmt = 64, 64, "yuv420p"
            stream.options = dict(_CODEC_OPTIONS.get(codec, {}))
            for _ in range(2):
                image = np.zeros((64, 64, 3), dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return len(buffer.getvalue()) > 0
    except (av.FFmpegError, ValueError, OSError):
        return False


def pick_codec(preferred: str | None = None) -> str:
    """``preferred`` if it works, else the first working encoder of AV1, then H.264."""
    if preferred is not None:
        if not encoder_works(preferred):
            raise ValueError(f"video encoder {preferred!r} does not work in this PyAV build")
        return preferred
    for codec in CODEC_PREFERENCE:
        if encoder_works(codec):
            return codec
    raise RuntimeError(f"none of the encoders {CODEC_PREFERENCE} works in this PyAV build")


# --- frames ------------------------------------------------------------------------------


def _paint_bits(image: np.ndarray, value: int, row: int) -> None:
    block = image.shape[1] // CODE_BITS
    top = row * CODE_BAND_ROWS
    for bit in range(CODE_BITS):
        level = 235 if (value >> (CODE_BITS - 1 - bit)) & 1 else 16
        image[top : top + CODE_BAND_ROWS, bit * block : (bit + 1) * block] = level


def scene_frame(
    width: int,
    height: int,
    *,
    file_frame: int,
    episode: int,
    progress: float,
    task_index: int,
    camera: int,
) -> np.ndarray:
    """One synthetic RGB frame: the task's scene at ``progress`` (0..1) of the episode (see
    :func:`narrator.samples.scene.layout`), a progress bar at the bottom, the code band on top."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    band = 2 * CODE_BAND_ROWS
    scene = scene_for_task(task_index)
    for item in layout(scene, width, height, band, PROGRESS_BAR_ROWS, progress):
        x1, y1, x2, y2 = item.box
        image[y1:y2, x1:x2] = item.colour
    bar = max(1, round(width * progress))
    image[height - PROGRESS_BAR_ROWS :, :bar] = PROGRESS_BAR
    if camera % 2:
        image[band:] = image[band:, ::-1]
    _paint_bits(image, file_frame, 0)
    _paint_bits(image, episode, 1)
    return image


def read_frame_code(image: np.ndarray) -> tuple[int, int]:
    """(position of the frame in its mp4 file, episode index) from a decoded frame's band."""
    block = image.shape[1] // CODE_BITS
    values = []
    for row in range(2):
        top = row * CODE_BAND_ROWS
        value = 0
        for bit in range(CODE_BITS):
            patch = image[
                top + 2 : top + CODE_BAND_ROWS - 2,
                bit * block + block // 4 : (bit + 1) * block - block // 4,
            ]
            value = (value << 1) | int(float(patch.mean()) > 128.0)
        values.append(value)
    return values[0], values[1]
