"""Contact sheets: sampled frames tiled into timestamped JPEG grids (pure Pillow code).

A contact sheet shows up to ``frames_per_sheet`` frames, ``columns`` per row, time running
left to right then top to bottom, ``gap_px`` black pixels between tiles. Every tile is the
frame scaled to ``tile_width_px`` wide (aspect kept) with its episode time burned into its
top-left corner: white digits on a black badge (``"12.50s"``), in a font sized to the tile
(at least :data:`MIN_BADGE_TEXT_PX` pixels high) so it stays legible after a VLM downsamples
the sheet. A sheet has only as many rows as it needs (the last one of an episode is usually
shorter).

Invariants:
* :func:`tile_sheets` is pure: the same images and times give the same sheets, in order, and
  every frame appears in exactly one tile.
* :func:`render_sheets` is the I/O edge: it decodes the frames' JPEG data URLs, tiles them
  and encodes each sheet as a JPEG data URL, all in a worker thread
  (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from narrator.workers.frames import EncodedFrame

MIN_BADGE_TEXT_PX = 14
BADGE_TEXT_FRACTION = 0.12  # of the tile height
BADGE_FILL = (0, 0, 0)
BADGE_TEXT = (255, 255, 255)
SHEET_BACKGROUND = (0, 0, 0)


@dataclass(frozen=True)
class SheetLayout:
    columns: int = 5
    frames_per_sheet: int = 20
    tile_width_px: int = 224
    jpeg_quality: int = 84
    gap_px: int = 2  # black lines between tiles, so neighbouring frames do not blend

    def __post_init__(self) -> None:
        if (
            self.columns < 1
            or self.frames_per_sheet < 1
            or self.tile_width_px < 8
            or self.gap_px < 0
        ):
            raise ValueError(f"a sheet layout needs positive sizes, got {self}")

    def sheet_count(self, n_frames: int) -> int:
        return math.ceil(n_frames / self.frames_per_sheet) if n_frames > 0 else 0


def badge_text(time_s: float) -> str:
    """The text burned into a tile: seconds with two decimals and a unit, ``"12.50s"``."""
    return f"{time_s:.2f}s"


def badge_text_px(tile_height: int) -> int:
    return max(MIN_BADGE_TEXT_PX, round(tile_height * BADGE_TEXT_FRACTION))


def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size_px)


def draw_badge(tile: Image.Image, time_s: float) -> tuple[int, int, int, int]:
    """Burn ``time_s`` into the top-left corner of ``tile`` (in place); returns the badge box
    ``(0, 0, right, bottom)`` in pixels."""
    draw = ImageDraw.Draw(tile)
    font = _font(badge_text_px(tile.height))
    text = badge_text(time_s)
    left, top, right, bottom = (round(v) for v in draw.textbbox((0, 0), text, font=font))
    pad = max(3, round(min(tile.width, tile.height) * 0.02))
    box = (0, 0, right - left + 2 * pad, bottom - top + 2 * pad)
    draw.rectangle(box, fill=BADGE_FILL)
    draw.text((pad - left, pad - top), text, fill=BADGE_TEXT, font=font)
    return box


def make_tile(image: Image.Image, time_s: float, width_px: int) -> Image.Image:
    """``image`` scaled to ``width_px`` wide (aspect kept) with its time badge."""
    rgb = image.convert("RGB")
    height = max(1, round(rgb.height * width_px / rgb.width))
    tile = rgb.resize((width_px, height), Image.Resampling.BILINEAR)
    draw_badge(tile, time_s)
    return tile


def tile_sheets(
    images: Sequence[Image.Image], times_s: Sequence[float], layout: SheetLayout
) -> list[Image.Image]:
    """The contact sheets of ``images`` (with their episode times), in time order."""
    if len(images) != len(times_s):
        raise ValueError("one time per image is needed")
    width = layout.tile_width_px
    tiles = [make_tile(img, t, width) for img, t in zip(images, times_s, strict=True)]
    sheets: list[Image.Image] = []
    for first in range(0, len(tiles), layout.frames_per_sheet):
        chunk = tiles[first : first + layout.frames_per_sheet]
        gap = layout.gap_px
        cell_w = max(t.width for t in chunk) + gap
        cell_h = max(t.height for t in chunk) + gap
        columns = min(layout.columns, len(chunk))
        rows = math.ceil(len(chunk) / layout.columns)
        size = (cell_w * columns - gap, cell_h * rows - gap)
        sheet = Image.new("RGB", size, SHEET_BACKGROUND)
        for i, tile in enumerate(chunk):
            sheet.paste(tile, ((i % layout.columns) * cell_w, (i // layout.columns) * cell_h))
        sheets.append(sheet)
    return sheets


def decode_data_url(url: str) -> Image.Image:
    """The image of a ``data:image/...;base64,`` URL."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ValueError(f"not a base64 image data URL: {url[:40]!r}")
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image


def encode_sheet(sheet: Image.Image, jpeg_quality: int) -> EncodedFrame:
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=jpeg_quality)
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    width, height = sheet.size
    return EncodedFrame(
        data_url=url,
        sent_width=width,
        sent_height=height,
        stored_width=width,
        stored_height=height,
    )


def sheets_from_frames(
    frames: Sequence[EncodedFrame], times_s: Sequence[float], layout: SheetLayout
) -> list[EncodedFrame]:
    """Blocking: decode ``frames``, tile them, encode the sheets."""
    images = [decode_data_url(f.data_url) for f in frames]
    return [encode_sheet(s, layout.jpeg_quality) for s in tile_sheets(images, times_s, layout)]


async def render_sheets(
    frames: Sequence[EncodedFrame], times_s: Sequence[float], layout: SheetLayout
) -> list[EncodedFrame]:
    """:func:`sheets_from_frames` in a worker thread (Pillow work stays off the event loop)."""
    return await asyncio.to_thread(sheets_from_frames, list(frames), list(times_s), layout)
