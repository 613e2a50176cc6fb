"""Client overhead: the CPU narrator itself spends per VLM request, and where it goes.

1. Whole pipeline: worker-process CPU (psutil, every process of the pool) per VLM request,
   as the slope between two run sizes against a fast simulated fleet, so the fixed cost of
   starting the processes (imports, connections) is reported apart ("per run").
2. Pieces, timed in this process (CPU time, best of 3 after a warm-up) on a 640x480, 30 fps
   AV1 episode (keyframe every 2 frames, as LeRobot encodes):
   * decode: :func:`workers.frames.decode_video_frames` for every frame of an episode, per
     frame, against the floor - PyAV decoding the episode's frames sequentially (with and
     without the conversion to an RGB image); and per *requested* frame when a job samples
     at 1 Hz (plan) and 0.5 Hz (vqa);
   * JPEG: :func:`workers.frames.encode_frame` of a 640x480 frame to the 448x448 pixel budget;
   * JSON: building and serialising a 16-image plan request, parsing an answer;
   * Redis: one publish (the jobs' Lua script) of a typical result, round trip included.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import orjson
import redis

from narrator.common import keys
from narrator.common.dataset.reader import load_dataset_meta, read_episode_frames
from narrator.common.job_specs import PUBLISH_SCRIPT
from narrator.common.staging import ModuleResult, StagedRow
from narrator.local.redis_server import LocalRedis
from narrator.workers.frames import decode_video_frames, encode_frame
from narrator.workers.json_answer import extract_json_object
from narrator.workers.modules.asking import user_message
from narrator.workers.vlm_api import ChatRequest
from narrator.workers.vlm_protocol import chat_body
from tests.bench.pipeline import run_default
from tests.bench.processes import SimFleetProcess, SimSettings
from tests.bench.report import main_for
from tests.bench.support import BenchContext, BenchResult, sample_dataset

NAME = "client-overhead"
FAST_SIM = SimSettings(replicas=4, slots=8, base_s=0.05, per_image_s=0.005, per_output_token_s=0.0)
VIDEO = {"cameras": 1, "fps": 30, "episodes": 3, "episodes_per_file": 3, "min_length": 300,
         "max_length": 300, "width": 640, "height": 480}  # fmt: skip
MAX_PIXELS = 448 * 448


def cpu_seconds(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Least process CPU time of ``repeat`` calls after one warm-up call (all threads)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def pyav_floor(path: Path, start_s: float, end_s: float, fps: float, convert: bool) -> int:
    """Decode [start_s, end_s) of ``path`` sequentially with PyAV alone; frames decoded."""
    container: Any
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        offset = int(max(0.0, start_s - 1 / fps) / float(stream.time_base))
        container.seek(offset, stream=stream, backward=True)
        count = 0
        for frame in container.decode(stream):
            if frame.time is None or frame.time < start_s - 1e-6:
                continue
            if frame.time > end_s - 0.5 / fps:
                break
            if convert:
                frame.to_image()
            count += 1
    return count


def _decode_figures(ctx: BenchContext, out: BenchResult) -> dict[str, Any]:
    root = sample_dataset(ctx, **VIDEO)
    meta = load_dataset_meta(root)
    episode = meta.episodes[1]
    span = next(iter(episode.videos.values()))
    times = [span.from_timestamp_s + float(t) for t in read_episode_frames(meta, 1).timestamp]
    n = len(times)
    floor_decode = cpu_seconds(
        lambda: pyav_floor(span.path, span.from_timestamp_s, span.to_timestamp_s, meta.fps, False)
    )
    floor_rgb = cpu_seconds(
        lambda: pyav_floor(span.path, span.from_timestamp_s, span.to_timestamp_s, meta.fps, True)
    )
    every = cpu_seconds(lambda: decode_video_frames(span.path, times))
    step_1hz, step_05hz = round(meta.fps), round(2 * meta.fps)
    at_1hz = cpu_seconds(lambda: decode_video_frames(span.path, times[::step_1hz]))
    at_05hz = cpu_seconds(lambda: decode_video_frames(span.path, times[::step_05hz]))
    per = {
        "floor_decode_ms": 1000 * floor_decode / n,
        "floor_decode_rgb_ms": 1000 * floor_rgb / n,
        "frames_py_every_frame_ms": 1000 * every / n,
        "frames_py_1hz_per_requested_ms": 1000 * at_1hz / len(times[::step_1hz]),
        "frames_py_05hz_per_requested_ms": 1000 * at_05hz / len(times[::step_05hz]),
    }
    note = f"640x480 AV1, {meta.fps:g} fps, {n} frames"
    out.add(
        NAME, "decode floor: PyAV sequential, per frame", per["floor_decode_ms"], "ms", note=note
    )
    out.add(NAME, "decode floor + RGB image, per frame", per["floor_decode_rgb_ms"], "ms")
    out.add(NAME, "frames.py every frame, per frame", per["frames_py_every_frame_ms"], "ms")
    out.add(
        NAME,
        "frames.py every frame / floor + RGB",
        per["frames_py_every_frame_ms"] / per["floor_decode_rgb_ms"],
        "x",
        "<= 1.5",
    )
    out.add(
        NAME, "frames.py 1 Hz samples, per sent frame", per["frames_py_1hz_per_requested_ms"], "ms"
    )
    out.add(
        NAME,
        "frames.py 0.5 Hz samples, per sent frame",
        per["frames_py_05hz_per_requested_ms"],
        "ms",
    )
    image = decode_video_frames(span.path, times[:1])[0]
    jpeg = cpu_seconds(lambda: encode_frame(image, max_pixels=MAX_PIXELS, jpeg_quality=85), 20)
    encoded = encode_frame(image, max_pixels=MAX_PIXELS, jpeg_quality=85)
    per["jpeg_ms"] = 1000 * jpeg
    out.add(
        NAME,
        "JPEG: resize 640x480 to 448x448 budget + encode",
        per["jpeg_ms"],
        "ms",
        note=f"sent {encoded.sent_width}x{encoded.sent_height}, {len(encoded.data_url)} bytes",
    )
    per.update(_json_figures(out, encoded.data_url))
    return per


def _json_figures(out: BenchResult, data_url: str) -> dict[str, float]:
    from narrator.workers.frames import EncodedFrame

    frame = EncodedFrame(data_url, 517, 387, 640, 480)
    frames = [(f"Frame {i} (t={i:.2f} s):", frame) for i in range(16)]
    schema = {"type": "object", "properties": {"subtasks": {"type": "array"}}}

    def build() -> bytes:
        body = chat_body(
            ChatRequest(
                module="plan",
                item="subtasks:0",
                messages=user_message("Split the episode into subtasks. " * 20, frames),
                schema=schema,
                schema_name="plan_subtasks",
                model="m",
                max_tokens=1024,
                temperature=0.2,
                seed=1,
            )
        )
        return orjson.dumps(body)

    answer = orjson.dumps(
        {
            "subtasks": [
                {"start": i, "label": f"grasp the sponge {i} by its handle"} for i in range(8)
            ]
        }
    ).decode()
    build_s = cpu_seconds(build, 20)
    parse_s = cpu_seconds(lambda: [extract_json_object(answer) for _ in range(100)]) / 100
    out.add(NAME, "JSON: build + serialise a 16-image request", 1000 * build_s, "ms")
    out.add(NAME, "JSON: parse an answer", 1000 * parse_s, "ms")
    return {"json_build_16_images_ms": 1000 * build_s, "json_parse_ms": 1000 * parse_s}


def _redis_publish_ms(ctx: BenchContext) -> float:
    rows = [StagedRow("events", i, "user", f"What is left of the bowl {i}?", "vqa", "cam")
            for i in range(12)]  # fmt: skip
    result = ModuleResult("vqa", 7, "h" * 16, rows=rows, counts={"vqa:requests": 6})
    data = result.encode()
    with LocalRedis(ctx.scratch("publish-redis")) as server:
        conn = redis.Redis.from_url(server.url)
        conn.hset(
            keys.run("bench"),
            mapping={"module_hashes": '{"vqa": "' + "h" * 16 + '"}', "generation": "g"},
        )
        script = conn.register_script(PUBLISH_SCRIPT)
        n = 300
        run_keys = [
            keys.finalize_claims("bench"),
            keys.stats("bench"),
            keys.item_failures("bench"),
            keys.item_tallies("bench"),
            keys.item_totals("bench"),
        ]

        def publish() -> None:
            for i in range(n):
                pending = keys.pending("bench", "file")
                conn.sadd(pending, f"vqa:{i}", "keep")
                script(
                    keys=[keys.run("bench"), keys.result("bench", "vqa", i), pending, *run_keys],
                    args=[
                        "vqa",
                        "h" * 16,
                        data,
                        f"vqa:{i}",
                        "file",
                        6,
                        0,
                        "",
                        1,
                        "vqa:requests",
                        6,
                    ],
                )

        started = time.perf_counter()
        publish()
        elapsed = time.perf_counter() - started
        conn.close()
    return 1000 * elapsed / n


def _pipeline_figures(ctx: BenchContext, out: BenchResult) -> dict[str, Any]:
    small, large = (8, 24) if ctx.quick else (20, 60)
    sources = {
        n: sample_dataset(ctx, episodes=n, cameras=2, episodes_per_file=10) for n in (small, large)
    }
    runs = []
    with SimFleetProcess(FAST_SIM) as fleet:
        for episodes, source in sources.items():
            runs.append(run_default(source, fleet, ctx.scratch(f"overhead-{episodes}")))
    a, b = runs
    slope = (b.usage.cpu_s["worker"] - a.usage.cpu_s["worker"]) / (b.requests - a.requests)
    fixed = a.usage.cpu_s["worker"] - slope * a.requests
    out.add(
        NAME,
        "worker CPU per VLM request (marginal)",
        1000 * slope,
        "ms",
        note=f"slope between {small} and {large} episodes (96x72 frames, 2 cameras): decode, "
        "JPEG, JSON, HTTP, Redis, rq",
    )
    out.add(NAME, "worker CPU per run (fixed: start-up)", fixed, "s")
    redis_ms = 1000 * b.usage.cpu_s.get("redis", 0.0) / b.requests
    out.add(NAME, "redis-server CPU per VLM request", redis_ms, "ms")
    return {"runs": [r.as_json() for r in runs], "worker_ms_per_request": 1000 * slope}


def bench(ctx: BenchContext) -> BenchResult:
    out = BenchResult()
    pipeline = _pipeline_figures(ctx, out)
    pieces = _decode_figures(ctx, out)
    pieces["redis_publish_round_trip_ms"] = _redis_publish_ms(ctx)
    out.add(
        NAME, "Redis: publish one result (round trip)", pieces["redis_publish_round_trip_ms"], "ms"
    )
    out.details = {"pipeline": pipeline, "pieces": pieces, "fast_sim": FAST_SIM.describe()}
    return out


if __name__ == "__main__":
    sys.exit(main_for(NAME, bench))
