"""How the plan module shows frames to the VLM: contact sheets or one captioned image each.

A :class:`Viewer` belongs to one episode and one camera. :meth:`Viewer.shown` turns a list of
episode frames into the ``(caption, image)`` pairs of a request (see
:func:`workers.modules.asking.user_message`):

* contact-sheet mode (``layout`` given): the frames tiled into timestamped sheets
  (:mod:`workers.modules.contact_sheets`), each captioned ``"Contact sheet 1 of 3 (t=0.00 to
  9.50 s):"``;
* per-frame mode: one image per frame, captioned ``"Frame 3 (t=1.50 s):"`` when the request
  asks for frame numbers, else ``"t=1.50 s:"``.

Invariants: frames are fetched from the episode's frame source at most once per viewer (a
frame asked for again is served from the viewer's own map); sheets of the same frames are
rendered once (describe and segment requests of a window share them); Pillow work runs in a
worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from narrator.workers.modules.asking import frame_caption
from narrator.workers.modules.contact_sheets import SheetLayout, render_sheets

if TYPE_CHECKING:
    from narrator.workers.frames import EncodedFrame
    from narrator.workers.modules.base import EpisodeContext


def sheet_layout(ctx: EpisodeContext) -> SheetLayout | None:
    """The run's contact-sheet layout, or None in per-frame mode."""
    plan = ctx.settings.plan
    if not plan.contact_sheets:
        return None
    return SheetLayout(
        columns=plan.contact_sheet_columns,
        frames_per_sheet=plan.contact_sheet_frames_per_sheet,
        tile_width_px=plan.contact_sheet_frame_width_px,
        jpeg_quality=ctx.settings.frames.jpeg_quality,
    )


@dataclass
class Viewer:
    ctx: EpisodeContext
    camera: str
    layout: SheetLayout | None
    _images: dict[int, EncodedFrame] = field(default_factory=dict)
    _sheets: dict[tuple[int, ...], list[EncodedFrame]] = field(default_factory=dict)

    async def fetch(self, frames: Sequence[int]) -> None:
        """Get every frame not fetched yet in one call to the frame source."""
        missing = sorted({f for f in frames if f not in self._images})
        if missing:
            encoded = await self.ctx.frame_source.get(self.camera, missing)
            self._images.update(zip(missing, encoded, strict=True))

    async def images(self, frames: Sequence[int]) -> list[EncodedFrame]:
        await self.fetch(frames)
        return [self._images[f] for f in frames]

    async def sheets(self, frames: Sequence[int]) -> list[EncodedFrame]:
        """The contact sheets of ``frames`` (contact-sheet mode only)."""
        assert self.layout is not None
        key = tuple(frames)
        if key not in self._sheets:
            images = await self.images(frames)
            times = [self.ctx.time_of(f) for f in frames]
            self._sheets[key] = await render_sheets(images, times, self.layout)
        return self._sheets[key]

    async def shown(
        self, frames: Sequence[int], *, numbered: bool = False, heading: str = ""
    ) -> list[tuple[str, EncodedFrame]]:
        """The captioned images that show ``frames``; ``heading`` starts the first caption."""
        if not frames:
            return []
        prefix = f"{heading} " if heading else ""
        if self.layout is not None:
            sheets = await self.sheets(frames)
            per_sheet = self.layout.frames_per_sheet
            out = []
            for k, sheet in enumerate(sheets):
                part = frames[k * per_sheet : (k + 1) * per_sheet]
                first, last = self.ctx.time_of(part[0]), self.ctx.time_of(part[-1])
                caption = f"Contact sheet {k + 1} of {len(sheets)} (t={first:.2f} to {last:.2f} s):"
                out.append(((prefix if k == 0 else "") + caption, sheet))
            return out
        images = await self.images(frames)
        captioned = []
        for i, (frame, image) in enumerate(zip(frames, images, strict=True)):
            t = self.ctx.time_of(frame)
            caption = frame_caption(i, t) if numbered else f"t={t:.2f} s:"
            captioned.append(((prefix if i == 0 else "") + caption, image))
        return captioned

    def image_guide(self) -> str:
        """How to read the images, for the prompts' ``$image_guide`` placeholder."""
        plan = self.ctx.settings.plan
        if self.layout is None:
            return self.ctx.prompts.render("plan.guide_frames")
        return self.ctx.prompts.render(
            "plan.guide_sheets",
            columns=plan.contact_sheet_columns,
            frames_per_sheet=plan.contact_sheet_frames_per_sheet,
        )


def evenly(frames: Sequence[int], count: int) -> list[int]:
    """At most ``count`` of ``frames`` spread evenly, keeping the first and the last."""
    if count <= 0 or not frames:
        return []
    if len(frames) <= count:
        return list(frames)
    if count == 1:
        return [frames[0]]
    picks = [round(i * (len(frames) - 1) / (count - 1)) for i in range(count)]
    return [frames[p] for p in sorted(set(picks))]


def span_frames(start: int, end: int, count: int) -> list[int]:
    """``count`` distinct frames spread evenly over ``start..end`` (both kept when count>1)."""
    return evenly(list(range(start, end + 1)), count)
