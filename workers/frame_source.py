"""The :class:`~workers.modules.base.FrameSource` of one episode: its video and image cameras.

A module asks ``get(camera, frame_indices)`` for episode-relative frames; the source serves
video cameras from the episode's video span and image cameras (``dtype: image``, images
embedded in the data file) from the rows of the image column, decoding and encoding in the
worker's :class:`~workers.frame_pool.FramePool`.

Invariants:
* Each (camera, frame) is decoded and encoded once per source (one job): requests that share
  frames (a plan's windows, its memory and interjection prompts) get the cached encoding,
  and concurrent requests for one camera wait for each other rather than decode twice.
* A frame whose stored size differs from what ``meta/info.json`` declares is sent as stored
  (coordinates are mapped to the stored size); the difference is logged once per pool
  (``frame_size_mismatch``, naming the camera and both sizes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from narrator.common.config import FrameSettings
from narrator.common.dataset.files import INFO_FILE
from narrator.common.dataset.meta import DatasetMeta, Episode, EpisodeFrames
from narrator.common.errors import DatasetError
from narrator.common.logging import get_logger
from narrator.workers.frame_pool import FramePool
from narrator.workers.frames import EncodedFrame, load_frames, load_image_frames

log = get_logger(__name__)


class EpisodeFrameSource:
    def __init__(
        self,
        meta: DatasetMeta,
        episode: Episode,
        frames: EpisodeFrames,
        settings: FrameSettings,
        pool: FramePool | None = None,
    ) -> None:
        self._meta = meta
        self._episode = episode
        self._frames = frames
        self._settings = settings
        self._pool = pool
        self._cache: dict[tuple[str, int], EncodedFrame] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._checked: set[str] = set()

    async def get(self, camera: str, frame_indices: Sequence[int]) -> list[EncodedFrame]:
        info = self._meta.camera(camera)
        if info.dtype == "video" and camera not in self._episode.videos:
            raise DatasetError(
                self._meta.root / INFO_FILE,
                f"episode {self._episode.index} has no video for camera {camera!r}",
            )
        lock = self._locks.setdefault(camera, asyncio.Lock())
        async with lock:
            missing = sorted({f for f in frame_indices if (camera, f) not in self._cache})
            if missing:
                encoded = await self._load(camera, info.dtype, missing)
                for f, item in zip(missing, encoded, strict=True):
                    self._cache[(camera, f)] = item
                self._check_size(camera, encoded[0])
        return [self._cache[(camera, f)] for f in frame_indices]

    async def _load(self, camera: str, dtype: str, frames: list[int]) -> list[EncodedFrame]:
        if dtype == "image":
            return await load_image_frames(
                self._meta, self._episode, camera, frames, self._settings, self._pool
            )
        times = [float(self._frames.timestamp[f]) for f in frames]
        return await load_frames(
            self._meta, self._episode, camera, times, self._settings, self._pool
        )

    def _check_size(self, camera: str, frame: EncodedFrame) -> None:
        if camera in self._checked:
            return
        self._checked.add(camera)
        info = self._meta.camera(camera)
        stored = (frame.stored_width, frame.stored_height)
        declared = (info.width, info.height)
        if stored == declared:
            return
        key = (str(self._meta.root), camera, stored)
        if self._pool is None or self._pool.first_time(key):
            log.warning(
                "frame_size_mismatch",
                camera=camera,
                declared=f"{declared[0]}x{declared[1]}",
                stored=f"{stored[0]}x{stored[1]}",
                episode=self._episode.index,
                note="coordinates are given in the stored size",
            )
