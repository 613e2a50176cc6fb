"""The simulated OpenAI-compatible VLM server (aiohttp.web) of one replica.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``, ``GET /metrics``
(vLLM's request gauges plus ``simvlm_max_num_seqs``, the slot count, which narrator's client
can probe), and the admin API: ``GET /admin/stats``, ``GET /admin/timeline``,
``GET|POST /admin/faults`` (flat JSON body of :mod:`narrator.simulator.config` fields),
``POST /admin/reset`` (counters; ``?faults=1`` also clears faults).

Flow of a chat request: validate like vLLM (400/404 with ``{"error": {...}}``), wait
``latency_s``, draw rate faults from the replica's own seeded sequence (error / hang first),
compose the answer (deterministic: seeded by the request's ``seed`` and a hash of its
messages), then hold one of ``slots`` FIFO slots for ``base_s + per_image_s * images +
per_output_token_s * completion_tokens`` seconds. An answer longer than ``max_tokens`` is cut
with finish_reason ``length``, as a real server would.

The admin endpoints keep working while the ``dead`` fault drops every other connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import random
import time
from typing import Any

import orjson
from aiohttp import web

from narrator.common.logging import get_logger
from narrator.simulator.answers import AnswerContext, generate_instance, wrong_shape
from narrator.simulator.capacity import ServerStats, SlotPool
from narrator.simulator.config import FaultConfig, SimConfig, apply_updates, describe
from narrator.simulator.requests import ChatRequest, InvalidRequest, parse_chat_request
from narrator.simulator.vocabulary import text_answer

log = get_logger("narrator.simulator.server")

HANG_S = 3600.0
THINK_PREFIX = (
    "<think>\nThe frames show a robot arm on a table. An answer such as "
    '{"label": "cube"} would not be enough, so I will look again.\n</think>\n\n'
)
GARBAGE = "I am sorry, I cannot tell what happens in these images."


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
    rng = random.Random(content_seed(request, choice))
    if draw.garbage:
        body = GARBAGE
    elif request.schema is None:
        body = text_answer(rng)
    elif draw.wrong_shape:
        body = orjson.dumps(wrong_shape(request.schema, rng)).decode()
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
        log.info("simvlm settings changed", updates=updates)
        return self.config

    def clear_faults(self) -> None:
        self.config = dataclasses.replace(self.config, faults=FaultConfig())

    def reset_stats(self) -> None:
        self.stats = self.stats.fresh()

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self.config.slots, self.slots.queued)

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/metrics", self._metrics)
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

    async def _health(self, request: web.Request) -> web.Response:
        if self.config.faults.dead:
            return self._drop(request)
        return web.Response(status=200)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        key = self.config.api_key
        if key is None or request.headers.get("Authorization") == f"Bearer {key}":
            return None
        return error_response(401, "Unauthorized: missing or wrong API key")

    async def _models(self, request: web.Request) -> web.Response:
        if self.config.faults.dead:
            return self._drop(request)
        if (refused := self._unauthorized(request)) is not None:
            return refused
        model = {"id": self.config.model, "object": "model", "owned_by": "narrator-simvlm"}
        return web.json_response({"object": "list", "data": [model]})

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.config.faults.dead:
            return self._drop(request)
        name = self.config.model
        text = (
            f'vllm:num_requests_running{{model_name="{name}"}} {self.slots.busy}\n'
            f'vllm:num_requests_waiting{{model_name="{name}"}} {self.slots.queued}\n'
            f"simvlm_max_num_seqs {self.config.slots}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def _chat(self, request: web.Request) -> web.Response:
        if self.config.faults.dead:
            return self._drop(request)
        arrival = self.stats.request_arrived()
        status = 499  # client went away before an answer (nginx's convention)
        try:
            refused = self._unauthorized(request)
            response = refused or await self._answer_chat(request, arrival)
            status = response.status
            return response
        finally:
            self.stats.request_left(status)

    async def _parse(self, request: web.Request) -> ChatRequest:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(400, f"request body is not valid JSON: {exc}") from exc
        parse = functools.partial(
            parse_chat_request,
            body,
            model=self.config.model,
            max_model_len=self.config.max_model_len,
            image_tokens=self.config.image_tokens,
        )
        return await asyncio.to_thread(parse) if b"image_url" in raw else parse()

    async def _answer_chat(self, request: web.Request, arrival: float) -> web.Response:
        try:
            chat = await self._parse(request)
        except InvalidRequest as exc:
            log.debug("simvlm rejected request", status=exc.status, reason=exc.message)
            return web.json_response(exc.body(), status=exc.status)
        config = self.config
        if config.faults.refuse_json_schema and chat.format_type == "json_schema":
            return error_response(
                config.faults.refuse_json_schema_status, "Input should be 'text' or 'json_object'"
            )
        self.stats.by_schema[chat.schema_name] += 1
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
        choices = [compose_answer(chat, config.faults, draw, i) for i in range(chat.n)]
        prompt_tokens = chat.prompt_tokens(config.image_tokens)
        output_tokens = sum(completion_tokens(content) for content, _ in choices)
        service_s = (
            config.base_s
            + config.per_image_s * len(chat.image_sizes)
            + config.per_output_token_s * output_tokens
        )
        await self.slots.acquire()
        start = self.stats.service_started()
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
