"""Which cameras the modules show the VLM (pure; the producer checks, the modules choose).

* The *view camera* of the plan and interjections modules: ``plan.camera`` when given, else
  the first non-depth video camera in info.json order, else the first non-depth camera of any
  dtype (image), else none (text-only prompts).
* The *VQA cameras*: ``vqa.vqa_cameras`` when given, else every non-depth camera, in
  info.json order.

A camera may be named by its full key (``observation.images.top``) or by its last part
(``top``). Depth cameras (``CameraInfo.depth``, LeRobot's ``is_depth_map``) never get RGB
prompts: naming one is an error, and they are never chosen by default.

Invariant: :func:`check_camera_settings` raises :class:`~common.errors.ConfigError` exactly
when :func:`view_camera` or :func:`vqa_cameras` would, so the producer refuses a run whose
jobs would all fail.
"""

from __future__ import annotations

from collections.abc import Sequence

from narrator.common.config import AnnotationSettings
from narrator.common.dataset.meta import CameraInfo
from narrator.common.errors import ConfigError

CAMERA_PREFIX = "observation.images."


def _listing(cameras: Sequence[CameraInfo]) -> str:
    if not cameras:
        return "the dataset has no cameras"
    names = [f"{c.key} (depth)" if c.depth else c.key for c in cameras]
    return "its cameras are " + ", ".join(names)


def find_camera(cameras: Sequence[CameraInfo], name: str, *, setting: str) -> CameraInfo:
    """The camera ``name`` (full key or last part) names; a depth camera or an unknown name is
    a :class:`ConfigError` that says which setting was wrong and what the choices are."""
    wanted = name.strip()
    found = [c for c in cameras if c.key == wanted or c.key == CAMERA_PREFIX + wanted]
    if not found:
        raise ConfigError(
            f"{setting} names camera {wanted!r}, which the dataset does not have; "
            f"{_listing(cameras)}"
        )
    camera = found[0]
    if camera.depth:
        raise ConfigError(
            f"{setting} names {camera.key}, a depth camera; depth maps are never sent as "
            f"images to the VLM: pick another ({_listing(cameras)})"
        )
    return camera


def default_view_camera(cameras: Sequence[CameraInfo]) -> CameraInfo | None:
    """The first non-depth video camera, else the first non-depth camera, else None."""
    rgb = [c for c in cameras if not c.depth]
    videos = [c for c in rgb if c.dtype == "video"]
    if videos:
        return videos[0]
    return rgb[0] if rgb else None


def view_camera(settings: AnnotationSettings, cameras: Sequence[CameraInfo]) -> CameraInfo | None:
    """The camera the plan and interjections modules show (None: text-only prompts)."""
    if settings.plan.camera is not None:
        return find_camera(cameras, settings.plan.camera, setting="--camera")
    return default_view_camera(cameras)


def vqa_cameras(settings: AnnotationSettings, cameras: Sequence[CameraInfo]) -> list[CameraInfo]:
    """The cameras the vqa module asks about, in info.json order."""
    wanted = settings.vqa.vqa_cameras
    if not wanted:
        return [c for c in cameras if not c.depth]
    chosen = {find_camera(cameras, name, setting="--vqa-cameras").key for name in wanted}
    return [c for c in cameras if c.key in chosen]


def check_camera_settings(settings: AnnotationSettings, cameras: Sequence[CameraInfo]) -> None:
    """Raise :class:`ConfigError` when a camera setting does not fit the dataset's cameras
    (only for the modules the run has)."""
    if "plan" in settings.modules or "interjections" in settings.modules:
        view_camera(settings, cameras)
    if "vqa" in settings.modules:
        vqa_cameras(settings, cameras)
