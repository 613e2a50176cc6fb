"""The simulated OpenAI-compatible VLM server (aiohttp.web) of one replica.

Endpoints, shaped like vLLM 0.32's (see docs/CONFORMANCE.md for what was checked): ``GET
/health``, ``GET /v1/models``, ``POST /v1/chat/completions``, ``GET /load`` (``{"server_load":
N}``, the chat requests in flight), ``GET /metrics`` (vLLM's names and labels:
``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:num_requests_waiting_by_reason{reason=...}``, ``vllm:kv_cache_usage_perc``,
``vllm:cache_config_info{...}``; no capacity figure unless ``publish_capacity`` is set, then
``simvlm_max_num_seqs``), and the admin API: ``GET /admin/stats``, ``GET /admin/timeline``,
``GET|POST /admin/faults`` (flat JSON body of :mod:`narrator.simulator.config` fields),
``POST /admin/reset`` (counters; ``?faults=1`` also clears faults).

Like vLLM: with an ``api_key``, every path under ``/v1`` (and ``/v2``, ``/inference``,
``/cohere``) without ``Authorization: Bearer KEY`` (scheme in any case) answers 401
``{"error": "Unauthorized"}``, unknown routes too; other paths are open. An unknown route is
404 ``{"detail": "Not Found"}`` and a wrong method 405 ``{"detail": "Method Not Allowed"}``.
After answering a 500 the server closes the kept-alive connection without announcing it.

Flow of a chat request: fetch its ``http(s)`` image URLs (failure: 500), validate like vLLM
(:mod:`narrator.simulator.requests`), wait ``latency_s``, draw rate faults from the replica's
own seeded sequence (error / hang first), compose the answer (deterministic: seeded by the
request's ``seed`` and a hash of its messages; VQA answers read the objects in the image,
:mod:`narrator.simulator.vision`), then hold one of ``slots`` FIFO slots for the service time
of :func:`narrator.simulator.capacity.service_time_s`. An answer longer than ``max_tokens``
(or the context room left) is cut with finish_reason ``length``, as a real server would.

The admin endpoints keep working while the ``dead`` fault drops every other connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from narrator.common.logging import get_logger
from narrator.samples.scene import scene_for_text
from narrator.simulator.answers import AnswerContext, generate_instance, wrong_shape
from narrator.simulator.capacity import ServerStats, SlotPool, service_time_s
from narrator.simulator.config import FaultConfig, SimConfig, apply_updates, describe
from narrator.simulator.metrics import metrics_text
from narrator.simulator.requests import (
    REMOTE_SCHEMES,
    VALIDATION_ERROR_TYPE,
    ChatRequest,
    InvalidRequest,
    image_urls,
    parse_chat_request,
)
from narrator.simulator.vision import vqa_answer
from narrator.simulator.vocabulary import objects_in_view, text_answer

log = get_logger("narrator.simulator.server")

HANG_S = 3600.0
THINK_PREFIX = (
    "<think>\nThe frames show a robot arm on a table. An answer such as "
    '{"label": "cube"} would not be enough, so I will look again.\n</think>\n\n'
)
GARBAGE = "I am sorry, I cannot tell what happens in these images."
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")  # vLLM's --api-key guards these
IMAGE_FETCH_TIMEOUT_S = 5.0  # vLLM's default VLLM_IMAGE_FETCH_TIMEOUT


@dataclasses.dataclass(frozen=True)
class FaultDraw:
    """Which rate-driven faults hit one request."""

    error: bool = False
    hang: bool = False
    wrong_shape: bool = False
    garbage: bool = False
    truncate: bool = False


def draw_faults(faults: FaultConfig, rng: random.Random) -> FaultDraw:
    def hit(rate: float) -> bool:
        return rate > 0 and rng.random() < rate

    return FaultDraw(
        error=hit(faults.error_rate),
        hang=hit(faults.hang_rate),
        wrong_shape=hit(faults.wrong_shape_rate),
        garbage=hit(faults.garbage_rate),
        truncate=hit(faults.truncate_rate),
    )


def content_seed(request: ChatRequest, choice: int) -> int:
    seed = request.seed if request.seed is not None else 0
    return int.from_bytes(request.digest[:8], "big") ^ (seed * 1_000_003 + choice)


def compose_answer(
    request: ChatRequest, faults: FaultConfig, draw: FaultDraw, choice: int = 0
) -> tuple[str, str]:
    """(content, finish_reason) of one choice (pure)."""
    scene = scene_for_text(request.text())
    with objects_in_view(scene.in_view() if scene is not None else ()):
        return _compose(request, faults, draw, choice)


def _compose(
    request: ChatRequest, faults: FaultConfig, draw: FaultDraw, choice: int
) -> tuple[str, str]:
    rng = random.Random(content_seed(request, choice))
    if draw.garbage:
        body = GARBAGE
    elif request.schema is None:
        body = text_answer(rng)
    elif draw.wrong_shape:
        body = orjson.dumps(wrong_shape(request.schema, rng)).decode()
    elif (seen := vqa_answer(request.schema, request.first_image, rng, request.text())) is not None:
        if faults.ignore_schema:
            seen["confidence_note"] = "I am not sure about this."
        body = orjson.dumps(seen).decode()
    else:
        defs = {**request.schema.get("definitions", {}), **request.schema.get("$defs", {})}
        ctx = AnswerContext(request.image_sizes, faults.ignore_schema, defs)
        body = orjson.dumps(generate_instance(request.schema, rng, ctx)).decode()
    if faults.fences:
        body = f"```json\n{body}\n```"
    if faults.prose:
        body = f"Here is what I see in the frames:\n{body}\nLet me know if you need more."
    if faults.think_tags:
        body = THINK_PREFIX + body
    finish_reason = "stop"
    if draw.truncate:
        body, finish_reason = body[: max(1, len(body) // 2)], "length"
    if request.max_tokens is not None and completion_tokens(body) > request.max_tokens:
        body, finish_reason = body[: request.max_tokens * 4], "length"
    return body, finish_reason


def completion_tokens(content: str) -> int:
    return max(1, math.ceil(len(content) / 4))


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(InvalidRequest(status, message, param).body(), status=status)


def _authorized(header: str | None, key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and token == key


async def fetch_images(body: Any) -> dict[str, bytes]:
    """The bytes of every ``http(s)`` image URL of ``body``; InvalidRequest(500) on failure."""
    urls = sorted({u for u in image_urls(body) if u.startswith(REMOTE_SCHEMES)})
    if not urls:
        return {}
    fetched: dict[str, bytes] = {}
    timeout = aiohttp.ClientTimeout(total=IMAGE_FETCH_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            try:
                async with session.get(url) as response:
                    response.raise_for_status()
                    fetched[url] = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise InvalidRequest(500, str(exc) or type(exc).__name__) from exc
    return fetched


class SimServer:
    """State and handlers of one simulated replica; ``make_app`` builds a fresh app each start."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.stats = ServerStats()
        self.slots = SlotPool(self.config.slots)
        self._fault_rng = random.Random(self.config.seed)
        self._served = 0

    # --- admin, also used in-process by the fleet ------------------------------------------

    def set_faults(self, updates: dict[str, Any]) -> SimConfig:
        """Apply fault/capacity updates (ValueError on an unknown key or bad value)."""
        self.config = apply_updates(self.config, updates)
        self.slots.set_capacity(self.config.slots)
        log.info("simvlm_settings_changed", updates=updates)
        return self.config

    def clear_faults(self) -> None:
        self.config = dataclasses.replace(self.config, faults=FaultConfig())

    def reset_stats(self) -> None:
        self.stats = self.stats.fresh()

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self.config.slots, self.slots.queued)

    def make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=256 * 1024 * 1024, middlewares=[self._guard, self._fastapi_errors]
        )
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/load", self._load)
        app.router.add_get("/admin/stats", self._admin_stats)
        app.router.add_get("/admin/timeline", self._admin_timeline)
        app.router.add_get("/admin/faults", self._admin_get_faults)
        app.router.add_post("/admin/faults", self._admin_set_faults)
        app.router.add_post("/admin/reset", self._admin_reset)
        return app

    # --- public endpoints ---------------------------------------------------------------------

    def _drop(self, request: web.Request) -> web.Response:
        """Simulate a crashed process: close the connection without answering."""
        self.stats.dropped += 1
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """vLLM's AuthenticationMiddleware: guarded prefixes need the Bearer key."""
        key = self.config.api_key
        guarded = request.path.startswith(GUARDED_PREFIXES) and request.method != "OPTIONS"
        if key is None or not guarded or self.config.faults.dead:
            return await handler(request)
        if _authorized(request.headers.get("Authorization"), key):
            return await handler(request)
        if request.path == "/v1/chat/completions":
            self.stats.request_arrived()
            self.stats.request_left(401)
        return web.json_response({"error": "Unauthorized"}, status=401)

    @web.middleware
    async def _fastapi_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Unknown routes and wrong methods answer like FastAPI: ``{"detail": ...}``."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return web.json_response({"detail": "Not Found"}, status=404)
        except web.HTTPMethodNotAllowed as exc:
            headers = {"Allow": ", ".join(sorted(exc.allowed_methods))}
            return web.json_response({"detail": "Method Not Allowed"}, status=405, headers=headers)

    async def _health(self, request: web.Request) -> web.Response:
        if self.config.faults.dead:
            return self._drop(request)
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        if self.config.faults.dead:
            return self._drop(request)
        created = int(time.time())
        model = {
            "id": self.config.model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.config.model,
            "parent": None,
            "max_model_len": self.config.max_model_len,
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.config.faults.dead:
            return self._drop(request)
        text = metrics_text(
            self.config.model,
            running=self.slots.busy,
            waiting=self.slots.queued,
            slots=self.config.slots,
            publish_capacity=self.config.publish_capacity,
        )
        return web.Response(text=text, content_type="text/plain")

    async def _load(self, request: web.Request) -> web.Response:
        if self.config.faults.dead:
            return self._drop(request)
        return web.json_response({"server_load": self.stats.in_flight})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.config.faults.dead:
            return self._drop(request)
        arrival = self.stats.request_arrived()
        status = 499  # client went away before an answer (nginx's convention)
        try:
            response = await self._answer_chat(request, arrival)
            status = response.status
            if status == 500:
                return await self._answer_then_close(request, response)
            return response
        finally:
            self.stats.request_left(status)

    @staticmethod
    async def _answer_then_close(request: web.Request, response: web.Response) -> web.Response:
        """Send ``response`` in full, then close the connection unannounced (vLLM does so
        after a 500: the client's next request on that connection is reset)."""
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response

    async def _parse(self, request: web.Request) -> ChatRequest:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            message = f"1 validation error:\n  {{'loc': 'body', 'msg': 'JSON decode error: {exc}'}}"
            raise InvalidRequest(400, message, "body", VALIDATION_ERROR_TYPE) from exc
        parse = functools.partial(
            parse_chat_request,
            body,
            model=self.config.model,
            max_model_len=self.config.max_model_len,
            image_tokens=self.config.image_tokens,
            fetched=await fetch_images(body),
        )
        return await asyncio.to_thread(parse) if b"image_url" in raw else parse()

    async def _answer_chat(self, request: web.Request, arrival: float) -> web.Response:
        try:
            chat = await self._parse(request)
        except InvalidRequest as exc:
            log.debug("simvlm_request_rejected", status=exc.status, reason=exc.message)
            return web.json_response(exc.body(), status=exc.status)
        if chat.ignored_fields:
            self.stats.ignored_fields.update(chat.ignored_fields)
            log.warning("simvlm_request_fields_ignored", fields=list(chat.ignored_fields))
        config = self.config
        if config.faults.refuse_json_schema and chat.format_type == "json_schema":
            return error_response(
                config.faults.refuse_json_schema_status, "Input should be 'text' or 'json_object'"
            )
        self.stats.by_schema[chat.schema_name] += 1
        self.stats.request_options.update(chat.options)
        self.stats.images += len(chat.image_sizes)
        if config.faults.latency_s > 0:
            await asyncio.sleep(config.faults.latency_s)
        draw = draw_faults(config.faults, self._fault_rng)
        if draw.error:
            status = config.faults.error_status
            return error_response(status, f"simulated server error {status}")
        if draw.hang:
            self.stats.hung += 1
            await asyncio.sleep(HANG_S)
            return error_response(504, "simulated hang ended")
        compose = functools.partial(
            lambda c: [compose_answer(c, config.faults, draw, i) for i in range(c.n)], chat
        )
        choices = await asyncio.to_thread(compose) if chat.first_image is not None else compose()
        prompt_tokens = chat.prompt_tokens(config.image_tokens)
        output_tokens = sum(completion_tokens(content) for content, _ in choices)
        await self.slots.acquire()
        start = self.stats.service_started()
        service_s = service_time_s(
            base_s=config.base_s,
            per_image_s=config.per_image_s,
            per_output_token_s=config.per_output_token_s,
            occupancy_slowdown=config.occupancy_slowdown,
            images=len(chat.image_sizes),
            completion_tokens=output_tokens,
            busy=self.slots.busy,
            slots=self.slots.capacity,
        )
        try:
            if service_s > 0:
                await asyncio.sleep(service_s)
        finally:
            self.slots.release()
            self.stats.service_ended(
                arrival,
                start,
                images=len(chat.image_sizes),
                tokens=output_tokens,
                schema=chat.schema_name,
            )
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += output_tokens
        self._served += 1
        body = {
            "id": f"chatcmpl-sim-{chat.digest[:6].hex()}-{self._served}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": config.model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
                for index, (content, finish_reason) in enumerate(choices)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": prompt_tokens + output_tokens,
            },
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    # --- admin endpoints ----------------------------------------------------------------------

    async def _admin_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _admin_timeline(self, _request: web.Request) -> web.Response:
        entries = [entry.as_json() for entry in self.stats.timeline]
        return web.json_response({"slots": self.config.slots, "requests": entries})

    async def _admin_get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(describe(self.config))

    async def _admin_set_faults(self, request: web.Request) -> web.Response:
        try:
            updates = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return error_response(400, f"body is not valid JSON: {exc}")
        if not isinstance(updates, dict):
            return error_response(400, "body must be a JSON object of settings")
        try:
            config = self.set_faults(updates)
        except ValueError as exc:
            return error_response(400, str(exc))
        return web.json_response(describe(config))

    async def _admin_reset(self, request: web.Request) -> web.Response:
        if request.query.get("faults") in ("1", "true", "yes"):
            self.clear_faults()
        self.reset_stats()
        return web.json_response({"reset": True})
