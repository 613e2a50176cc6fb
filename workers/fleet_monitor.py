"""The background loops of one VLM client: health checks, probes, and the in-flight limits.

* Every ``health_interval_s``: ``GET /health`` of each replica (in or out of rotation); a
  replica out of rotation for its failure rate is instead sent a tiny real chat request once
  its cool-down is over (it answers ``/health`` while it fails requests, so only an answer
  counts).
* Every ``metrics_interval_s`` (adaptive limits only): ``GET /metrics`` of each replica, read
  ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``, and let the replica's
  :class:`~narrator.workers.inflight.InFlightController` set its new limit. Each reading is
  appended to a bounded :class:`LimitTrace` (time, replica, limit, running, waiting, in
  flight, source), mirrored in the Prometheus gauges ``narrator_vlm_in_flight_limit`` and
  ``narrator_vlm_server_requests``, and a change of limit is logged as
  ``vlm_in_flight_limit``: a benchmark can read the trace from any of the three.

Invariant: the loops never raise (a failed reading is a missing reading); they end only when
cancelled by :meth:`VLMClient.close`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import orjson

from narrator.common.config import VLMSettings
from narrator.common.logging import get_logger
from narrator.common.metrics import VLM_SERVER_REQUESTS
from narrator.workers.inflight import parse_vllm_gauges
from narrator.workers.replica_stats import LatencyBook
from narrator.workers.replicas import Replica, ReplicaPool

log = get_logger("narrator.workers.fleet_monitor")

TRACE_LIMIT = 20_000
PROBE_PROMPT = 'Reply with the JSON object {"ok": true} and nothing else.'


@dataclass(frozen=True)
class LimitSample:
    at_s: float  # monotonic seconds
    replica: str
    limit: int
    running: float | None  # None: the reading had no gauges
    waiting: float | None
    in_flight: int
    source: str


class LimitTrace:
    """The last ``TRACE_LIMIT`` readings of every replica, oldest first."""

    def __init__(self, limit: int = TRACE_LIMIT) -> None:
        self._samples: deque[LimitSample] = deque(maxlen=limit)

    def add(self, sample: LimitSample) -> None:
        self._samples.append(sample)

    def samples(self, replica: str | None = None) -> list[dict[str, Any]]:
        return [asdict(s) for s in self._samples if replica is None or s.replica == replica]


class FleetMonitor:
    def __init__(
        self,
        *,
        pool: ReplicaPool,
        session: aiohttp.ClientSession,
        settings: VLMSettings,
        headers: dict[str, str],
        latency: LatencyBook,
        model: Callable[[], str | None],
        trace: LimitTrace,
    ) -> None:
        self.pool = pool
        self.session = session
        self.settings = settings
        self.headers = headers
        self.latency = latency
        self.model = model
        self.trace = trace

    # --- health and probes ---------------------------------------------------------------

    async def health_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=min(self.settings.health_interval_s, self.settings.connect_timeout_s)
        )
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            due = {id(r) for r in self.pool.probe_due(time.monotonic())}
            await asyncio.gather(
                *(
                    self._probe(r) if id(r) in due else self._check(r, timeout)
                    for r in self.pool.replicas
                )
            )

    async def _check(self, replica: Replica, limits: aiohttp.ClientTimeout) -> None:
        try:
            async with self.session.get(
                f"{replica.url}/health", headers=self.headers, timeout=limits
            ) as response:
                await response.read()
                ok, reason = response.status == 200, f"GET /health answered {response.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ok, reason = False, f"GET /health failed: {type(exc).__name__}"
        await self.pool.set_healthy(replica, ok, reason)

    def probe_timeout_s(self) -> float:
        pooled = self.latency.pooled_quantile(0.99)
        s = self.settings
        if pooled is None or s.timeout_p99_multiple <= 0:
            return s.timeout_s
        return min(s.timeout_s, max(s.min_timeout_s, s.timeout_p99_multiple * pooled))

    async def _probe(self, replica: Replica) -> None:
        """One tiny chat request to a replica out for its failure rate."""
        model = self.model()
        started = time.monotonic()
        if model is None:
            await self.pool.probe_result(replica, False, "no model known yet", started)
            return
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROBE_PROMPT}],
            "max_tokens": 16,
            "temperature": 0.0,
        }
        timeout_s = self.probe_timeout_s()
        try:
            async with self.session.post(
                f"{replica.url}/v1/chat/completions",
                data=orjson.dumps(body),
                headers={**self.headers, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                await response.read()
                ok = response.status == 200
                reason = f"HTTP {response.status} in {time.monotonic() - started:.2f} s"
        except TimeoutError:
            ok, reason = False, f"no answer within {timeout_s:.1f} s"
        except (aiohttp.ClientError, OSError) as exc:
            ok, reason = False, f"{type(exc).__name__}"
        await self.pool.probe_result(replica, ok, reason, time.monotonic())

    # --- in-flight limits -----------------------------------------------------------------

    async def metrics_loop(self) -> None:
        interval = self.settings.metrics_interval_s
        timeout = aiohttp.ClientTimeout(
            total=max(1.0, min(interval, self.settings.connect_timeout_s))
        )
        while True:
            await asyncio.gather(*(self.read_metrics(r, timeout) for r in self.pool.replicas))
            await asyncio.sleep(interval)

    async def read_metrics(self, replica: Replica, limits: aiohttp.ClientTimeout) -> None:
        controller = replica.controller
        if controller is None:
            return
        try:
            async with self.session.get(
                f"{replica.url}/metrics", headers=self.headers, timeout=limits
            ) as response:
                text = (await response.read()).decode("utf-8", "replace")
                gauges = parse_vllm_gauges(text) if response.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError):
            gauges = None
        previous = replica.limit
        peak = replica.peak_in_flight
        replica.peak_in_flight = replica.in_flight
        if gauges is None:
            controller.on_gauges_missing()
            limit = controller.limit
        else:
            limit = controller.on_gauges(gauges, peak)
            VLM_SERVER_REQUESTS.labels(replica.label, "running").set(gauges.running)
            VLM_SERVER_REQUESTS.labels(replica.label, "waiting").set(gauges.waiting)
        await self.pool.set_limit(replica, limit)
        self.trace.add(
            LimitSample(
                at_s=time.monotonic(),
                replica=replica.label,
                limit=limit,
                running=None if gauges is None else gauges.running,
                waiting=None if gauges is None else gauges.waiting,
                in_flight=replica.in_flight,
                source=controller.source,
            )
        )
        if limit != previous:
            log.info(
                "vlm_in_flight_limit",
                replica=replica.label,
                limit=limit,
                previous=previous,
                running=None if gauges is None else gauges.running,
                waiting=None if gauges is None else gauges.waiting,
                in_flight=replica.in_flight,
                peak_in_flight=peak,
                source=controller.source,
            )
