"""Frames for the VLM: decode camera frames with PyAV (or from embedded images) and encode
them as JPEG data URLs within a pixel budget.

The decoding and encoding functions are plain (they run in a frame-pool process:
:func:`encode_video_frames`, :func:`encode_image_frames`); the async loaders check the
request against the episode and hand the work to the pool.

Invariants:
* :func:`decode_video_frames` serves the requested times in time order: it seeks (to a
  keyframe at or before the earliest time minus one frame) and decodes forward. When the next
  time is more than twice the widest keyframe spacing seen so far ahead (sparse samples of a
  video with frequent keyframes, as LeRobot encodes them), it seeks ahead to that time instead
  of decoding every frame in between. Each requested time gets the frame whose presentation
  time is nearest; a tie goes to the earlier frame. Results come back in the order the times
  were asked for; a frame chosen for several times is converted to an image once.
* A time past the end of the stream (more than half a frame after its last frame), a negative
  time, or a file that cannot be opened or decoded raises
  :class:`~common.errors.VideoDecodeError` naming the file and the time.
* :func:`encode_frame` never upscales: it shrinks, keeping the aspect ratio, until
  width * height <= max_pixels.
* The async loaders do no blocking work themselves: decoding, parquet reads and JPEG encoding
  run in a :class:`~workers.frame_pool.FramePool` (processes sized to the cores), or in a
  thread when none is given.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
from PIL import Image, UnidentifiedImageError

from narrator.common.config import FrameSettings
from narrator.common.dataset.images import read_image_cells
from narrator.common.dataset.meta import DatasetMeta, Episode
from narrator.common.errors import DatasetError, VideoDecodeError
from narrator.workers.frame_pool import FramePool

T = TypeVar("T")

_TIME_EPSILON_S = 1e-6
_TIE_EPSILON_S = 1e-9  # distances this close are a tie (decimal midpoints are inexact in binary)
_FALLBACK_FRAME_S = 1 / 30
_SEEK_STEP_BACK_S = 0.5  # first step back when a seek lands too late (doubles)


@dataclass(frozen=True)
class EncodedFrame:
    data_url: str  # "data:image/jpeg;base64,..."
    sent_width: int  # size of the JPEG sent to the VLM
    sent_height: int
    stored_width: int  # size of the frame as stored in the dataset
    stored_height: int


# --- decoding ------------------------------------------------------------------------------


def _frame_duration_s(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else _FALLBACK_FRAME_S


def decode_video_frames(path: Path, timestamps_s: Sequence[float]) -> list[Image.Image]:
    """The frames nearest to ``timestamps_s`` (absolute seconds in the file), in that order."""
    if not timestamps_s:
        return []
    for t in timestamps_s:
        if not math.isfinite(t) or t < 0:
            raise VideoDecodeError(path, f"cannot decode at time {t} s: times start at 0")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise VideoDecodeError(
            path,
            f"cannot be opened as a video ({exc}) to decode time {min(timestamps_s):.3f} s; "
            "the file is missing, truncated or corrupt: restore it from the dataset's source",
        ) from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(path, "has no video stream")
        return _decode_nearest(path, container, container.streams.video[0], timestamps_s)


def _decode_nearest(
    path: Path, container: Any, stream: Any, timestamps_s: Sequence[float]
) -> list[Image.Image]:
    stream.thread_type = "AUTO"
    order = sorted(range(len(timestamps_s)), key=lambda i: timestamps_s[i])
    frame_s = _frame_duration_s(stream)
    images: list[Image.Image] = []  # each chosen frame converted once, when it is chosen
    chosen: list[int] = [-1] * len(timestamps_s)  # index into ``images`` per requested time
    pending = 0  # position in ``order`` of the next time to serve
    previous: tuple[float, Any, int] | None = None  # (time, frame, index in images or -1)
    last_gap_s = frame_s
    keyframe_gap_s: float | None = None  # the widest keyframe spacing seen so far
    seek_s: float | None = max(0.0, timestamps_s[order[0]] - frame_s)

    def image_of(entry: tuple[float, Any, int]) -> tuple[float, Any, int]:
        if entry[2] >= 0:
            return entry
        images.append(entry[1].to_image())
        return (entry[0], entry[1], len(images) - 1)

    step_back_s = _SEEK_STEP_BACK_S
    seek_ahead = True  # off once a seek landed late: reordered (B-)frames make seeks costly
    passes = 0
    try:
        while seek_s is not None:
            start_s, seek_s, previous, last_key_s = seek_s, None, None, None
            if start_s > 0 or passes > 0:
                offset = int(start_s / float(stream.time_base))
                container.seek(offset, stream=stream, backward=True, any_frame=False)
            passes += 1
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                now = float(frame.time)
                if previous is None and start_s > 0 and now > start_s + _TIME_EPSILON_S:
                    # Landed after the seek point (with B-frames a keyframe's decode time can
                    # precede its presentation time): seek further back, or the frame just
                    # before the next time would be missed.
                    seek_s, step_back_s = max(0.0, start_s - step_back_s), 2 * step_back_s
                    seek_ahead = False
                    break
                if frame.key_frame:
                    if last_key_s is not None:
                        keyframe_gap_s = max(keyframe_gap_s or 0.0, now - last_key_s)
                    last_key_s = now
                current: tuple[float, Any, int] = (now, frame, -1)
                while (
                    pending < len(order) and timestamps_s[order[pending]] <= now + _TIME_EPSILON_S
                ):
                    target = timestamps_s[order[pending]]
                    if previous is not None and (
                        target - previous[0] <= now - target + _TIE_EPSILON_S
                    ):
                        previous = image_of(previous)
                        chosen[order[pending]] = previous[2]
                    else:
                        current = image_of(current)
                        chosen[order[pending]] = current[2]
                    pending += 1
                if pending == len(order):
                    break
                if previous is not None:
                    last_gap_s = max(now - previous[0], _TIME_EPSILON_S)
                previous = current
                # Sparse times (a job's 1 Hz samples): when a keyframe must lie between this
                # frame and the next time, seek to it instead of decoding every frame between.
                ahead_s = timestamps_s[order[pending]] - frame_s
                if (
                    seek_ahead
                    and keyframe_gap_s
                    and ahead_s > start_s  # never repeat a seek (past the end it would loop)
                    and ahead_s - now > 2 * keyframe_gap_s
                ):
                    seek_s = ahead_s
                    break
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            path,
            f"cannot be decoded near {timestamps_s[order[pending]]:.3f} s ({exc}); the file "
            "is truncated or corrupt: restore it from the dataset's source",
        ) from exc
    while pending < len(order):
        target = timestamps_s[order[pending]]
        if previous is None or target - previous[0] > last_gap_s / 2 + _TIME_EPSILON_S:
            end = f"its last frame is at {previous[0]:.3f} s" if previous else "it has no frames"
            raise VideoDecodeError(
                path,
                f"has no frame at {target:.3f} s: {end}. The video is shorter than the "
                "episodes table says; restore the video or fix the table's timestamps",
            )
        previous = image_of(previous)
        chosen[order[pending]] = previous[2]
        pending += 1
    return [images[i] for i in chosen]


# --- encoding ------------------------------------------------------------------------------


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size of the same aspect ratio with width * height <= max_pixels; never
    larger than the input."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    new_w, new_h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while new_w * new_h > max_pixels:
        if new_w >= new_h:
            new_w -= 1
        else:
            new_h -= 1
    return new_w, new_h


def encode_frame(image: Image.Image, *, max_pixels: int, jpeg_quality: int) -> EncodedFrame:
    """JPEG data URL of ``image``, shrunk to the pixel budget if needed."""
    stored_w, stored_h = image.size
    sent_w, sent_h = fit_size(stored_w, stored_h, max_pixels)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if (sent_w, sent_h) != (stored_w, stored_h):
        rgb = rgb.resize((sent_w, sent_h), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=jpeg_quality)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return EncodedFrame(
        data_url=f"data:image/jpeg;base64,{encoded}",
        sent_width=sent_w,
        sent_height=sent_h,
        stored_width=stored_w,
        stored_height=stored_h,
    )


# --- work run in a frame-pool process (plain-value arguments) -------------------------------


def encode_video_frames(
    path: str, times_s: Sequence[float], max_pixels: int, jpeg_quality: int
) -> list[EncodedFrame]:
    """Decode the frames of ``path`` nearest to ``times_s`` (absolute seconds) and encode them."""
    images = decode_video_frames(Path(path), times_s)
    return [encode_frame(i, max_pixels=max_pixels, jpeg_quality=jpeg_quality) for i in images]


def encode_image_frames(
    path: str, camera: str, rows: Sequence[int], max_pixels: int, jpeg_quality: int
) -> list[EncodedFrame]:
    """Read the embedded images of ``camera`` at file rows ``rows`` and encode them."""
    data_file = Path(path)
    blobs = read_image_cells(data_file, camera, rows)
    return [
        encode_frame(
            _open_image(data_file, camera, row, blob),
            max_pixels=max_pixels,
            jpeg_quality=jpeg_quality,
        )
        for row, blob in zip(rows, blobs, strict=True)
    ]


def _open_image(path: Path, camera: str, row: int, blob: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(blob)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(
            path, f"row {row} of image camera {camera!r} is not a readable image ({exc})"
        ) from exc


# --- loaders (the event loop's side) ---------------------------------------------------------


async def _run(pool: FramePool | None, fn: Callable[..., T], *args: object) -> T:
    if pool is None:
        return await asyncio.to_thread(fn, *args)
    return await pool.run(fn, *args)


async def load_frames(
    meta: DatasetMeta,
    episode: Episode,
    camera: str,
    timestamps_s: Sequence[float],
    settings: FrameSettings,
    pool: FramePool | None = None,
) -> list[EncodedFrame]:
    """Encoded frames of a video camera at episode-relative times, decoded and encoded in
    ``pool`` (a thread without one), never on the event loop."""
    span = episode.videos.get(camera)
    if span is None:
        known = ", ".join(sorted(episode.videos)) or "none"
        raise DatasetError(
            meta.root / episode.data_file,
            f"episode {episode.index} has no video for camera {camera!r} (video cameras: "
            f"{known}); image cameras are read with load_image_frames",
        )
    duration_s = span.to_timestamp_s - span.from_timestamp_s
    # Past this, the nearest frame would be the next episode's first one in the same file.
    last_s = duration_s - 0.5 / meta.fps
    for t in timestamps_s:
        if t > last_s + _TIME_EPSILON_S:
            raise VideoDecodeError(
                span.path,
                f"time {t:.3f} s is past the end of episode {episode.index} "
                f"({duration_s:.3f} s long in this video)",
            )
    absolute = [span.from_timestamp_s + t for t in timestamps_s]
    return await _run(
        pool,
        encode_video_frames,
        str(span.path),
        absolute,
        settings.max_pixels,
        settings.jpeg_quality,
    )


async def load_image_frames(
    meta: DatasetMeta,
    episode: Episode,
    camera: str,
    frame_indices: Sequence[int],
    settings: FrameSettings,
    pool: FramePool | None = None,
) -> list[EncodedFrame]:
    """Encoded frames of an image camera (PNG/JPEG bytes in the data file), by episode-relative
    frame index; reads only the row groups holding those frames, in ``pool``."""
    if meta.camera(camera).dtype != "image":
        raise DatasetError(
            meta.root / episode.data_file, f"camera {camera!r} is not an image camera"
        )
    for index in frame_indices:
        if not 0 <= index < episode.length:
            raise DatasetError(
                meta.root / episode.data_file,
                f"episode {episode.index} has no frame {index} (length {episode.length})",
            )
    start = meta.row_start(episode)
    return await _run(
        pool,
        encode_image_frames,
        str(meta.root / episode.data_file),
        camera,
        [start + i for i in frame_indices],
        settings.max_pixels,
        settings.jpeg_quality,
    )
