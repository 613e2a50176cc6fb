"""workers.frames on real video: clips encoded here with AV1 (SVT-AV1, decoded by dav1d), H.264
and HEVC, whose frames carry their own frame number (narrator.samples.video's code band), so
each test can tell which frame the decoder handed back."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from narrator.common.config import FrameSettings
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import DatasetError, VideoDecodeError
from narrator.samples.dataset import make_sample_dataset
from narrator.samples.video import read_frame_code, scene_frame, write_video
from narrator.workers.frames import (
    decode_video_frames,
    encode_frame,
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
