"""Mapping VLM pixel coordinates back to the frame as stored in the dataset.

Convention (see docs/COORDINATES.md): every coordinate narrator writes is a pixel position in
the frame *as stored in the dataset* (``stored_width`` x ``stored_height``, the size in
``meta/info.json``), origin at the top-left corner of the image, x to the right, y down.
Values are whole pixels. A box is ``[x1, y1, x2, y2]`` (``xyxy``) with its corners on pixel
edges: ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height``. A point is ``[x, y]``, the
column and row of a pixel: ``0 <= x <= width - 1`` and ``0 <= y <= height - 1``.

The VLM sees a downscaled JPEG (``sent_width`` x ``sent_height``) and answers in pixels of that
image. Mapping scales each axis by ``stored / sent``, rounds, then clips to the image. A box
that is empty after clipping (``x2 <= x1`` or ``y2 <= y1``) is rejected, and so is a point
more than :data:`POINT_TOLERANCE` of the image size outside it (a point slightly outside is
clipped).

Invariants: pure functions; results always lie inside the stored image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

POINT_TOLERANCE = 0.05


@dataclass(frozen=True)
class ImageGeometry:
    """Sizes of the image the VLM saw and of the frame as stored in the dataset."""

    sent_width: int
    sent_height: int
    stored_width: int
    stored_height: int

    def __post_init__(self) -> None:
        sizes = (self.sent_width, self.sent_height, self.stored_width, self.stored_height)
        if min(sizes) <= 0:
            raise ValueError(f"image sizes must be positive, got {sizes}")

    def to_stored(self, x: float, y: float) -> tuple[float, float]:
        """Scale a position in the sent image to the stored frame (no rounding or clipping)."""
        return (
            x * self.stored_width / self.sent_width,
            y * self.stored_height / self.sent_height,
        )


def _clip(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def map_box(box: Sequence[float], geometry: ImageGeometry) -> tuple[int, int, int, int] | None:
    """An ``xyxy`` box in the sent image -> the box in stored pixels, or None when it is empty
    after clipping to the image."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(box)}")
    x1, y1 = geometry.to_stored(box[0], box[1])
    x2, y2 = geometry.to_stored(box[2], box[3])
    w, h = geometry.stored_width, geometry.stored_height
    cx1, cx2 = _clip(round(x1), 0, w), _clip(round(x2), 0, w)
    cy1, cy2 = _clip(round(y1), 0, h), _clip(round(y2), 0, h)
    if cx2 <= cx1 or cy2 <= cy1:
        return None
    return (cx1, cy1, cx2, cy2)


def map_point(point: Sequence[float], geometry: ImageGeometry) -> tuple[int, int] | None:
    """An ``xy`` point in the sent image -> a pixel of the stored frame, or None when it lies
    further than :data:`POINT_TOLERANCE` of the image size outside the image."""
    if len(point) != 2:
        raise ValueError(f"a point has 2 coordinates, got {len(point)}")
    x, y = geometry.to_stored(point[0], point[1])
    w, h = geometry.stored_width, geometry.stored_height
    slack_x, slack_y = POINT_TOLERANCE * w, POINT_TOLERANCE * h
    if not (-slack_x <= x <= w + slack_x and -slack_y <= y <= h + slack_y):
        return None
    return (_clip(round(x), 0, w - 1), _clip(round(y), 0, h - 1))
