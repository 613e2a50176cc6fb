"""The size of camera frames as stored, and where it disagrees with ``meta/info.json``.

Coordinates narrator writes are pixels of the frame *as stored* (the decoded video frame or
embedded image), never of the size ``info.json`` declares: when the two disagree (a video
re-encoded at another size without updating info.json) the stored size wins, and the
disagreement is reported (docs/COORDINATES.md).

:class:`FrameSizeProbe` reads a video's size from its stream header (no frame is decoded)
and an image camera's from the header of one embedded image per data file; each is read
once per probe.

Invariants: read-only; a size that cannot be read is left out of :meth:`FrameSizeProbe.sizes`
and its reason kept in :attr:`FrameSizeProbe.problems`, never raised.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import av
from PIL import Image, UnidentifiedImageError

from narrator.common.dataset.images import read_image_cells
from narrator.common.dataset.meta import CameraInfo, DatasetMeta, FrameSize
from narrator.common.errors import DatasetError


def video_frame_size(path: Path) -> FrameSize:
    """(width, height) of the first video stream of ``path``, from its header."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(path, "has no video stream")
            stream = container.streams.video[0]
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
    except (av.FFmpegError, OSError) as exc:
        raise DatasetError(path, f"cannot be opened as a video ({exc})") from exc
    if width <= 0 or height <= 0:
        raise DatasetError(path, f"its video stream declares no frame size ({width}x{height})")
    return width, height


def image_size(blob: bytes, path: Path, camera: str) -> FrameSize:
    """(width, height) of one embedded image, from its header."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(path, f"an image of camera {camera!r} is not readable ({exc})") from exc
    return int(width), int(height)


def size_mismatch(camera: CameraInfo, stored: FrameSize, where: Path) -> str | None:
    """The warning when ``stored`` differs from what info.json declares, else None."""
    declared = (camera.width, camera.height)
    if stored == declared:
        return None
    return (
        f"camera {camera.key}: meta/info.json declares {declared[0]}x{declared[1]} but the "
        f"frames stored in {where} are {stored[0]}x{stored[1]}; coordinates are given in the "
        "stored size"
    )


class FrameSizeProbe:
    """Stored frame sizes of a dataset's cameras, per episode, each file read once."""

    def __init__(self, meta: DatasetMeta) -> None:
        self.meta = meta
        self.problems: list[str] = []
        self._by_path: dict[tuple[Path, str], FrameSize | None] = {}

    def _where(self, episode: int, camera: CameraInfo) -> Path:
        ep = self.meta.episode(episode)
        if camera.dtype == "video":
            return ep.videos[camera.key].path
        return self.meta.root / ep.data_file

    def _probe(self, episode: int, camera: CameraInfo) -> FrameSize | None:
        where = self._where(episode, camera)
        key = (where, camera.key)
        if key not in self._by_path:
            try:
                if camera.dtype == "video":
                    size: FrameSize | None = video_frame_size(where)
                else:
                    first_row = self.meta.row_start(self.meta.episode(episode))
                    (blob,) = read_image_cells(where, camera.key, [first_row])
                    size = image_size(blob, where, camera.key)
            except DatasetError as exc:
                self.problems.append(str(exc))
                size = None
            self._by_path[key] = size
        return self._by_path[key]

    def sizes(self, episode: int) -> dict[str, FrameSize]:
        """camera -> (width, height) of ``episode``'s frames as stored (readable ones only)."""
        out: dict[str, FrameSize] = {}
        for camera in self.meta.cameras:
            if camera.dtype == "video" and camera.key not in self.meta.episode(episode).videos:
                continue
            size = self._probe(episode, camera)
            if size is not None:
                out[camera.key] = size
        return out

    def mismatches(self, episodes: Iterable[int]) -> list[str]:
        """One message per (camera, file) whose stored size differs from info.json's."""
        found: dict[tuple[Path, str], str] = {}
        for episode in episodes:
            for camera in self.meta.cameras:
                stored = self.sizes(episode).get(camera.key)
                if stored is None:
                    continue
                where = self._where(episode, camera)
                message = size_mismatch(camera, stored, where)
                if message is not None:
                    found.setdefault((where, camera.key), message)
        return list(found.values())
