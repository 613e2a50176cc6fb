"""How one chat request travels to the replicas: attempts, deadlines, fallbacks, hedges.

:class:`Transport` is the I/O half of :class:`~narrator.workers.vlm_client.VLMClient` (which
keeps the answer loop: parsing, corrective and length retries, counters):

* :meth:`Transport.send` POSTs a request body until a replica answers 200, retrying 408/429/
  5xx, timeouts and connection errors with full-jitter backoff on another replica in rotation,
  up to ``max_attempts`` failed attempts (then ``VLMUnavailableError``); 401/403/404/405 raise
  ``VLMAccessError`` and other 4xx ``VLMRequestRejectedError`` at once.
* Each attempt runs under the adaptive deadline (:func:`workers.replica_stats.request_timeout`)
  and the hard ``timeout_s``; a deadline still at its unknown-kind default is re-read every
  ``UNKNOWN_DEADLINE_SLICE_S`` so a request sent before the fleet had answered anything
  profits from what later answers taught.
* A replica that refuses ``json_schema`` is switched to ``json_object`` (schema in the prompt)
  for good and the attempt re-sent at once, without using up an attempt.
* A request on a dependency chain is hedged: after :func:`workers.replica_stats.hedge_delay`
  a copy goes to another replica with room now; the first answer wins, the other copy is
  cancelled (its connection closed, so vLLM aborts it). A primary outrun by its hedge is a
  ``slow`` outcome of its replica.

Invariants: every acquired replica slot is released exactly once, whatever ends the attempt
(answer, error, cancellation); no task outlives the request that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from narrator.common.config import VLMSettings
from narrator.common.errors import VLMAccessError, VLMRequestRejectedError, VLMUnavailableError
from narrator.common.logging import get_logger
from narrator.common.metrics import (
    VLM_FORMAT_FALLBACKS,
    VLM_HEDGES,
    VLM_IMAGES,
    VLM_LATENCY,
    VLM_REQUESTS,
    VLM_TOKENS,
)
from narrator.workers.replica_stats import SLOW, TIMEOUT, LatencyBook, hedge_delay, request_timeout
from narrator.workers.replicas import Replica, ReplicaPool
from narrator.workers.vlm_api import ChatRequest
from narrator.workers.vlm_protocol import (
    AttemptFailed,
    Reply,
    backoff_delay,
    chat_body,
    error_message,
    refuses_json_schema,
    reply_from,
    status_class,
    with_correction,
)

log = get_logger("narrator.workers.vlm_client")

UNKNOWN_DEADLINE_SLICE_S = 2.0  # re-read a deadline at least this often while it may shrink
HEDGE_SLICE_S = 0.25  # how often a waiting chain request re-reads its hedge delay


class _FormatRefused(Exception):
    """The replica refused ``response_format: json_schema``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Leg:
    """One of the (at most two) copies of a request racing each other."""

    replica: Replica | None = None
    attempts: int = 0
    outrun: bool = False  # cancelled because the other copy answered first


