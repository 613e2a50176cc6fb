"""workers.frames on real video: clips encoded here with AV1 (SVT-AV1, decoded by dav1d), H.264
and HEVC, whose frames carry their own frame number (narrator.samples.video's code band), so
each test can tell which frame the decoder handed back; and the frame pool (processes) and the
episode's frame source (video and image cameras, each frame decoded once)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import structlog
from PIL import Image

from narrator.common.config import FrameSettings
from narrator.common.dataset.reader import load_dataset_meta, read_episode_frames
from narrator.common.errors import DatasetError, VideoDecodeError
from narrator.samples.dataset import make_sample_dataset
from narrator.samples.video import read_frame_code, scene_frame, write_video
from narrator.workers.frame_pool import FramePool
from narrator.workers.frame_source import EpisodeFrameSource
from narrator.workers.frames import (
    decode_video_frames,
    encode_frame,
    encode_video_frames,
    fit_size,
    load_frames,
    load_image_frames,
)

FPS = 10
CLIP_FRAMES = 60
CODECS = ("libsvtav1", "libx264", "libx265")


def _frame(k: int, width: int = 96, height: int = 72) -> np.ndarray:
    return scene_frame(
        width, height, file_frame=k, episode=k % 7, progress=k / 60, task_index=1, camera=0
    )


@pytest.fixture(scope="module", params=CODECS)
def clip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 s clip at 10 fps, one keyframe every 12 frames (so seeks land between keyframes)."""
    path = tmp_path_factory.mktemp("clips") / f"{request.param}.mp4"
    frames = (_frame(k) for k in range(CLIP_FRAMES))
    write_video(path, frames, fps=FPS, codec=request.param, gop=12)
    return path


def _numbers(images: list[Image.Image]) -> list[int]:
    return [read_frame_code(np.asarray(image))[0] for image in images]


def test_clip_uses_the_expected_decoder(clip: Path) -> None:
    with av.open(str(clip)) as container:
        name = container.streams.video[0].codec_context.name
    assert name == {"libsvtav1": "libdav1d", "libx264": "h264", "libx265": "hevc"}[clip.stem]


def test_nearest_frame_for_each_time_in_the_order_asked(clip: Path) -> None:
    # unsorted, repeated, between frames (ties go to the earlier frame), first and last
    times = [3.0, 0.0, 4.26, 1.25, 1.24, 1.26, 5.9, 3.0, 0.549, 0.551, 2.35]
    images = decode_video_frames(clip, times)
    assert _numbers(images) == [30, 0, 43, 12, 12, 13, 59, 30, 5, 6, 23]
    assert all(image.size == (96, 72) for image in images)


def test_every_frame_in_one_pass(clip: Path) -> None:
    times = [k / FPS for k in range(CLIP_FRAMES)]
    assert _numbers(decode_video_frames(clip, times)) == list(range(CLIP_FRAMES))
    late = [4.4, 4.5, 5.0]  # starts after a seek past several keyframes
    assert _numbers(decode_video_frames(clip, late)) == [44, 45, 50]


def test_time_past_the_end_names_the_file_and_time(clip: Path) -> None:
    assert _numbers(decode_video_frames(clip, [5.94])) == [59]  # within half a frame
    with pytest.raises(VideoDecodeError) as caught:
        decode_video_frames(clip, [1.0, 6.2])
    assert str(clip) in str(caught.value) and "6.200 s" in str(caught.value)
    assert isinstance(caught.value, DatasetError)


def test_undecodable_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="cannot be opened as a video") as caught:
        decode_video_frames(garbage, [0.5])
    assert caught.value.path == str(garbage)
    with pytest.raises(VideoDecodeError, match=r"0\.500 s"):
        decode_video_frames(tmp_path / "absent.mp4", [0.5])
    with pytest.raises(VideoDecodeError, match="times start at 0"):
        decode_video_frames(garbage, [-1.0])
    assert decode_video_frames(garbage, []) == []


def test_fit_size_keeps_aspect_and_never_upscales() -> None:
    assert fit_size(96, 72, 448 * 448) == (96, 72)
    for width, height, budget in [(640, 480, 448 * 448), (1920, 1080, 100_000), (300, 7, 1000)]:
        w, h = fit_size(width, height, budget)
        assert w * h <= budget and w <= width and h <= height
        scale = (budget / (width * height)) ** 0.5  # each side within a pixel of exact scaling
        assert abs(w - width * scale) < 1 and abs(h - height * scale) < 1
        assert (w + 1) * (h + 1) > budget  # as large as the budget allows


