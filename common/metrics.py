"""Prometheus metrics of the workers and the writer (one registry per process).

Metric names are part of the operations contract (dashboards and alerts use them); change
them only together with ``deploy/``. ``start_metrics_server`` is a no-op for port None.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

VLM_REQUESTS = Counter(
    "narrator_vlm_requests_total",
    "Chat completion attempts by replica, module and outcome",
    ["replica", "module", "outcome"],
)
VLM_LATENCY = Histogram(
    "narrator_vlm_request_seconds",
    "Latency of chat completion attempts",
    ["replica", "module"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
)
VLM_TOKENS = Counter(
    "narrator_vlm_tokens_total", "Tokens reported by the server", ["module", "kind"]
)
VLM_IMAGES = Counter("narrator_vlm_images_total", "Images sent to the VLM", ["module"])
VLM_IN_FLIGHT = Gauge(
    "narrator_vlm_in_flight",
    "Requests in flight per replica",
    ["replica"],
    multiprocess_mode="livesum",
)
VLM_IN_FLIGHT_LIMIT = Gauge(
    "narrator_vlm_in_flight_limit",
    "In-flight limit per replica set by the adaptive control (summed over worker processes)",
    ["replica"],
    multiprocess_mode="livesum",
)
VLM_SERVER_REQUESTS = Gauge(
    "narrator_vlm_server_requests",
    "The replica's own vllm:num_requests_running / _waiting as last read (state label)",
    ["replica", "state"],
    multiprocess_mode="livemax",
)
WORKER_JOBS = Gauge(
    "narrator_worker_jobs",
    "Episode jobs the worker processes hold, by state (starting: no VLM request sent yet; "
    "busy: a request in progress; between: between two requests)",
    ["state"],
    multiprocess_mode="livesum",
)
VLM_HEDGES = Counter(
    "narrator_vlm_hedges_total",
    "Requests re-sent to a second replica because the first was slow, by which answered",
    ["module", "winner"],
)
REPLICA_EJECTIONS = Counter(
    "narrator_vlm_replica_ejections_total",
    "Times a replica was taken out of rotation, by reason",
    ["replica", "reason"],
)
VLM_FORMAT_FALLBACKS = Counter(
    "narrator_vlm_json_object_fallbacks_total",
    "Replicas that refused response_format json_schema and are asked with json_object",
    ["replica"],
)
REPLICA_HEALTHY = Gauge(
    "narrator_vlm_replica_healthy",
    "1 if the replica is in rotation (minimum over worker processes)",
    ["replica"],
    multiprocess_mode="livemin",
)
EPISODES_DONE = Counter(
    "narrator_episodes_done_total", "Episodes whose module job finished", ["module"]
)
JOBS_FAILED = Counter(
    "narrator_jobs_failed_total", "Jobs that failed, by error kind", ["module", "kind"]
)
ITEM_FAILURES = Counter(
    "narrator_item_failures_total", "Items recorded as failed inside a job", ["module", "kind"]
)
SHARDS_WRITTEN = Counter("narrator_shards_written_total", "Data shards finalized by the writer")
SHARD_WRITE_SECONDS = Histogram(
    "narrator_shard_write_seconds",
    "Time to validate and rewrite one shard",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
VALIDATION_ERRORS = Counter(
    "narrator_validation_errors_total", "Contract errors found by the writer", ["rule"]
)


def start_metrics_server(port: int | None, addr: str = "0.0.0.0") -> None:
    if port is not None:
        start_http_server(port, addr=addr)


def start_multiprocess_metrics_server(port: int | None, directory: str) -> None:
    """Serve the metrics of every child process that writes to ``directory``.

    prometheus_client's multiprocess mode: the children must be *started* (spawned, not
    forked) with ``PROMETHEUS_MULTIPROC_DIR=directory`` in their environment, so each one
    records its samples in files there; this process sums them on every scrape.
    """
    if port is None:
        return
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    start_http_server(port, addr="0.0.0.0", registry=registry)
