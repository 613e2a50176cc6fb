"""The simulator behaves like vLLM 0.32 where the two used to differ (one test per difference).

What vLLM answers was read off the real server by ``make conformance`` (docs/CONFORMANCE.md);
each test pins the simulator to that answer.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from PIL import Image

from narrator.simulator import FaultConfig, SimConfig, start_fleet, start_fleet_async
from narrator.simulator.fleet import AsyncFleet, replica_configs

MODEL = "narrator-sim-vlm"
KEY = "sk-test-7f3a"
REPO = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def body_with_image(url: str, **extra: Any) -> dict[str, Any]:
    content = [
        {"type": "text", "text": "What is here?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 64,
        **extra,
    }


def text_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        **extra,
    }


async def call(
    url: str,
    path: str,
    body: Any = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as session:
        data = None if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
        async with session.request(method, url + path, data=data, headers=headers) as response:
            raw = await response.read()
            parsed = orjson.loads(raw) if raw[:1] in (b"{", b"[") else raw
            return response.status, parsed, dict(response.headers)


async def poll_until(predicate: Any, timeout_s: float, what: str) -> None:
    """Await until ``predicate()`` is truthy (polled on the test's loop), else fail."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} (after {timeout_s:.0f} s)")
        await asyncio.sleep(0.02)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unknown_top_level_fields_are_accepted_and_ignored(async_fleet: AsyncFleet) -> None:
    status, reply, _ = await call(
        async_fleet.urls[0], CHAT, text_body(temperatur=0.3, foo={"x": 1})
    )
    assert status == 200 and reply["object"] == "chat.completion"
    assert async_fleet.stats(0)["ignored_fields"] == {"foo": 1, "temperatur": 1}


async def test_sampling_options_are_counted_as_sent(async_fleet: AsyncFleet) -> None:
    status, _, _ = await call(
        async_fleet.urls[0], CHAT, text_body(temperature=0.7, seed=5, reasoning_effort="low")
    )
    assert status == 200
    options = async_fleet.stats(0)["request_options"]
    assert options["temperature=0.7"] == 1 and options["seed"] == 1
    assert options["reasoning_effort=low"] == 1
    assert not async_fleet.stats(0)["ignored_fields"]  # vLLM takes reasoning_effort


async def test_any_role_is_handed_on_like_vllm(async_fleet: AsyncFleet) -> None:
    body = text_body(messages=[{"role": "robot", "content": "hello"}])
    assert (await call(async_fleet.urls[0], CHAT, body))[0] == 200


async def test_file_url_image_is_a_500(async_fleet: AsyncFleet) -> None:
    status, reply, _ = await call(
        async_fleet.urls[0], CHAT, body_with_image("file:///etc/hostname")
    )
    assert status == 500
    assert reply["error"] == {
        "message": "Cannot load local files without `--allowed-local-media-path`.",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }


async def test_unreachable_image_url_is_a_500(async_fleet: AsyncFleet) -> None:
    url = f"http://127.0.0.1:{closed_port()}/frame.jpg"
    status, reply, _ = await call(async_fleet.urls[0], CHAT, body_with_image(url))
    assert status == 500 and reply["error"]["type"] == "InternalServerError"
    assert "127.0.0.1" in reply["error"]["message"]


async def test_reachable_image_url_is_fetched_and_answered() -> None:
    app = web.Application()

    async def image(_request: web.Request) -> web.Response:
        return web.Response(body=jpeg_bytes(200, 100), content_type="image/jpeg")

    app.router.add_get("/frame.jpg", image)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with await start_fleet_async(1) as fleet:
            status, reply, _ = await call(
                fleet.urls[0], CHAT, body_with_image(f"http://127.0.0.1:{port}/frame.jpg")
            )
            assert status == 200 and reply["usage"]["prompt_tokens"] > 256
            assert fleet.stats(0)["images"] == 1
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/jpeg;base64,@@@", "base64"),
        ("data:image/jpeg;base64,aGVsbG8=", "Failed to load image"),
    ],
)
async def test_bad_image_data_is_a_400(async_fleet: AsyncFleet, url: str, message: str) -> None:
    status, reply, _ = await call(async_fleet.urls[0], CHAT, body_with_image(url))
    assert status == 400 and reply["error"]["type"] == "BadRequestError"
    assert message in reply["error"]["message"] and reply["error"]["param"] is None