def test_encode_frame_sends_a_jpeg_within_the_budget() -> None:
    image = Image.fromarray(_frame(17, width=640, height=480))
    sent = encode_frame(image, max_pixels=160 * 120, jpeg_quality=90)
    assert sent.data_url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(sent.data_url.split(",", 1)[1])))
    assert decoded.format == "JPEG"
    assert decoded.size == (sent.sent_width, sent.sent_height) == (160, 120)
    assert (sent.stored_width, sent.stored_height) == (640, 480)
    small = encode_frame(Image.fromarray(_frame(3)), max_pixels=448 * 448, jpeg_quality=90)
    assert (small.sent_width, small.sent_height) == (96, 72)  # never upscaled
    low = encode_frame(image, max_pixels=160 * 120, jpeg_quality=10)
    assert len(low.data_url) < len(sent.data_url)


async def test_load_frames_uses_episode_relative_times(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=5, cameras=2)
    meta = load_dataset_meta(root)
    settings = FrameSettings(max_pixels=64 * 64, jpeg_quality=95)
    for ep in meta.episodes.values():
        for camera, span in ep.videos.items():
            picks = [0, ep.length // 2, ep.length - 1]
            got = await load_frames(meta, ep, camera, [k / meta.fps for k in picks], settings)
            first = round(span.from_timestamp_s * meta.fps)
            for k, frame in zip(picks, got, strict=True):
                data = base64.b64decode(frame.data_url.split(",", 1)[1])
                with Image.open(io.BytesIO(data)) as jpeg:
                    big = jpeg.convert("RGB").resize((96, 72), Image.Resampling.NEAREST)
                assert read_frame_code(np.asarray(big)) == (first + k, ep.index)
                assert (frame.stored_width, frame.stored_height) == (96, 72)
                assert frame.sent_width * frame.sent_height <= 64 * 64
    ep = meta.episodes[0]
    # half a frame after the last frame is still the last frame; just past it is not
    half_after_last = (ep.length - 0.5) / meta.fps
    last = await load_frames(meta, ep, "observation.images.top", [half_after_last], settings)
    assert (
        last[0]
        == (
            await load_frames(
                meta, ep, "observation.images.top", [(ep.length - 1) / meta.fps], settings
            )
        )[0]
    )
    with pytest.raises(VideoDecodeError, match="past the end of episode 0"):
        await load_frames(meta, ep, "observation.images.top", [half_after_last + 0.01], settings)
    with pytest.raises(DatasetError, match="no video for camera"):
        await load_frames(meta, ep, "observation.images.nope", [0.0], settings)


async def test_load_image_frames_reads_embedded_images(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "img", episodes=4, metadata_only=True)
    key = "observation.images.front"
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        cells = []
        for ep, frame in zip(
            table["episode_index"].to_pylist(), table["frame_index"].to_pylist(), strict=True
        ):
            png = io.BytesIO()
            Image.fromarray(_frame(frame, 96, 72)).save(png, format="PNG")
            cells.append({"bytes": png.getvalue(), "path": f"frame_{ep}_{frame}.png"})
        table = table.append_column(pa.field(key, image_type), pa.array(cells, image_type))
        pq.write_table(table, path, row_group_size=32)
    info = json.loads((root / "meta/info.json").read_text(encoding="utf-8"))
    info["features"][key] = {
        "dtype": "image",
        "shape": [72, 96, 3],
        "names": ["height", "width", "channels"],
    }
    (root / "meta/info.json").write_text(json.dumps(info), encoding="utf-8")
    meta = load_dataset_meta(root)
    assert [(c.key, c.dtype) for c in meta.cameras] == [(key, "image")]
    settings = FrameSettings(max_pixels=448 * 448, jpeg_quality=95)
    ep = meta.episodes[2]
    picks = [ep.length - 1, 0, 33, 33]
    got = await load_image_frames(meta, ep, key, picks, settings)
    numbers = []
    for frame in got:
        with Image.open(io.BytesIO(base64.b64decode(frame.data_url.split(",", 1)[1]))) as jpeg:
            numbers.append(read_frame_code(np.asarray(jpeg.convert("RGB")))[0])
    assert numbers == picks
    with pytest.raises(DatasetError, match="has no frame"):
        await load_image_frames(meta, ep, key, [ep.length], settings)


# --- the frame pool and the episode's frame source -------------------------------------------


class CountingPool(FramePool):
    """A real frame pool that records what it was asked to run."""

    def __init__(self, processes: int) -> None:
        super().__init__(processes)
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    async def run(self, fn: Any, *args: object) -> Any:
        self.calls.append((fn.__name__, args))
        return await super().run(fn, *args)


@pytest.fixture(scope="module")
def two_cameras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(
        tmp_path_factory.mktemp("pool") / "ds", episodes=2, cameras=1, image_cameras=1
    )


async def test_pool_processes_encode_what_a_thread_encodes(two_cameras: Path) -> None:
    meta = load_dataset_meta(two_cameras)
    ep = meta.episodes[1]
    settings = FrameSettings(max_pixels=64 * 64, jpeg_quality=90)
    pool = FramePool(processes=1)
    try:
        times = [0.0, 1.0, (ep.length - 1) / meta.fps]
        video = "observation.images.top"
        in_pool = await load_frames(meta, ep, video, times, settings, pool)
        assert in_pool == await load_frames(meta, ep, video, times, settings)
        image = "observation.images.wrist"
        rows = [3, 0, ep.length - 1]
        in_pool = await load_image_frames(meta, ep, image, rows, settings, pool)
        assert in_pool == await load_image_frames(meta, ep, image, rows, settings)
        # An error raised in a pool process arrives whole: its type, file and problem.
        broken = two_cameras / "broken.mp4"
        broken.write_bytes(b"not a video")
        with pytest.raises(VideoDecodeError) as caught:
            await pool.run(encode_video_frames, str(broken), [0.0], 4096, 90)
        assert caught.value.path == str(broken) and "cannot be opened" in caught.value.problem
    finally:
        pool.close()


async def test_the_frame_source_decodes_each_frame_once_and_serves_image_cameras(
    two_cameras: Path,
) -> None:
    meta = load_dataset_meta(two_cameras)
    ep = meta.episodes[0]
    frames = read_episode_frames(meta, 0)
    pool = CountingPool(processes=0)
    source = EpisodeFrameSource(meta, ep, frames, FrameSettings(), pool)
    for camera, kind in (
        ("observation.images.top", "video"),
        ("observation.images.wrist", "image"),
    ):
        first = await source.get(camera, [0, 5, 10])
        again = await source.get(camera, [10, 15, 5])
        assert again[0] == first[2] and again[2] == first[1]
        asked = [args for name, args in pool.calls if name == f"encode_{kind}_frames"]
        assert len(asked) == 2, asked
        if kind == "video":  # absolute times: only the new frame is decoded the second time
            assert len(asked[0][1]) == 3 and len(asked[1][1]) == 1  # type: ignore[arg-type]
        else:  # data-file rows
            assert asked[1][2] == [meta.row_start(ep) + 15]
        for frame in [*first, *again]:
            with Image.open(io.BytesIO(base64.b64decode(frame.data_url.split(",", 1)[1]))) as jpeg:
                code = read_frame_code(np.asarray(jpeg.convert("RGB").resize((96, 72))))
            assert code[1] == 0  # episode 0's frames


async def test_frames_larger_than_declared_are_sent_as_stored_with_a_warning(
    tmp_path: Path,
) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=1, cameras=1, width=192, height=144)
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["features"]["observation.images.top"]["shape"] = [72, 96, 3]
    info_path.write_text(json.dumps(info), encoding="utf-8")
    meta = load_dataset_meta(root)
    assert (meta.cameras[0].width, meta.cameras[0].height) == (96, 72)
    pool = FramePool(processes=0)
    source = EpisodeFrameSource(
        meta, meta.episodes[0], read_episode_frames(meta, 0), FrameSettings(), pool
    )
    with structlog.testing.capture_logs() as logs:
        got = await source.get("observation.images.top", [0, 3])
        await source.get("observation.images.top", [7])
        again = EpisodeFrameSource(
            meta, meta.episodes[0], read_episode_frames(meta, 0), FrameSettings(), pool
        )
        await again.get("observation.images.top", [1])
    assert {(f.stored_width, f.stored_height) for f in got} == {(192, 144)}
    warnings = [e for e in logs if e["event"] == "frame_size_mismatch"]
    assert len(warnings) == 1, logs  # once per pool (process), not per job or request
    assert warnings[0]["camera"] == "observation.images.top"
    assert (warnings[0]["declared"], warnings[0]["stored"]) == ("96x72", "192x144")
