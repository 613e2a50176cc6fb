"""The client narrator's modules use to ask vLLM replicas for JSON answers (aiohttp shell).

:meth:`VLMClient.ask` sends one chat-completion request (a
:class:`~narrator.workers.vlm_api.ChatRequest`) with a ``json_schema``
``response_format`` and returns the parsed JSON object. Around it:

* Replica choice: :class:`workers.replicas.ReplicaPool` (least loaded, per-replica in-flight
  budget, health). The budget is ``settings.max_in_flight_per_replica``; if unset, the client
  probes ``GET /metrics`` for a ``max_num_seqs`` value (narrator's simulator publishes one;
  vLLM itself does not) and allows that plus 25% headroom, so a replica's next request is
  already queued when a slot frees; if nothing says, the budget is
  ``DEFAULT_IN_FLIGHT_PER_REPLICA`` (32).
* A background task polls ``GET /health`` every ``settings.health_interval_s``.
* Error taxonomy: 400/401/403/404/413/422 (any 4xx but 408/429) -> ``VLMRequestRejectedError``,
  never retried. 408/429/5xx, timeouts, connection errors and malformed response envelopes ->
  retried with full-jitter exponential backoff (``uniform(0, min(backoff_max_s,
  backoff_base_s * 2**n))``), on another replica when one is healthy, up to
  ``settings.max_attempts`` attempts, then ``VLMUnavailableError``.
* ``finish_reason == "length"`` with no usable JSON: one retry with ``max_tokens`` doubled
  (capped at ``MAX_TOKENS_CAP``), then ``BadAnswerError``.
* Unparsable answers (see :mod:`workers.json_answer`) or answers ``check`` rejects: one
  corrective retry that shows the model its answer and what was wrong, then ``BadAnswerError``.

Counters: :meth:`counters` (``<module>:<name>``) and the Prometheus metrics of
:mod:`common.metrics`. Images are counted per attempt sent. The API key is sent as a Bearer
token and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import orjson

from narrator.common.config import VLMSettings
from narrator.common.errors import (
    BadAnswerError,
    ConfigError,
    VLMRequestRejectedError,
    VLMUnavailableError,
)
from narrator.common.logging import get_logger
from narrator.common.metrics import VLM_IMAGES, VLM_LATENCY, VLM_REQUESTS, VLM_TOKENS
from narrator.workers.json_answer import extract_json_object
from narrator.workers.replicas import Replica, ReplicaObserver, ReplicaPool
from narrator.workers.vlm_api import AnswerParser, ChatAnswer, ChatRequest
from narrator.workers.vlm_protocol import (
    AttemptFailed,
    Reply,
    backoff_delay,
    budget_from_metrics,
    chat_body,
    error_message,
    reply_from,
    with_correction,
)

# Counters of the job running in the current asyncio context (see count_into).
_COUNTER_SCOPE: ContextVar[Counter[str] | None] = ContextVar("vlm_counter_scope", default=None)


@contextlib.contextmanager
def count_into(counter: Counter[str]) -> Iterator[Counter[str]]:
    """Also add every counter increment made in this context (and the tasks it starts) to
    ``counter``: per-job counts while several jobs share one client."""
    token = _COUNTER_SCOPE.set(counter)
    try:
        yield counter
    finally:
        _COUNTER_SCOPE.reset(token)


log = get_logger("narrator.workers.vlm_client")

T = TypeVar("T")

DEFAULT_IN_FLIGHT_PER_REPLICA = 32
MAX_TOKENS_CAP = 8192


class VLMClient:
    """Chat-completion client over a pool of replicas. Use ``async with`` or start()/close()."""

    def __init__(
        self,
        settings: VLMSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
        observer: ReplicaObserver | None = None,
    ) -> None:
        if not settings.urls:
            raise ConfigError("no VLM URLs configured: pass --vlm-url (or --serve)")
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._rng = rng or random.Random()
        self._observer = observer  # hears replica health changes (label, healthy, reason)
        self._counters: Counter[str] = Counter()
        self._pool: ReplicaPool | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._model: str | None = settings.model
        self._headers: dict[str, str] = {}
        if settings.api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._timeout = aiohttp.ClientTimeout(
            total=settings.timeout_s, sock_connect=settings.connect_timeout_s
        )

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._pool is not None:
            return
        urls = self.settings.urls
        budgets = await self._budgets(urls)
        if self._session is None:
            total = sum(budgets) + 2 * len(urls)
            connector = aiohttp.TCPConnector(limit=total, limit_per_host=max(budgets) + 2)
            self._session = aiohttp.ClientSession(connector=connector)
        self._pool = ReplicaPool(urls, budget=budgets, observer=self._observer)
        log.info("vlm client ready", replicas=len(urls), budgets=budgets)
        self._health_task = asyncio.create_task(self._health_loop(), name="vlm-health")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
        self._pool = None

    async def __aenter__(self) -> VLMClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def pool(self) -> ReplicaPool:
        if self._pool is None:
            raise RuntimeError("VLMClient.start() was not called")
        return self._pool

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("VLMClient.start() was not called")
        return self._session

    async def _budgets(self, urls: tuple[str, ...]) -> list[int]:
        if self.settings.max_in_flight_per_replica is not None:
            return [self.settings.max_in_flight_per_replica] * len(urls)
        timeout = aiohttp.ClientTimeout(total=self.settings.connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as probe:
            return list(await asyncio.gather(*(self._probe_budget(probe, u) for u in urls)))

    async def _probe_budget(self, session: aiohttp.ClientSession, url: str) -> int:
        try:
            async with session.get(f"{url}/metrics") as response:
                text = await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            text = ""
        return budget_from_metrics(text, DEFAULT_IN_FLIGHT_PER_REPLICA)

    async def _health_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=min(self.settings.health_interval_s, self.settings.connect_timeout_s)
        )
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await asyncio.gather(*(self._check(r, timeout) for r in self.pool.replicas))

    async def _check(self, replica: Replica, limits: aiohttp.ClientTimeout) -> None:
        try:
            async with self.session.get(
                f"{replica.url}/health", headers=self._headers, timeout=limits
            ) as response:
                ok, reason = response.status == 200, f"GET /health answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, reason = False, f"GET /health failed: {type(exc).__name__}"
        await self.pool.set_healthy(replica, ok, reason)

    # --- model ---------------------------------------------------------------------------

    async def resolve_model(self) -> str:
        """``settings.model``, else the first model id the first answering replica lists."""
        if self._model is not None:
            return self._model
        for url in self.settings.urls:
            try:
                async with self.session.get(
                    f"{url}/v1/models", headers=self._headers, timeout=self._timeout
                ) as response:
                    if response.status != 200:
                        continue
                    models = orjson.loads(await response.read())
                self._model = str(models["data"][0]["id"])
                return self._model
            except (
                aiohttp.ClientError,
                TimeoutError,
                orjson.JSONDecodeError,
                KeyError,
                IndexError,
            ):
                continue
        raise VLMUnavailableError(
            f"no VLM replica answered GET /v1/models ({', '.join(self.settings.urls)}); "
            "check that the servers are up or pass --model"
        )

    # --- chat ----------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def _count(self, key: str, n: int) -> None:
        self._counters[key] += n
        scope = _COUNTER_SCOPE.get()
        if scope is not None:
            scope[key] += n

    async def ask(self, request: ChatRequest, parse: AnswerParser[T]) -> ChatAnswer[T]:
        """The parsed answer to ``request`` (see the module docstring for retries)."""
        module = request.module
        self._count(f"{module}:requests", 1)
        images = request.images
        body = chat_body(request)
        attempts = 0
        length_retried = corrected = False
        try:
            while True:
                reply, used = await self._exchange(body, module, images)
                attempts += used
                parsed, problem = self._usable(reply, parse)
                if parsed is not None:
                    self._count(f"{module}:ok", 1)
                    value, data = parsed
                    return ChatAnswer(
                        value,
                        data,
                        reply.replica,
                        attempts,
                        reply.finish_reason,
                        reply.prompt_tokens,
                        reply.completion_tokens,
                        images,
                    )
                if reply.finish_reason == "length" and not length_retried:
                    length_retried = True
                    doubled = min(body["max_tokens"] * 2, max(MAX_TOKENS_CAP, body["max_tokens"]))
                    if doubled > body["max_tokens"]:
                        self._count(f"{module}:length_retries", 1)
                        log.info("vlm_answer_cut_retrying", module=module, max_tokens=doubled)
                        body = {**body, "max_tokens": doubled}
                        continue
                if reply.finish_reason == "length":
                    problem = f"answer cut at max_tokens={body['max_tokens']} ({problem})"
                    raise BadAnswerError(f"{module}: {problem}; raise max_tokens")
                if corrected:
                    raise BadAnswerError(
                        f"{module}: answer unusable after a corrective retry: {problem} "
                        f"(answer starts {reply.content[:160]!r})"
                    )
                corrected = True
                self._count(f"{module}:corrective_retries", 1)
                log.info("vlm_answer_unusable_correcting", module=module, reason=problem)
                body = with_correction(body, reply.content, problem)
        except BadAnswerError:
            self._count(f"{module}:failures:bad_answer", 1)
            raise
        except VLMRequestRejectedError:
            self._count(f"{module}:failures:rejected", 1)
            raise
        except VLMUnavailableError:
            self._count(f"{module}:failures:unavailable", 1)
            raise

    @staticmethod
    def _usable(
        reply: Reply, parse: AnswerParser[T]
    ) -> tuple[tuple[T, dict[str, Any]] | None, str]:
        """((parsed value, JSON object), "") for a usable reply, else (None, the problem)."""
        try:
            data = extract_json_object(reply.content)
            value = parse(data)
        except ValueError as exc:
            return None, str(exc) or type(exc).__name__
        return (value, data), ""

    async def _exchange(self, body: dict[str, Any], module: str, images: int) -> tuple[Reply, int]:
        """POST ``body`` until one replica answers 200; (reply, attempts used)."""
        payload = orjson.dumps(body)
        tried: list[Replica] = []
        last = "no attempt made"
        for attempt in range(self.settings.max_attempts):
            if attempt > 0:
                self._count(f"{module}:retries", 1)
                delay = backoff_delay(
                    attempt - 1,
                    self.settings.backoff_base_s,
                    self.settings.backoff_max_s,
                    self._rng,
                )
                await asyncio.sleep(delay)
            replica = await self.pool.acquire(avoid=tried)
            self._count(f"{module}:attempts", 1)
            self._count(f"{module}:images", images)
            VLM_IMAGES.labels(module).inc(images)
            started = time.monotonic()
            try:
                reply = await self._post(replica, payload)
            except AttemptFailed as exc:
                VLM_REQUESTS.labels(replica.label, module, exc.outcome).inc()
                if exc.replica_fault:
                    await self.pool.record_failure(replica, exc.reason)
                tried.append(replica)
                last = f"{replica.label}: {exc.reason}"
                log.info(
                    "vlm attempt failed; will retry",
                    replica=replica.label,
                    outcome=exc.outcome,
                    attempt=attempt + 1,
                    max_attempts=self.settings.max_attempts,
                    module=module,
                )
                continue
            except VLMRequestRejectedError:
                VLM_REQUESTS.labels(replica.label, module, "rejected").inc()
                raise
            finally:
                VLM_LATENCY.labels(replica.label, module).observe(time.monotonic() - started)
                await self.pool.release(replica)
            VLM_REQUESTS.labels(replica.label, module, "ok").inc()
            await self.pool.record_success(replica)
            self._count(f"{module}:prompt_tokens", reply.prompt_tokens)
            self._count(f"{module}:completion_tokens", reply.completion_tokens)
            VLM_TOKENS.labels(module, "prompt").inc(reply.prompt_tokens)
            VLM_TOKENS.labels(module, "completion").inc(reply.completion_tokens)
            return reply, attempt + 1
        raise VLMUnavailableError(
            f"{module}: no usable answer from the VLM after {self.settings.max_attempts} "
            f"attempts ({self.pool.healthy_count}/{len(self.pool.replicas)} replicas healthy); "
            f"last error: {last}. Check the vLLM servers' logs and health."
        )

    async def _post(self, replica: Replica, payload: bytes) -> Reply:
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            async with self.session.post(
                f"{replica.url}/v1/chat/completions",
                data=payload,
                headers=headers,
                timeout=self._timeout,
            ) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise AttemptFailed(
                "timeout", f"no answer within {self.settings.timeout_s}s", replica_fault=True
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise AttemptFailed(
                "connection", f"{type(exc).__name__}: {exc}", replica_fault=True
            ) from exc
        if status == 200:
            return reply_from(raw, replica.label)
        message = error_message(raw)
        if status in (408, 429) or status >= 500:
            raise AttemptFailed(
                f"http_{status}", f"HTTP {status}: {message}", replica_fault=status >= 500
            )
        raise VLMRequestRejectedError(
            f"{replica.label} refused the chat request with HTTP {status}: {message}. "
            "The request itself is wrong (model name, parameters, prompt length, API key); "
            "retrying will not help."
        )