class Bodies:
    """The request body as sent to a ``json_schema`` replica or a ``json_object`` one, with
    the changes retries make (max_tokens, corrective follow-ups), serialized once each."""

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.max_tokens = request.max_tokens
        self._follow_ups: list[tuple[str, str]] = []
        self._payloads: dict[bool, bytes] = {}

    def payload(self, json_object: bool) -> bytes:
        cached = self._payloads.get(json_object)
        if cached is None:
            body = chat_body(self.request, "json_object" if json_object else "json_schema")
            body["max_tokens"] = self.max_tokens
            for answer, problem in self._follow_ups:
                body = with_correction(body, answer, problem)
            cached = self._payloads[json_object] = orjson.dumps(body)
        return cached

    def set_max_tokens(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._payloads.clear()

    def correct(self, answer: str, problem: str) -> None:
        self._follow_ups.append((answer, problem))
        self._payloads.clear()


class Transport:
    """Sends request bodies to the pool's replicas (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: VLMSettings,
        pool: ReplicaPool,
        session: aiohttp.ClientSession,
        headers: dict[str, str],
        latency: LatencyBook,
        rng: random.Random,
        count: Callable[[str, int], None],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.session = session
        self._headers = headers
        self.latency = latency
        self._rng = rng
        self._count = count
        self._timeout = aiohttp.ClientTimeout(
            total=settings.timeout_s, sock_connect=settings.connect_timeout_s
        )

    def timeout_for(self, kind: str) -> float:
        s = self.settings
        return request_timeout(
            self.latency,
            kind,
            multiple=s.timeout_p99_multiple,
            floor_s=s.min_timeout_s,
            ceiling_s=s.timeout_s,
        )

    async def send(self, bodies: Bodies, request: ChatRequest) -> tuple[Reply, int]:
        if request.on_chain and self.settings.hedge and len(self.pool.replicas) > 1:
            return await self._hedged(bodies, request)
        leg = Leg()
        reply = await self.exchange(bodies, request, leg)
        return reply, leg.attempts

    async def _hedged(self, bodies: Bodies, request: ChatRequest) -> tuple[Reply, int]:
        """Send ``request``; if it is slow, a copy to another replica; the first answer."""
        kind, module = request.schema_name, request.module
        first, second = Leg(), Leg()
        primary = asyncio.ensure_future(self.exchange(bodies, request, first))
        hedge: asyncio.Future[Reply] | None = None
        started = time.monotonic()
        try:
            while hedge is None:
                delay = hedge_delay(
                    self.latency,
                    kind,
                    floor_s=self.settings.hedge_min_delay_s,
                    timeout_s=self.timeout_for(kind),
                )
                remaining = delay - (time.monotonic() - started)
                if remaining <= 0 and first.replica is not None:
                    target = self.pool.try_acquire(avoid=[first.replica])
                    if target is not None:
                        self._count(f"{module}:hedges", 1)
                        hedge = asyncio.ensure_future(
                            self.exchange(bodies, request, second, first=target)
                        )
                        break
                wait = HEDGE_SLICE_S if remaining <= 0 else min(remaining, HEDGE_SLICE_S * 4)
                done, _ = await asyncio.wait({primary}, timeout=wait)
                if done:
                    return primary.result(), first.attempts
            return await self._race(primary, hedge, first, second, module)
        finally:
            for task in (primary, hedge):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _race(
        self,
        primary: asyncio.Future[Reply],
        hedge: asyncio.Future[Reply],
        first: Leg,
        second: Leg,
        module: str,
    ) -> tuple[Reply, int]:
        pending: set[asyncio.Future[Reply]] = {primary, hedge}
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = task.exception()
                if failure is None:
                    won = "hedge" if task is hedge else "primary"
                    VLM_HEDGES.labels(module, won).inc()
                    if task is hedge:
                        self._count(f"{module}:hedge_wins", 1)
                        first.outrun = True
                    return task.result(), first.attempts + second.attempts
                if isinstance(failure, VLMAccessError | VLMRequestRejectedError):
                    raise failure
                error = error or failure
        assert error is not None
        raise error

    async def exchange(
        self, bodies: Bodies, request: ChatRequest, leg: Leg, first: Replica | None = None
    ) -> Reply:
        """POST the request until one replica answers 200 (``first``: already acquired)."""
        module, images, kind = request.module, request.images, request.schema_name
        tried: list[Replica] = []
        last = "no attempt made"
        failures = 0
        while failures < self.settings.max_attempts:
            if failures > 0:
                self._count(f"{module}:retries", 1)
                await asyncio.sleep(
                    backoff_delay(
                        failures - 1,
                        self.settings.backoff_base_s,
                        self.settings.backoff_max_s,
                        self._rng,
                    )
                )
            if first is not None:
                replica, first = first, None
            else:
                replica = await self.pool.acquire(avoid=tried)
            leg.replica = replica
            leg.attempts += 1
            self._count(f"{module}:attempts", 1)
            self._count(f"{module}:images", images)
            VLM_IMAGES.labels(module).inc(images)
            started = time.monotonic()
            try:
                reply = await self._attempt(replica, bodies, kind, started)
            except _FormatRefused as exc:
                VLM_REQUESTS.labels(replica.label, module, f"http_{exc.status}").inc()
                self._fall_back_to_json_object(replica, exc)
                continue  # at once, same replica, no attempt used up
            except AttemptFailed as exc:
                failures += 1
                VLM_REQUESTS.labels(replica.label, module, exc.outcome).inc()
                if exc.replica_fault:
                    outcome = TIMEOUT if exc.outcome == "timeout" else "error"
                    await self.pool.record_failure(replica, exc.reason, outcome=outcome)
                tried.append(replica)
                last = f"{replica.label}: {exc.reason}"
                log.info(
                    "vlm_attempt_failed_will_retry",
                    replica=replica.label,
                    outcome=exc.outcome,
                    attempt=failures,
                    max_attempts=self.settings.max_attempts,
                    module=module,
                )
                continue
            except (VLMRequestRejectedError, VLMAccessError) as exc:
                outcome = "access" if isinstance(exc, VLMAccessError) else "rejected"
                VLM_REQUESTS.labels(replica.label, module, outcome).inc()
                raise
            except asyncio.CancelledError:
                if leg.outrun:
                    await self.pool.record_failure(replica, "outrun by a hedge", outcome=SLOW)
                raise
            finally:
                VLM_LATENCY.labels(replica.label, module).observe(time.monotonic() - started)
                await self.pool.release(replica)
            latency = time.monotonic() - started
            VLM_REQUESTS.labels(replica.label, module, "ok").inc()
            await self._record_answer(replica, kind, latency)
            self._count(f"{module}:prompt_tokens", reply.prompt_tokens)
            self._count(f"{module}:completion_tokens", reply.completion_tokens)
            VLM_TOKENS.labels(module, "prompt").inc(reply.prompt_tokens)
            VLM_TOKENS.labels(module, "completion").inc(reply.completion_tokens)
            return reply
        raise VLMUnavailableError(
            f"{module}: no usable answer from the VLM after {self.settings.max_attempts} "
            f"attempts ({self.pool.healthy_count}/{len(self.pool.replicas)} replicas healthy); "
            f"last error: {last}. Check the vLLM servers' logs and health."
        )

    async def _record_answer(self, replica: Replica, kind: str, latency_s: float) -> None:
        self.latency.add(kind, latency_s)
        await self.pool.record_success(replica)
        controller = replica.controller
        if controller is not None:
            limit = controller.on_latency(kind, latency_s, replica.peak_in_flight)
            await self.pool.set_limit(replica, limit)

    def _fall_back_to_json_object(self, replica: Replica, exc: _FormatRefused) -> None:
        replica.json_object = True
        VLM_FORMAT_FALLBACKS.labels(replica.label).inc()
        log.warning(
            "vlm_json_schema_refused",
            replica=replica.label,
            status=exc.status,
            error=exc.message,
            fallback="json_object with the schema in the prompt",
        )

    async def _attempt(self, replica: Replica, bodies: Bodies, kind: str, started: float) -> Reply:
        """One POST under the adaptive deadline (re-read while it waits)."""
        task = asyncio.ensure_future(self._post(replica, bodies.payload(replica.json_object)))
        try:
            while True:
                allowed = self.timeout_for(kind)
                remaining = allowed - (time.monotonic() - started)
                if remaining <= 0:
                    raise AttemptFailed(
                        "timeout", f"no answer within {allowed:.1f}s", replica_fault=True
                    )
                if not self.latency.known(kind):
                    remaining = min(remaining, UNKNOWN_DEADLINE_SLICE_S)
                done, _ = await asyncio.wait({task}, timeout=remaining)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

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
        if not replica.json_object and refuses_json_schema(status, message):
            raise _FormatRefused(status, message)
        kind = status_class(status)
        if kind == "retry":
            raise AttemptFailed(
                f"http_{status}", f"HTTP {status}: {message}", replica_fault=status >= 500
            )
        if kind == "access":
            raise VLMAccessError(
                f"{replica.label} refused the chat request with HTTP {status}: {message}. "
                "Every request will be refused: check the API key (NARRATOR_VLM_API_KEY), "
                "--model and --vlm-url."
            )
        raise VLMRequestRejectedError(
            f"{replica.label} refused the chat request with HTTP {status}: {message}. "
            "The request itself is wrong (parameters, prompt length); retrying will not help."
        )
