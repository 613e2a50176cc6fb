"""The client narrator's modules use to ask vLLM replicas for JSON answers (aiohttp shell).

:meth:`VLMClient.ask` sends one chat-completion request (a
:class:`~narrator.workers.vlm_api.ChatRequest`) with a ``json_schema`` ``response_format``
and returns the parsed JSON object; :mod:`workers.vlm_transport` does the sending
(attempts, deadlines, the json_object fallback, hedges). Around it:

* Replica choice and rotation: :class:`workers.replicas.ReplicaPool` (weighted least loaded,
  per-replica in-flight limit, health, failure streaks and rates). The limit is
  ``settings.max_in_flight_per_replica`` when set, else adaptive: the background loops of
  :mod:`workers.fleet_monitor` read each replica's ``vllm:num_requests_running/waiting`` and
  let :mod:`workers.inflight` set it. :meth:`spare_capacity` / :meth:`wait_for_capacity` say
  how many more requests the fleet would take now.
* Error taxonomy (:func:`workers.vlm_protocol.status_class`): 408/429/5xx, timeouts,
  connection errors and malformed envelopes are retried with full-jitter exponential backoff
  (``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``), on another replica when one
  is in rotation, up to ``settings.max_attempts`` attempts, then ``VLMUnavailableError``;
  401/403/404/405 raise ``VLMAccessError`` (the job fails); other 4xx raise
  ``VLMRequestRejectedError`` (the item fails). Neither is retried.
* A replica that refuses ``json_schema`` (:func:`workers.vlm_protocol.refuses_json_schema`)
  is asked with ``json_object`` and the schema in the prompt from then on; the request is
  re-sent at once, and the switch logged once per replica (``vlm_json_schema_refused``).
* Timeouts follow the fleet: an attempt may take ``timeout_p99_multiple`` x the p99 latency of
  its kind of request (schema name), between ``min_timeout_s`` and ``timeout_s``; the deadline
  is re-read while the attempt waits, so early requests profit from what later ones taught.
* Hedging: a request with ``on_chain`` that has no answer after the hedge delay (1.5 x the
  p95 of its kind, at least ``hedge_min_delay_s``) is sent again to another replica with room;
  the first answer wins and the other request is cancelled (the server aborts it when the
  connection closes). A primary outrun by its hedge counts as a slow outcome of its replica.
* ``finish_reason == "length"`` with no usable JSON: one retry with ``max_tokens`` doubled
  (capped at ``MAX_TOKENS_CAP``), then ``BadAnswerError``.
* Unparsable answers (see :mod:`workers.json_answer`) or answers ``parse`` rejects: one
  corrective retry that shows the model its answer and what was wrong, then ``BadAnswerError``.

Counters: :meth:`counters` (``<module>:<name>``, including ``hedges`` and ``hedge_wins``) and
the Prometheus metrics of :mod:`common.metrics`. Images are counted per attempt sent. The API
key is sent as a Bearer token and never logged. Replica rotation changes go to the optional
``observer`` (label, in rotation, reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from narrator.common.config import VLMSettings
from narrator.common.errors import (
    BadAnswerError,
    ConfigError,
    VLMAccessError,
    VLMRequestRejectedError,
    VLMUnavailableError,
)
from narrator.common.logging import get_logger
from narrator.workers.fleet_monitor import FleetMonitor, LimitTrace
from narrator.workers.inflight import ControlSettings
from narrator.workers.json_answer import extract_json_object
from narrator.workers.replica_stats import LatencyBook
from narrator.workers.replicas import ReplicaObserver, ReplicaPool
from narrator.workers.vlm_api import AnswerParser, ChatAnswer, ChatRequest
from narrator.workers.vlm_protocol import Reply
from narrator.workers.vlm_transport import Bodies, Transport

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
        self._observer = observer
        self._counters: Counter[str] = Counter()
        self._pool: ReplicaPool | None = None
        self._transport: Transport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._model: str | None = settings.model
        self._headers: dict[str, str] = {}
        if settings.api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self.latency = LatencyBook()
        self.trace = LimitTrace()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._pool is not None:
            return
        s = self.settings
        if self._session is None:
            # The pool bounds concurrency per replica; the connector only reuses connections.
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector)
        control = None
        if s.max_in_flight_per_replica is None:
            control = ControlSettings(
                initial=min(s.initial_in_flight_per_replica, s.in_flight_ceiling_per_replica),
                ceiling=s.in_flight_ceiling_per_replica,
                queue_target=s.queue_target,
            )
        self._pool = ReplicaPool(
            s.urls,
            limit=s.max_in_flight_per_replica,
            control=control,
            window_s=s.stats_window_s,
            eject_rate=s.eject_failure_rate,
            observer=self._observer,
        )
        monitor = FleetMonitor(
            pool=self._pool,
            session=self._session,
            settings=s,
            headers=self._headers,
            latency=self.latency,
            model=lambda: self._model,
            trace=self.trace,
        )
        log.info(
            "vlm_client_ready",
            replicas=len(s.urls),
            in_flight_limit=s.max_in_flight_per_replica or "adaptive",
        )
        self._transport = Transport(
            settings=s,
            pool=self._pool,
            session=self._session,
            headers=self._headers,
            latency=self.latency,
            rng=self._rng,
            count=self._count,
        )
        self._tasks = [asyncio.create_task(monitor.health_loop(), name="vlm-health")]
        if control is not None:
            self._tasks.append(asyncio.create_task(monitor.metrics_loop(), name="vlm-metrics"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
        self._pool = None
        self._transport = None

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
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("VLMClient.start() was not called")
        return self._transport

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("VLMClient.start() was not called")
        return self._session

    # --- fleet ---------------------------------------------------------------------------

    async def resolve_model(self) -> str:
        """``settings.model``, else the model the replicas list (checked as the start-up
        check of :mod:`workers.preflight` does)."""
        if self.settings.model is not None:
            return self.settings.model
        from narrator.workers.preflight import probe_fleet

        self._model = (await probe_fleet(self.settings, self.session)).model
        return self._model

    def spare_capacity(self) -> int:
        """How many more requests the replicas in rotation would take right now."""
        return self.pool.spare_capacity()

    async def wait_for_capacity(self) -> int:
        """Wait until the fleet would take another request; the spare capacity then."""
        return await self.pool.wait_for_capacity()

    def limit_trace(self, replica: str | None = None) -> list[dict[str, Any]]:
        """The in-flight limit readings (at_s, replica, limit, running, waiting, in_flight,
        source), oldest first."""
        return self.trace.samples(replica)

    def timeout_for(self, kind: str) -> float:
        """The request timeout now in force for requests of ``kind`` (a schema name)."""
        return self.transport.timeout_for(kind)

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
        self._model = self._model or request.model
        self._count(f"{module}:requests", 1)
        images = request.images
        bodies = Bodies(request)
        attempts = 0
        length_retried = corrected = False
        try:
            while True:
                reply, used = await self.transport.send(bodies, request)
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
                    doubled = min(bodies.max_tokens * 2, max(MAX_TOKENS_CAP, bodies.max_tokens))
                    if doubled > bodies.max_tokens:
                        self._count(f"{module}:length_retries", 1)
                        log.info("vlm_answer_cut_retrying", module=module, max_tokens=doubled)
                        bodies.set_max_tokens(doubled)
                        continue
                if reply.finish_reason == "length":
                    problem = f"answer cut at max_tokens={bodies.max_tokens} ({problem})"
                    raise BadAnswerError(f"{module}: {problem}; raise max_tokens")
                if corrected:
                    raise BadAnswerError(
                        f"{module}: answer unusable after a corrective retry: {problem} "
                        f"(answer starts {reply.content[:160]!r})"
                    )
                corrected = True
                self._count(f"{module}:corrective_retries", 1)
                log.info("vlm_answer_unusable_correcting", module=module, reason=problem)
                bodies.correct(reply.content, problem)
        except BadAnswerError:
            self._count(f"{module}:failures:bad_answer", 1)
            raise
        except VLMRequestRejectedError:
            self._count(f"{module}:failures:rejected", 1)
            raise
        except VLMAccessError:
            self._count(f"{module}:failures:access", 1)
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
