"""Small JPEG thumbnails of dataset frames for the report, decoded with PyAV.

Invariants:
* One pass per call: seek once (backward, to a keyframe before the earliest requested time)
  and decode forward; each requested time gets the frame whose presentation time is nearest.
* Thumbnails never upscale and keep the aspect ratio; they come back as ``data:`` URIs so the
  report stays one self-contained file.
* A video that cannot be decoded yields no thumbnails (the report shows placeholders) and a
  logged warning; it never stops the report.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
from PIL import Image

from narrator.common.logging import get_logger

log = get_logger(__name__)


def _image(frame: Any) -> Image.Image:
    image: Image.Image = frame.to_image()
    return image


def decode_at(path: Path, times_s: Sequence[float]) -> dict[float, Image.Image]:
    """Frames nearest to each absolute time in the file (seconds), keyed by requested time."""
    if not times_s:
        return {}
    wanted = sorted(set(times_s))
    found: dict[float, Image.Image] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = float(stream.time_base) if stream.time_base else 1.0
        rate = float(stream.average_rate) if stream.average_rate else 30.0
        start = max(0.0, wanted[0] - 1.0 / rate)
        container.seek(int(start / time_base), stream=stream, backward=True, any_frame=False)
        previous: tuple[float, Any] | None = None
        i = 0
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * time_base)
            while i < len(wanted) and t >= wanted[i]:
                if previous is not None and wanted[i] - previous[0] < t - wanted[i]:
                    found[wanted[i]] = _image(previous[1])
                else:
                    found[wanted[i]] = _image(frame)
                i += 1
            if i >= len(wanted):
                break
            previous = (t, frame)
        if previous is not None:
            while i < len(wanted):  # times after the last frame: the last frame
                found[wanted[i]] = _image(previous[1])
                i += 1
    return found


def to_data_uri(image: Image.Image, *, max_width: int, quality: int = 70) -> str:
    """A JPEG ``data:`` URI of ``image`` shrunk to at most ``max_width`` pixels wide."""
    img = image.convert("RGB")
    if img.width > max_width:
        height = max(1, round(img.height * max_width / img.width))
        img = img.resize((max_width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(
    path: Path, times_s: Sequence[float], *, max_width: int, quality: int = 70
) -> dict[float, str]:
    """Data URIs keyed by requested absolute time; empty when the video cannot be decoded."""
    try:
        images = decode_at(path, times_s)
    except (av.FFmpegError, OSError, IndexError) as exc:
        log.warning("report_thumbnails_failed", video=str(path), error=str(exc))
        return {}
    return {t: to_data_uri(img, max_width=max_width, quality=quality) for t, img in images.items()}