def test_kept_alive_connection_is_closed_after_a_500() -> None:
    with start_fleet(1) as fleet:
        port = int(fleet.urls[0].rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            body = json.dumps(body_with_image("file:///etc/hostname"))
            connection.request("POST", CHAT, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 500 and response.getheader("Connection") is None
            response.read()
            with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
                connection.request("GET", "/health")
                connection.getresponse().read()
        finally:
            connection.close()
        # A 400 keeps the connection, as vLLM does.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", CHAT, b"{bad", {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 400
            response.read()
            connection.request("GET", "/health")
            assert connection.getresponse().status == 200
        finally:
            connection.close()


async def test_fastapi_level_errors_are_detail_bodies(async_fleet: AsyncFleet) -> None:
    url = async_fleet.urls[0]
    status, body, _ = await call(url, "/nothing", method="GET")
    assert (status, body) == (404, {"detail": "Not Found"})
    status, body, _ = await call(url, "/v1/nothing", method="GET")
    assert (status, body) == (404, {"detail": "Not Found"})
    status, body, headers = await call(url, CHAT, method="GET")
    assert (status, body) == (405, {"detail": "Method Not Allowed"})
    assert "POST" in headers["Allow"]


@pytest.mark.parametrize(
    ("change", "param", "error_type", "needle"),
    [
        ({"temperature": "hot"}, "body.temperature", "Bad Request", "validation error"),
        (
            {"response_format": {"type": "yaml"}},
            "body.response_format.type",
            "Bad Request",
            "'json_schema'",
        ),
        (
            {"temperature": 3},
            "temperature",
            "BadRequestError",
            "temperature must be in [0, 2], got 3.0",
        ),
        (
            {"max_tokens": 0},
            "max_tokens",
            "BadRequestError",
            "max_tokens must be at least 1, got 0",
        ),
        ({"messages": []}, None, "BadRequestError", "Cannot apply chat template to an empty"),
        (
            {"reasoning_effort": "extreme"},
            "body.reasoning_effort",
            "Bad Request",
            "Input should be 'none', 'minimal', 'low', 'medium', 'high', 'xhigh' or 'max'",
        ),
    ],
)
async def test_error_bodies_have_vllm_types_and_params(
    async_fleet: AsyncFleet, change: dict[str, Any], param: str | None, error_type: str, needle: str
) -> None:
    status, reply, _ = await call(async_fleet.urls[0], CHAT, text_body(**change))
    assert status == 400
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["param"] == param and reply["error"]["type"] == error_type
    assert needle in reply["error"]["message"] and reply["error"]["code"] == 400


async def test_wrong_model_is_a_404_like_vllm(async_fleet: AsyncFleet) -> None:
    status, reply, _ = await call(async_fleet.urls[0], CHAT, text_body(model="no-such-model"))
    assert status == 404
    assert reply["error"] == {
        "message": f"The model `no-such-model` does not exist. Valid aliases: {MODEL}.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


async def test_context_limits_like_vllm() -> None:
    async with await start_fleet_async(1, SimConfig(max_model_len=300, image_tokens=100)) as fleet:
        url = fleet.urls[0]
        status, reply, _ = await call(url, CHAT, text_body(max_tokens=301))
        assert (
            status == 400
            and "max_tokens=301 cannot be greater than max_model_len=300"
            in (reply["error"]["message"])
        )
        long_prompt = text_body(messages=[{"role": "user", "content": "word " * 400}])
        status, reply, _ = await call(url, CHAT, long_prompt)
        assert status == 400 and reply["error"]["param"] == "input_tokens"
        assert "maximum context length is 300 tokens" in reply["error"]["message"]
        # Prompt fits, prompt + max_tokens does not: accepted, cut at the room left.
        image = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode()
        body = body_with_image(image, max_tokens=300)
        body["messages"][0]["content"][0]["text"] = "x" * 780
        status, reply, _ = await call(url, CHAT, body)
        assert status == 200
        room = 300 - reply["usage"]["prompt_tokens"]
        assert reply["usage"]["completion_tokens"] <= room


async def test_models_listing_has_vllm_fields(async_fleet: AsyncFleet) -> None:
    _, listing, _ = await call(async_fleet.urls[0], "/v1/models", method="GET")
    model = listing["data"][0]
    assert model["owned_by"] == "vllm" and model["max_model_len"] == SimConfig.max_model_len
    assert {"id", "object", "created", "root", "parent"} <= set(model)


def _gauges(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_metrics_and_load_follow_vllm_and_publish_no_capacity() -> None:
    config = SimConfig(slots=1, base_s=3600.0, model="m")  # requests stay until cancelled
    async with await start_fleet_async(1, config) as fleet:
        url = fleet.urls[0]
        requests = [asyncio.create_task(call(url, CHAT, text_body(model="m"))) for _ in range(2)]
        await poll_until(lambda: fleet.stats(0)["queued"] == 1, 10, "one running, one queued")
        _, raw, _ = await call(url, "/metrics", method="GET")
        text = raw.decode()
        gauges = _gauges(text)
        labels = 'engine="0",model_name="m"'
        assert gauges[f"vllm:num_requests_running{{{labels}}}"] == 1.0
        assert gauges[f"vllm:num_requests_waiting{{{labels}}}"] == 1.0
        assert gauges[f'vllm:num_requests_waiting_by_reason{{{labels},reason="capacity"}}'] == 1.0
        assert gauges[f'vllm:num_requests_waiting_by_reason{{{labels},reason="deferred"}}'] == 0.0
        assert gauges[f"vllm:kv_cache_usage_perc{{{labels}}}"] == 1.0
        assert re.search(r'^vllm:cache_config_info\{.*block_size="\d+".*\} 1\.0$', text, re.M)
        for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
            assert f"# TYPE vllm:{name} gauge" in text
        assert "max_num_seqs" not in text
        status, load, _ = await call(url, "/load", method="GET")
        assert (status, load) == (200, {"server_load": 2})
        for task in requests:
            task.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
        await poll_until(lambda: fleet.stats(0)["in_flight"] == 0, 10, "cancelled requests left")
        assert (await call(url, "/load", method="GET"))[1] == {"server_load": 0}


async def test_capacity_metric_only_when_asked_for() -> None:
    async with await start_fleet_async(1, SimConfig(slots=5, publish_capacity=True)) as fleet:
        _, raw, _ = await call(fleet.urls[0], "/metrics", method="GET")
        assert "\nsimvlm_max_num_seqs 5\n" in raw.decode()


async def test_api_key_guards_the_v1_routes_like_vllm() -> None:
    async with await start_fleet_async(1, SimConfig(api_key=KEY)) as fleet:
        url = fleet.urls[0]
        for method, path, body in (
            ("GET", "/v1/models", None),
            ("POST", CHAT, text_body()),
            ("GET", "/v1/nothing", None),
        ):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                status, reply, _ = await call(url, path, body, method=method, headers=headers)
                assert (status, reply) == (401, {"error": "Unauthorized"}), (path, headers)
        for scheme in ("Bearer", "bearer"):
            headers = {"Authorization": f"{scheme} {KEY}"}
            assert (await call(url, "/v1/models", method="GET", headers=headers))[0] == 200
            assert (await call(url, CHAT, text_body(), headers=headers))[0] == 200
        for path in ("/health", "/metrics", "/load"):
            assert (await call(url, path, method="GET"))[0] == 200, path
        assert fleet.stats(0)["by_status"] == {"401": 3, "200": 2}


def _simulator(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "narrator.simulator", "--port", "0", *args]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_api_key_and_per_replica_faults_through_the_cli() -> None:
    faults = '1={"hang_rate": 1.0}'
    with _simulator("--replicas", "2", "--api-key", KEY, "--replica-faults", faults) as process:
        try:
            assert process.stdout is not None
            urls = [process.stdout.readline().strip() for _ in range(2)]
            assert _get(urls[0] + "/v1/models") == (401, b'{"error": "Unauthorized"}')
            status, raw = _get(urls[0] + "/v1/models", {"Authorization": f"Bearer {KEY}"})
            assert status == 200 and orjson.loads(raw)["data"][0]["id"] == MODEL
            settings = [orjson.loads(_get(u + "/admin/faults")[1]) for u in urls]
            assert [s["faults"]["hang_rate"] for s in settings] == [0.0, 1.0]
            assert all(s["api_key"] == KEY for s in settings)
            assert _get(urls[1] + "/health")[0] == 200
        finally:
            process.terminate()
            process.wait(timeout=15)


def test_replica_configs_apply_per_replica_settings_and_refuse_bad_ones() -> None:
    base = SimConfig(seed=10)
    configs = replica_configs(base, 3, {"prose": True}, ['2={"hang_rate": 0.5}'])
    assert [c.seed for c in configs] == [10, 11, 12]
    assert [c.faults.hang_rate for c in configs] == [0.0, 0.0, 0.5]
    assert all(c.faults.prose for c in configs)
    for bad in ("3={}", "x={}", '1=["a"]', '1={"hang_rat": 1}'):
        with pytest.raises(ValueError):
            replica_configs(base, 3, {}, [bad])


async def test_one_replica_of_a_fleet_hangs_half_its_requests_but_answers_health() -> None:
    configs = [SimConfig(seed=3), SimConfig(seed=4, faults=FaultConfig(hang_rate=0.5))]
    async with await start_fleet_async(2, configs) as fleet:
        timeout = aiohttp.ClientTimeout(total=3)

        async def ask(url: str) -> str:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                try:
                    async with session.post(url + CHAT, json=text_body()) as response:
                        await response.read()
                        return str(response.status)
                except TimeoutError:
                    return "timeout"

        good = await asyncio.gather(*(ask(fleet.urls[0]) for _ in range(12)))
        assert good == ["200"] * 12
        half = await asyncio.gather(*(ask(fleet.urls[1]) for _ in range(12)))
        hung = fleet.stats(1)["hung"]
        assert half.count("timeout") == hung and 0 < hung < 12
        assert half.count("200") == 12 - hung
        assert (await call(fleet.urls[1], "/health", method="GET"))[0] == 200
        assert fleet.stats(0)["hung"] == 0
