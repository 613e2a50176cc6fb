"""The :class:`~workers.modules.base.FrameSource` of one episode, backed by its videos.

Frames are decoded and JPEG-encoded once per (camera, frame) per job: a module that asks
twice for the same frame gets the cached encoding. :meth:`prefetch` lets a job decode every
frame it will need from one camera in a single pass (seek once, walk forward).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from narrator.common.config import FrameSettings
from narrator.common.dataset.reader import DatasetMeta, Episode, EpisodeFrames
from narrator.common.errors import DatasetError
from narrator.workers.frames import EncodedFrame, load_frames


class VideoFrameSource:
    def __init__(
        self, meta: DatasetMeta, episode: Episode, frames: EpisodeFrames, settings: FrameSettings
    ) -> None:
        self._meta = meta
        self._episode = episode
        self._frames = frames
        self._settings = settings
        self._cache: dict[tuple[str, int], EncodedFrame] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def prefetch(self, camera: str, frame_indices: Sequence[int]) -> None:
        await self.get(camera, sorted(set(frame_indices)))

    async def get(self, camera: str, frame_indices: Sequence[int]) -> list[EncodedFrame]:
        if camera not in self._episode.videos:
            raise DatasetError(
                self._meta.root / "meta" / "info.json",
                f"episode {self._episode.index} has no video for camera {camera!r}",
            )
        lock = self._locks.setdefault(camera, asyncio.Lock())
        async with lock:
            missing = sorted({f for f in frame_indices if (camera, f) not in self._cache})
            if missing:
                times = [float(self._frames.timestamp[f]) for f in missing]
                encoded = await load_frames(
                    self._meta, self._episode, camera, times, self._settings
                )
                for f, item in zip(missing, encoded, strict=True):
                    self._cache[(camera, f)] = item
        return [self._cache[(camera, f)] for f in frame_indices]
