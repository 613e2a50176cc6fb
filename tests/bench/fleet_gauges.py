"""Gauges read over HTTP while a run goes: each replica's own ``/metrics`` (what vLLM reports:
``vllm:num_requests_running`` / ``_waiting``) and, where a worker serves Prometheus metrics,
what narrator's client says of each replica (its in-flight requests and, once the client has
an adaptive limit, ``narrator_vlm_in_flight_limit``).

* :func:`parse_prometheus` - the samples of a Prometheus text page (pure).
* :class:`GaugeSampler` - a thread that reads every source each ``interval_s`` and keeps
  ``(time, source, replica, values)`` rows; a source that does not answer is skipped for that
  round (a benchmark never fails on its own instrumentation).

Times are ``time.monotonic()``; the replica of a client-side series is its ``replica`` label
(the base URL the client was given).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

_LINE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)"
)
_LABEL = re.compile(r'(?P<key>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')

SERVER_RUNNING = "vllm:num_requests_running"
SERVER_WAITING = "vllm:num_requests_waiting"
CLIENT_LIMIT = "narrator_vlm_in_flight_limit"
CLIENT_IN_FLIGHT = "narrator_vlm_in_flight"


@dataclass(frozen=True)
class PromSample:
    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str) -> list[PromSample]:
    """Every sample line of a Prometheus text exposition (comments and bad values skipped)."""
    out: list[PromSample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
        out.append(PromSample(match["name"], labels, value))
    return out


def server_gauges(text: str) -> dict[str, float]:
    """``running`` and ``waiting`` of one replica's /metrics page (summed over engines)."""
    totals: dict[str, float] = {}
    for sample in parse_prometheus(text):
        if sample.name == SERVER_RUNNING:
            totals["running"] = totals.get("running", 0.0) + sample.value
        elif sample.name == SERVER_WAITING:
            totals["waiting"] = totals.get("waiting", 0.0) + sample.value
    return totals


def client_gauges(text: str) -> dict[str, dict[str, float]]:
    """Per replica label: ``limit`` and ``in_flight`` from a worker's metrics page."""
    out: dict[str, dict[str, float]] = {}
    for sample in parse_prometheus(text):
        key = {CLIENT_LIMIT: "limit", CLIENT_IN_FLIGHT: "in_flight"}.get(sample.name)
        replica = sample.labels.get("replica")
        if key is None or replica is None:
            continue
        values = out.setdefault(replica, {})
        values[key] = values.get(key, 0.0) + sample.value
    return out


def client_outcomes(text: str) -> dict[tuple[str, str], float]:
    """Chat attempts per (replica label, outcome) from ``narrator_vlm_requests_total``."""
    out: dict[tuple[str, str], float] = {}
    for sample in parse_prometheus(text):
        if sample.name == "narrator_vlm_requests_total" and "replica" in sample.labels:
            key = (sample.labels["replica"], sample.labels.get("outcome", ""))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def client_requests(text: str) -> dict[str, float]:
    """Chat attempts per replica label from ``narrator_vlm_requests_total``."""
    out: dict[str, float] = {}
    for (replica, _outcome), value in client_outcomes(text).items():
        out[replica] = out.get(replica, 0.0) + value
    return out


@dataclass(frozen=True)
class GaugeRow:
    at_s: float  # time.monotonic()
    source: str  # "server" or the name of a worker (pod)
    replica: str  # the replica's base URL
    values: dict[str, float]


def fetch_text(url: str, timeout_s: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8", "replace"))
    except OSError:
        return None


class GaugeSampler:
    """Reads the replicas' and the workers' gauges in a thread; use as a context manager."""

    def __init__(
        self,
        replica_urls: Sequence[str],
        client_endpoints: dict[str, str] | None = None,
        interval_s: float = 0.5,
    ) -> None:
        self.replica_urls = list(replica_urls)
        self.client_endpoints = dict(client_endpoints or {})  # pod name -> metrics URL
        self.interval_s = interval_s
        self.rows: list[GaugeRow] = []
        self.last_client_pages: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-gauges", daemon=True)

    def __enter__(self) -> GaugeSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.read_once()
            self._stop.wait(self.interval_s)

    def read_once(self) -> None:
        for url in self.replica_urls:
            text = fetch_text(f"{url}/metrics")
            if text is not None:
                self.rows.append(GaugeRow(time.monotonic(), "server", url, server_gauges(text)))
        for pod, endpoint in self.client_endpoints.items():
            text = fetch_text(endpoint)
            if text is None:
                continue
            self.last_client_pages[pod] = text
            now = time.monotonic()
            for replica, values in client_gauges(text).items():
                self.rows.append(GaugeRow(now, pod, replica, values))
