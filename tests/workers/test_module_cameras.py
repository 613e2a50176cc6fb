"""Which camera each module shows the VLM: the view camera of the plan and interjections
modules (``--camera``, default the first non-depth video camera), the VQA cameras
(``--vqa-cameras``), depth cameras never shown, VQA's frames per tick; pure choice and whole
episodes against the simulated VLM fleet over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from narrator.common.cameras import (
    check_camera_settings,
    default_view_camera,
    view_camera,
    vqa_cameras,
)
from narrator.common.config import (
    AnnotationSettings,
    InterjectionSettings,
    PlanSettings,
    VQASettings,
)
from narrator.common.dataset.meta import CameraInfo, cameras_from_info, is_depth_map
from narrator.common.errors import ConfigError
from narrator.common.staging import ModuleResult
from narrator.workers.modules.interjections import run_interjections
from narrator.workers.modules.plan import run_plan
from narrator.workers.modules.schemas import SCHEMA_NAMES
from narrator.workers.modules.spans import Span
from narrator.workers.modules.ticks import anchored_frames
from narrator.workers.modules.vqa import run_vqa
from tests.support.module_support import (
    PillowFrameSource,
    contract_findings,
    errors,
    image_count,
    make_context,
    sim_client,
)

TOP, WRIST, DEPTH = (f"observation.images.{n}" for n in ("top", "wrist", "depth"))


def _cam(key: str, dtype: str = "video", depth: bool = False) -> CameraInfo:
    return CameraInfo(key=key, dtype=dtype, height=48, width=64, depth=depth)  # type: ignore[arg-type]


def _settings(
    camera: str | None = None, vqa: tuple[str, ...] = (), **more: object
) -> AnnotationSettings:
    return AnnotationSettings(
        plan=PlanSettings(camera=camera),
        vqa=VQASettings(vqa_cameras=vqa),
        **more,  # type: ignore[arg-type]
    )


# --- pure ------------------------------------------------------------------------------------


def test_depth_maps_are_read_as_lerobot_marks_them() -> None:
    assert is_depth_map({"info": {"is_depth_map": True}})
    assert is_depth_map({"info": {"video.is_depth_map": True}})
    assert is_depth_map({"video_info": {"video.is_depth_map": True}})
    assert not is_depth_map({"info": {"video.is_depth_map": False}})
    assert not is_depth_map({"dtype": "video"})
    info = {
        "features": {
            DEPTH: {"dtype": "video", "shape": [48, 64, 3], "info": {"is_depth_map": True}},
            TOP: {"dtype": "video", "shape": [48, 64, 3], "info": {"video.is_depth_map": False}},
        }
    }
    cams = cameras_from_info(info, None)  # type: ignore[arg-type]
    assert [(c.key, c.depth) for c in cams] == [(DEPTH, True), (TOP, False)]


def test_the_default_view_camera_is_the_first_non_depth_video_camera() -> None:
    cams = [_cam(DEPTH, depth=True), _cam(WRIST, "image"), _cam(TOP)]
    assert default_view_camera(cams) == cams[2]
    assert default_view_camera(cams[:2]) == cams[1], "an image camera when no video camera"
    assert default_view_camera(cams[:1]) is None, "depth only: text prompts"
    assert view_camera(_settings(camera="wrist"), cams) == cams[1]
    assert view_camera(_settings(camera=WRIST), cams) == cams[1]


def test_vqa_cameras_default_to_every_non_depth_camera_in_dataset_order() -> None:
    cams = [_cam(DEPTH, depth=True), _cam(WRIST), _cam(TOP)]
    assert vqa_cameras(_settings(), cams) == cams[1:]
    assert vqa_cameras(_settings(vqa=("top", WRIST)), cams) == [cams[1], cams[2]]


def test_bad_camera_settings_say_what_is_wrong() -> None:
    cams = [_cam(DEPTH, depth=True), _cam(TOP)]
    with pytest.raises(ConfigError, match=r"--camera names camera 'side'.*observation.images.top"):
        check_camera_settings(_settings(camera="side"), cams)
    with pytest.raises(ConfigError, match=r"--camera names observation\.images\.depth, a depth"):
        check_camera_settings(_settings(camera="depth"), cams)
    with pytest.raises(
        ConfigError, match=r"--vqa-cameras names observation\.images\.depth, a depth"
    ):
        check_camera_settings(_settings(vqa=("top", "depth")), cams)
    with pytest.raises(ConfigError, match="no cameras"):
        check_camera_settings(_settings(camera="top"), [])
    check_camera_settings(_settings(camera="depth", modules=("vqa",)), cams)  # not used
    with pytest.raises(ValueError, match="twice"):
        VQASettings(vqa_cameras=("top", "top"))


def test_frames_per_tick_anchor_consecutive_frames() -> None:
    stamps = (np.arange(45) / 10.0).astype(np.float32)
    assert anchored_frames(stamps, 0.5, 1) == [0, 20, 40]
    assert anchored_frames(stamps, 0.5, 3) == [0, 1, 2, 20, 21, 22, 40, 41, 42]
    assert anchored_frames(stamps, 0.5, 7) == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        40,
        41,
        42,
        43,
        44,
    ]
    assert anchored_frames(stamps, 10.0, 2) == list(range(45)), "shared frames count once"
    with pytest.raises(ValueError):
        anchored_frames(stamps, 0.5, 0)


# --- whole episodes --------------------------------------------------------------------------


async def test_plan_and_interjections_look_through_the_chosen_camera() -> None:
    source = PillowFrameSource()
    cameras = (DEPTH, TOP, WRIST)
    settings = _settings(
        camera="wrist",
        interjections=InterjectionSettings(max_interjections=2, interjection_min_s=0.0),
    )
    ctx = make_context(
        n_frames=200,
        cameras=cameras,
        depth_cameras=(DEPTH,),
        settings=settings,
        frame_source=source,
    )
    async with sim_client(replicas=1) as (_fleet, client):
        plan = await run_plan(ctx, client)
        result = ModuleResult("plan", 3, "h", plan.rows, extra=plan.extra)
        spans = [Span(0, 99, "reach the cup"), Span(100, 199, "grasp the cup")]
        result.extra["subtasks"] = [s.to_dict() for s in spans]
        later = make_context(
            n_frames=200,
            cameras=cameras,
            depth_cameras=(DEPTH,),
            settings=settings,
            frame_source=source,
            upstream={"plan": ModuleResult.decode(result.encode())},
        )
        out = await run_interjections(later, client)
    assert plan.extra["camera"] == WRIST
    assert {camera for camera, _frames in source.calls} == {WRIST}
    interjection = client.calls_named(SCHEMA_NAMES["interjection"])
    assert interjection and all(image_count(c) > 0 for c in interjection)
    assert all(
        '"observation.images.wrist"' in c["messages"][0]["content"][0]["text"] for c in interjection
    )
    assert [r.frame for r in out.rows if r.style == "interjection"] == [100]


async def test_depth_cameras_never_get_rgb_prompts_by_default() -> None:
    source = PillowFrameSource()
    settings = AnnotationSettings(vqa=VQASettings(vqa_hz=0.5))
    ctx = make_context(
        n_frames=60,
        cameras=(DEPTH, TOP),
        depth_cameras=(DEPTH,),
        settings=settings,
        frame_source=source,
    )
    async with sim_client(replicas=1) as (_fleet, client):
        plan = await run_plan(ctx, client)
        vqa = await run_vqa(ctx, client)
    assert plan.extra["camera"] == TOP
    assert {camera for camera, _frames in source.calls} == {TOP}
    assert {r.camera for r in vqa.rows} == {TOP}
    depth_only = make_context(n_frames=60, cameras=(DEPTH,), depth_cameras=(DEPTH,))
    async with sim_client(replicas=1) as (_fleet, client):
        plan = await run_plan(depth_only, client)
        vqa = await run_vqa(depth_only, client)
    assert plan.extra["camera"] is None and vqa.rows == []
    assert all(image_count(c) == 0 for c in client.calls), "text prompts only"


async def test_vqa_asks_only_the_chosen_cameras_on_k_frames_per_tick() -> None:
    source = PillowFrameSource()
    settings = AnnotationSettings(
        vqa=VQASettings(vqa_hz=0.5, vqa_cameras=("wrist",), vqa_frames_per_tick=2)
    )
    ctx = make_context(n_frames=45, cameras=(TOP, WRIST), settings=settings, frame_source=source)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_vqa(ctx, client)
    assert source.calls == [(WRIST, (0, 1, 20, 21, 40, 41))]
    assert {r.camera for r in out.rows} == {WRIST}
    asked = sorted(
        {r.frame for r in out.rows if r.role == "user"}
        | {int(f.item.split(":")[1]) for f in out.failures}
    )
    assert asked == [0, 1, 20, 21, 40, 41]
    vqa_types = {(q["frame"], q["camera"]): q["type"] for q in out.extra["question_types"]}
    assert errors(contract_findings(ctx, "vqa", out.rows, vqa_types)) == []
