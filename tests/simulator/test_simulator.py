"""The simulated VLM server: schema-driven answers, vLLM-like validation, faults, capacity."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import math
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
from PIL import Image

from narrator.simulator import SimConfig, start_fleet, start_fleet_async
from narrator.simulator import vocabulary as vocab
from narrator.simulator.answers import AnswerContext, generate_instance
from narrator.simulator.fleet import AsyncFleet
from tests.support.processes import wait_until_async

MODEL = "narrator-sim-vlm"
REPO = Path(__file__).resolve().parents[2]

BBOX = {
    "type": "object",
    "properties": {
        "detections": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "bbox_format": {"const": "xyxy"},
                    "bbox": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 4,
                        "maxItems": 4,
                    },
                },
                "required": ["label", "bbox_format", "bbox"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["detections"],
    "additionalProperties": False,
}
SPATIAL = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "relation": {"enum": ["left_of", "right_of", "on", "in", "above", "below", "near"]},
        "object": {"type": "string"},
    },
    "required": ["subject", "relation", "object"],
    "additionalProperties": False,
}
SUBTASKS = {
    "type": "object",
    "properties": {
        "subtasks": {
            "type": "array",
            "minItems": 2,
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "minLength": 3, "maxLength": 80},
                    "start_frame": {"type": "integer", "minimum": 0, "maximum": 149},
                    "end_frame": {"type": "integer", "minimum": 0, "maximum": 149},
                },
                "required": ["label", "start_frame", "end_frame"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["subtasks"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "bbox": BBOX,
    "spatial": SPATIAL,
    "subtasks": SUBTASKS,
    "keypoint": {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "point_format": {"const": "xy"},
            "point": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        },
        "required": ["label", "point_format", "point"],
    },
    "count": {
        "type": "object",
        "properties": {"label": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
        "required": ["label", "count"],
    },
    "refs_and_unions": {
        "$defs": {
            "step": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
            "maybe": {
                "anyOf": [
                    {"type": "integer", "exclusiveMinimum": 3, "maximum": 9},
                    {"type": "null"},
                ]
            },
        },
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "maxItems": 3},
            "n": {"$ref": "#/$defs/maybe"},
            "kind": {"oneOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "integer"}]},
            "flag": {"type": "boolean"},
            "ratio": {"type": "number", "minimum": 0.5, "exclusiveMaximum": 0.75},
            "nullable": {"type": ["string", "null"], "maxLength": 5},
            "tags": {
                "type": "array",
                "items": {"enum": ["x", "y", "z"]},
                "uniqueItems": True,
                "minItems": 2,
                "maxItems": 3,
            },
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
                "items": False,
            },
            "both": {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "string"}}, "required": ["b"]},
                ]
            },
            "empty": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
        },
        "required": ["steps", "n", "kind", "flag", "ratio", "nullable", "tags", "pair", "both"],
        "additionalProperties": False,
    },
}
WORDS = {
    word.lower()
    for group in (
        vocab.OBJECTS,
        vocab.ACTIONS,
        vocab.SENTENCES,
        vocab.UTTERANCES,
        vocab.REQUESTS,
        vocab.QUESTIONS,
        vocab.ATTRIBUTES,
        vocab.VALUES,
    )
    for text in group
    for word in re.findall(r"[A-Za-z']+", text.replace("{o}", ""))
}


def jpeg_url(width: int = 320, height: int = 240) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(schema: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You annotate robot videos."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is on the table?"},
                    {"type": "image_url", "image_url": {"url": jpeg_url()}},
                ],
            },
        ],
        "max_tokens": 512,
        "temperature": 0.0,
        "seed": 7,
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        }
    return {**body, **extra}


async def post(url: str, body: Any, path: str = "/v1/chat/completions") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with session.post(url + path, data=data) as response:
            return response.status, orjson.loads(await response.read())


async def get(url: str, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return response.status, await response.read()


def content_of(reply: dict[str, Any]) -> str:
    return str(reply["choices"][0]["message"]["content"])


# --- answers (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_generated_instances_are_valid_for_the_schema(name: str) -> None:
    schema = SCHEMAS[name]
    validator = jsonschema.Draft202012Validator(schema)
    for seed in range(40):
        validator.validate(generate_instance(schema, random.Random(seed)))


def test_generation_is_deterministic_per_seed() -> None:
    first = [generate_instance(BBOX, random.Random(s)) for s in range(5)]
    again = [generate_instance(BBOX, random.Random(s)) for s in range(5)]
    assert first == again
    assert len({orjson.dumps(x) for x in first}) > 1


def test_strings_are_plausible_phrases_not_random_letters() -> None:
    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return []

    schema = {
        "type": "object",
        "properties": {
            k: {"type": "string"}
            for k in ("label", "text", "memory", "interjection", "question", "value", "plan", "x")
        },
    }
    for seed in range(30):
        for text in strings(generate_instance(schema, random.Random(seed))):
            words = re.findall(r"[A-Za-z']+", text)
            assert words and all(w.lower() in WORDS for w in words), text


def test_bbox_lies_inside_the_image_and_is_ordered() -> None:
    schema = {
        "type": "object",
        "properties": {"bbox": {"type": "array", "items": {"type": "integer"}}},
    }
    ctx = AnswerContext(image_sizes=((320, 200),))
    for seed in range(30):
        x1, y1, x2, y2 = generate_instance(schema, random.Random(seed), ctx)["bbox"]
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 200


def test_span_fields_become_consecutive_spans_covering_the_range() -> None:
    for seed in range(20):
        spans = generate_instance(SUBTASKS, random.Random(seed))["subtasks"]
        assert spans[0]["start_frame"] == 0 and spans[-1]["end_frame"] == 149
        for before, after in itertools.pairwise(spans):
            assert before["start_frame"] <= before["end_frame"] < after["start_frame"]


# --- HTTP API ------------------------------------------------------------------------------


async def test_health_models_and_metrics(async_fleet: AsyncFleet) -> None:
    url = async_fleet.urls[0]
    assert (await get(url, "/health"))[0] == 200
    status, raw = await get(url, "/v1/models")
    assert status == 200 and orjson.loads(raw)["data"][0]["id"] == MODEL
    status, raw = await get(url, "/metrics")
    assert status == 200 and b"vllm:num_requests_running{" in raw
    assert b"max_num_seqs" not in raw, "vLLM publishes no capacity figure; neither do we"


async def test_schema_answer_is_valid_deterministic_and_counted(async_fleet: AsyncFleet) -> None:
    url = async_fleet.urls[0]
    status, reply = await post(url, chat_body(BBOX))
    assert status == 200
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["finish_reason"] == "stop"
    answer = orjson.loads(content_of(reply))
    jsonschema.validate(answer, BBOX)
    for detection in answer["detections"]:
        x1, y1, x2, y2 = detection["bbox"]
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
    _, again = await post(url, chat_body(BBOX))
    assert content_of(again) == content_of(reply)
    other_seeds = {content_of((await post(url, chat_body(BBOX, seed=s)))[1]) for s in range(4)}
    assert len(other_seeds) > 1
    text_chars = len("You annotate robot videos.") + len("What is on the table?")
    usage = reply["usage"]
    assert usage["prompt_tokens"] == math.ceil(text_chars / 4) + 256
    assert usage["completion_tokens"] == math.ceil(len(content_of(reply)) / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    stats = async_fleet.stats(0)
    assert stats["requests_total"] == 6 and stats["by_schema"] == {"answer": 6}
    assert stats["by_status"] == {"200": 6} and stats["images"] == 6


async def test_text_answer_and_vllm_extra_parameters(async_fleet: AsyncFleet) -> None:
    status, reply = await post(async_fleet.urls[0], chat_body(None))
    assert status == 200 and "{" not in content_of(reply) and len(content_of(reply)) > 5
    extras = {
        "top_p": 0.9,
        "n": 2,
        "stop": ["\n\n"],
        "chat_template_kwargs": {"enable_thinking": False},
        "max_completion_tokens": 300,
        "logprobs": False,
        "user": "t",
        "guided_json": SPATIAL,
    }
    status, reply = await post(async_fleet.urls[0], chat_body(None, **extras))
    assert status == 200 and len(reply["choices"]) == 2
    jsonschema.validate(orjson.loads(content_of(reply)), SPATIAL)
    assert async_fleet.stats(0)["by_schema"]["guided_json"] == 1


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        ({"model": "other-model"}, 404, "does not exist"),
        ({"messages": "hello"}, 400, "body.messages"),
        ({"messages": [{"content": "x"}]}, 400, "role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video", "video": 1}]}]},
            400,
            "video",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/jpeg;base64,aGVsbG8="},
                            }
                        ],
                    }
                ]
            },
            400,
            "Failed to load image",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://h/a.jpg"}}],
                    }
                ]
            },
            400,
            "HTTP, data or file URL",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/jpeg;base64,@@@"},
                            }
                        ],
                    }
                ]
            },
            400,
            "base64",
        ),
        ({"stream": True}, 400, "stream"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 40_000}, 400, "cannot be greater than max_model_len"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, 400, "name"),
        ({"response_format": {"type": "yaml"}}, 400, "response_format"),
    ],
)
async def test_invalid_requests_get_openai_style_errors(
    async_fleet: AsyncFleet, change: dict[str, Any], status: int, needle: str
) -> None:
    got, body = await post(async_fleet.urls[0], {**chat_body(BBOX), **change})
    assert got == status
    assert set(body["error"]) >= {"message", "type", "code"} and body["error"]["code"] == status
    assert needle in body["error"]["message"]
    assert async_fleet.stats(0)["by_status"] == {str(status): 1}


async def test_body_that_is_not_json_is_rejected(async_fleet: AsyncFleet) -> None:
    status, body = await post(async_fleet.urls[0], b"{not json")
    assert status == 400 and "JSON decode error" in body["error"]["message"]
    assert body["error"]["type"] == "Bad Request" and body["error"]["param"] == "body"


async def test_small_max_tokens_cuts_the_answer_with_length(async_fleet: AsyncFleet) -> None:
    status, reply = await post(async_fleet.urls[0], chat_body(BBOX, max_tokens=8))
    assert status == 200 and reply["choices"][0]["finish_reason"] == "length"
    assert len(content_of(reply)) == 32
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(content_of(reply))


# --- faults --------------------------------------------------------------------------------


async def test_wrapping_faults_keep_the_json_inside(async_fleet: AsyncFleet) -> None:
    async_fleet.set_faults(0, think_tags=True, prose=True, fences=True)
    content = content_of((await post(async_fleet.urls[0], chat_body(SPATIAL)))[1])
    assert content.startswith("<think>") and "</think>" in content
    assert "```json\n{" in content and content.rstrip().endswith("more.")
    inner = content.split("```json\n", 1)[1].split("\n```", 1)[0]
    jsonschema.validate(orjson.loads(inner), SPATIAL)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_error_rate_answers_the_configured_status(
    async_fleet: AsyncFleet, status: int
) -> None:
    async_fleet.set_faults(0, error_rate=1.0, error_status=status)
    got, body = await post(async_fleet.urls[0], chat_body(SPATIAL))
    assert got == status and body["error"]["code"] == status


async def test_content_faults(async_fleet: AsyncFleet) -> None:
    url = async_fleet.urls[0]
    async_fleet.set_faults(0, wrong_shape_rate=1.0)
    shaped = orjson.loads(content_of((await post(url, chat_body(SPATIAL)))[1]))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(shaped, SPATIAL)
    async_fleet.set_faults(0, wrong_shape_rate=0.0, garbage_rate=1.0)
    assert "{" not in content_of((await post(url, chat_body(SPATIAL)))[1])
    async_fleet.set_faults(0, garbage_rate=0.0, truncate_rate=1.0)
    _, reply = await post(url, chat_body(SPATIAL))
    assert reply["choices"][0]["finish_reason"] == "length"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(content_of(reply))
    async_fleet.set_faults(0, truncate_rate=0.0, ignore_schema=True)
    loose = orjson.loads(content_of((await post(url, chat_body(SPATIAL)))[1]))
    assert {"subject", "relation", "object"} <= set(loose)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        jsonschema.validate(loose, SPATIAL)


async def test_rates_between_zero_and_one_hit_some_requests(async_fleet: AsyncFleet) -> None:
    async_fleet.set_faults(0, error_rate=0.5, error_status=503)
    statuses = [(await post(async_fleet.urls[0], chat_body(SPATIAL)))[0] for _ in range(40)]
    assert 5 <= statuses.count(503) <= 35 and statuses.count(200) == 40 - statuses.count(503)


async def test_hang_lasts_until_the_client_gives_up(async_fleet: AsyncFleet) -> None:
    async_fleet.set_faults(0, hang_rate=1.0)
    timeout = aiohttp.ClientTimeout(total=0.5)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(TimeoutError):
            await session.post(
                async_fleet.urls[0] + "/v1/chat/completions", json=chat_body(SPATIAL)
            )
    assert time.monotonic() - started >= 0.45
    await wait_until_async(
        lambda: async_fleet.stats(0)["in_flight"] == 0 and async_fleet.stats(0)["by_status"],
        30,
        "the hung request was never released",
    )
    stats = async_fleet.stats(0)
    assert stats["hung"] == 1 and stats["in_flight"] == 0 and stats["by_status"] == {"499": 1}


async def test_latency_delays_every_answer(async_fleet: AsyncFleet) -> None:
    async_fleet.set_faults(0, latency_s=0.3)
    started = time.monotonic()
    assert (await post(async_fleet.urls[0], chat_body(SPATIAL)))[0] == 200
    assert time.monotonic() - started >= 0.3


async def test_dead_drops_connections_but_admin_still_works(async_fleet: AsyncFleet) -> None:
    url = async_fleet.urls[0]
    status, _ = await post(url, {"dead": True}, "/admin/faults")
    assert status == 200
    for path in ("/v1/chat/completions", "/health"):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(url, chat_body(SPATIAL), path) if "chat" in path else await get(url, path)
    status, raw = await get(url, "/admin/stats")
    assert status == 200 and orjson.loads(raw)["dropped"] >= 2
    await post(url, {"dead": False}, "/admin/faults")
    assert (await get(url, "/health"))[0] == 200


async def test_admin_faults_validate_and_reset(async_fleet: AsyncFleet) -> None:
    url = async_fleet.urls[0]
    for bad in ({"eror_rate": 1}, {"error_rate": 2}, {"think_tags": "yes"}, {"slots": 0}):
        status, body = await post(url, bad, "/admin/faults")
        assert status == 400 and body["error"]["message"]
    status, config = await post(url, {"prose": True, "slots": 3}, "/admin/faults")
    assert status == 200 and config["faults"]["prose"] is True and config["slots"] == 3
    await post(url, chat_body(SPATIAL))
    assert async_fleet.stats(0)["requests_total"] == 1
    await post(url, {}, "/admin/reset")
    assert async_fleet.stats(0)["requests_total"] == 0
    assert orjson.loads((await get(url, "/admin/faults"))[1])["faults"]["prose"] is True
    await post(url, {}, "/admin/reset?faults=1")
    assert orjson.loads((await get(url, "/admin/faults"))[1])["faults"]["prose"] is False


# --- capacity ------------------------------------------------------------------------------


async def test_slots_queue_fifo_and_utilisation() -> None:
    # Service long beside the arrival spread (0.1 s), so that on a starved CI machine the six
    # requests still overlap: 4+ wait while 2 run.
    config = SimConfig(slots=2, base_s=0.6)
    async with await start_fleet_async(1, config) as fleet:
        url = fleet.urls[0]
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                await asyncio.sleep(0.02 * i)  # fixes the arrival order
                async with session.post(url + "/v1/chat/completions", json=chat_body(SPATIAL)) as r:
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(6)))
        elapsed = time.monotonic() - started
        assert statuses == [200] * 6
        assert elapsed >= 1.8  # 6 requests of 0.6 s on 2 slots (no upper bound: a busy CI)
        stats = fleet.stats(0)
        assert stats["max_running"] == 2 and stats["max_in_flight"] >= 4
        assert stats["busy_slot_s"] >= 3.6 - 0.01
        assert 0 < stats["utilisation"] <= 1.0
        status, raw = await get(url, "/admin/timeline")
        timeline = orjson.loads(raw)["requests"]
        assert status == 200 and len(timeline) == 6
        by_arrival = sorted(timeline, key=lambda e: e["arrival_s"])
        starts = [e["start_s"] for e in by_arrival]
        assert starts == sorted(starts), "slots are granted in arrival order"
        for entry in timeline:  # never more than 2 in service at any start instant
            at_start = [o for o in timeline if o["start_s"] <= entry["start_s"] < o["end_s"]]
            assert len(at_start) <= 2


async def test_service_time_grows_with_images_and_output_tokens() -> None:
    config = SimConfig(slots=1, per_image_s=0.2, per_output_token_s=0.002)
    async with await start_fleet_async(1, config) as fleet:
        started = time.monotonic()
        status, reply = await post(fleet.urls[0], chat_body(BBOX))
        elapsed = time.monotonic() - started
        expected = 0.2 + 0.002 * reply["usage"]["completion_tokens"]
        assert status == 200 and elapsed >= expected - 0.01
        assert fleet.stats(0)["busy_slot_s"] >= expected - 0.01


# --- fleet helpers and CLI -------------------------------------------------------------------


def test_sync_fleet_stops_and_restarts_a_replica_on_the_same_port() -> None:
    with start_fleet(2, SimConfig(slots=4)) as fleet:
        urls = list(fleet.urls)
        assert len(set(urls)) == 2
        fleet.stop_replica(1)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(urls[1] + "/health", timeout=2)
        with urllib.request.urlopen(urls[0] + "/health", timeout=2) as response:
            assert response.status == 200
        fleet.start_replica(1)
        assert fleet.urls == urls
        with urllib.request.urlopen(urls[1] + "/health", timeout=2) as response:
            assert response.status == 200
        assert fleet.set_faults(1, error_rate=1.0).faults.error_rate == 1.0
        assert fleet.stats(1)["slots"] == 4


def test_cli_serves_replicas_until_terminated() -> None:
    command = [sys.executable, "-m", "narrator.simulator", "--replicas", "2", "--port", "0"]
    with subprocess.Popen(
        [*command, "--slots", "3", "--publish-capacity"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            urls = [process.stdout.readline().strip() for _ in range(2)]
            assert all(u.startswith("http://127.0.0.1:") for u in urls) and urls[0] != urls[1]
            for url in urls:
                with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                    assert b"simvlm_max_num_seqs 3" in response.read()
            process.terminate()
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
