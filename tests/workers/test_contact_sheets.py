"""Contact sheets (pure Pillow code): layout, timestamp badges that stay legible through JPEG
and downscaling, and the sheets running off the event loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from narrator.workers.modules import contact_sheets
from narrator.workers.modules.contact_sheets import (
    MIN_BADGE_TEXT_PX,
    SheetLayout,
    badge_text,
    decode_data_url,
    draw_badge,
    make_tile,
    render_sheets,
    tile_sheets,
)
from tests.support.module_support import PillowFrameSource

LAYOUT = SheetLayout(columns=5, frames_per_sheet=20, tile_width_px=224, jpeg_quality=84)


def _frames(n: int, size: tuple[int, int] = (320, 240)) -> list[Image.Image]:
    out = []
    for i in range(n):
        image = Image.new("RGB", size, (40 + 7 * i % 200, 120, 90))
        out.append(image)
    return out


def test_sheets_are_five_by_four_grids_of_224_pixel_tiles_and_the_last_is_cropped() -> None:
    times = [i * 0.5 for i in range(23)]
    sheets = tile_sheets(_frames(23), times, LAYOUT)
    assert len(sheets) == 2 == LAYOUT.sheet_count(23)
    tile_h = 168  # 320x240 scaled to 224 wide
    gap = LAYOUT.gap_px
    assert sheets[0].size == (5 * 224 + 4 * gap, 4 * tile_h + 3 * gap)
    assert sheets[1].size == (3 * 224 + 2 * gap, tile_h), "three tiles left: one short row"


def test_tiles_are_in_time_order_row_major() -> None:
    colours = [(10 * i, 255 - 10 * i, 128) for i in range(7)]
    images = [Image.new("RGB", (224, 168), c) for c in colours]
    layout = SheetLayout(columns=3, frames_per_sheet=6, tile_width_px=224, gap_px=2)
    sheets = tile_sheets(images, [float(i) for i in range(7)], layout)
    assert [s.size for s in sheets] == [(3 * 226 - 2, 2 * 170 - 2), (224, 168)]
    pixels = np.asarray(sheets[0])
    for i, colour in enumerate(colours[:6]):
        x, y = (i % 3) * 226 + 200, (i // 3) * 170 + 150  # bottom-right, away from the badge
        assert tuple(pixels[y, x]) == colour
    assert tuple(np.asarray(sheets[1])[150, 200]) == colours[6]


def test_badge_is_white_on_black_in_the_top_left_corner_and_large_enough() -> None:
    tile = Image.new("RGB", (224, 168), (200, 200, 200))
    box = draw_badge(tile, 12.5)
    pixels = np.asarray(tile).astype(int)
    left, top, right, bottom = box
    assert (left, top) == (0, 0) and right < 224 // 2 and bottom < 168 // 3
    badge = pixels[top:bottom, left:right]
    white = (badge.min(axis=2) > 200).sum()
    black = (badge.max(axis=2) < 40).sum()
    assert white > 40 and black > white, "white text on a black badge"
    rows_with_text = np.nonzero((badge.min(axis=2) > 200).any(axis=1))[0]
    assert rows_with_text.max() - rows_with_text.min() + 1 >= MIN_BADGE_TEXT_PX * 0.6
    assert (pixels[bottom + 2 :, :].min(axis=2) > 150).all(), "nothing drawn below the badge"
    assert badge_text(12.5) == "12.50s" and badge_text(0.0) == "0.00s"


def _badge_crop(sheet: np.ndarray, column: int, row: int, cell: tuple[int, int]) -> np.ndarray:
    x, y = column * cell[0], row * cell[1]
    return sheet[y : y + 30, x : x + 90].astype(float)


@pytest.mark.parametrize("downscale", [1, 2])
def test_badges_stay_legible_through_jpeg_and_downscaling(downscale: int) -> None:
    """Read every tile's time back from the JPEG sheet by matching its badge against the
    badges of all candidate times (nearby times included): the right time must win."""
    times = [round(3.0 + 0.5 * i, 2) for i in range(20)]
    source = PillowFrameSource(stored=(320, 240), sent=(320, 240))
    frames = [source._encode(i) for i in range(20)]
    images = [decode_data_url(f.data_url) for f in frames]
    encoded = contact_sheets.encode_sheet(tile_sheets(images, times, LAYOUT)[0], 84)
    sheet_image = decode_data_url(encoded.data_url)
    if downscale > 1:
        size = (sheet_image.width // downscale, sheet_image.height // downscale)
        sheet_image = sheet_image.resize(size, Image.Resampling.BILINEAR)
    sheet = np.asarray(sheet_image.convert("L"))
    cell = ((224 + LAYOUT.gap_px) // downscale, (168 + LAYOUT.gap_px) // downscale)
    candidates = sorted({*times, *(t + 0.1 for t in times), *(t + 10 for t in times)})
    references = {}
    for t in candidates:
        tile = make_tile(images[0], t, 224)
        if downscale > 1:
            tile = tile.resize((224 // downscale, 168 // downscale), Image.Resampling.BILINEAR)
        references[t] = np.asarray(tile.convert("L"))[:30, :90].astype(float)
    for i, t in enumerate(times):
        crop = _badge_crop(sheet, i % 5, i // 5, cell)
        best = min(candidates, key=lambda c: np.abs(references[c] - crop).mean())
        assert best == t, f"tile {i}: read {best}, printed {t}"


async def test_sheets_are_rendered_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = contact_sheets.sheets_from_frames

    def recording(*args: object, **kwargs: object) -> object:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(contact_sheets, "sheets_from_frames", recording)
    source = PillowFrameSource()
    frames = await source.get("cam", list(range(7)))
    sheets = await render_sheets(frames, [i / 2 for i in range(7)], LAYOUT)
    assert len(sheets) == 1 and sheets[0].data_url.startswith("data:image/jpeg;base64,")
    assert (sheets[0].sent_width, sheets[0].sent_height) == decode_data_url(sheets[0].data_url).size
    assert threads and threads[0] != threading.get_ident(), "not on the event loop's thread"


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one time per image"):
        tile_sheets(_frames(2), [0.0], LAYOUT)
    with pytest.raises(ValueError, match="positive"):
        SheetLayout(columns=0)
    with pytest.raises(ValueError, match="data URL"):
        decode_data_url("https://example.com/x.jpg")
