"""Run N simulated VLM replicas: in a test's event loop, in a background thread, or as a CLI.

* :func:`start_fleet_async` / :class:`AsyncFleet` - replicas served by the caller's running
  event loop (async tests, ``narrator demo``).
* :func:`start_fleet` / :class:`Fleet` - the same replicas on a private event loop in a daemon
  thread, driven from synchronous code (sync tests, benchmarks).
* :func:`main` - ``python -m narrator.simulator --replicas N --port P`` serves N replicas on
  consecutive ports until SIGINT/SIGTERM and writes one URL per line to stdout. ``--faults
  JSON`` applies to every replica, ``--replica-faults I=JSON`` (repeatable) to replica I only
  (e.g. ``1={"hang_rate": 0.5}``: replica 1 never answers half its requests but still answers
  /health); ``--api-key`` works like ``vllm serve --api-key``; ``--publish-capacity`` adds
  the slot count to /metrics; ``--occupancy-slowdown`` turns on the occupancy term of the
  latency model.

Invariants: replicas listen on 127.0.0.1 unless told otherwise; port 0 picks a free port, and
:meth:`AsyncFleet.start_replica` after :meth:`AsyncFleet.stop_replica` reuses the replica's
port, so clients see the same URL die and come back. Stopping a replica drops its open
connections and in-flight requests like a crashed process; its counters and settings survive.
Replica ``i`` uses fault seed ``config.seed + i``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

import orjson

from narrator.common.logging import configure_logging, get_logger
from narrator.simulator.config import SimConfig, apply_updates
from narrator.simulator.replica import SimReplica
from narrator.simulator.server import SimServer

log = get_logger("narrator.simulator.fleet")
T = TypeVar("T")


class AsyncFleet:
    """N replicas served by the running event loop. Use ``async with`` or call close()."""

    def __init__(self, replicas: Sequence[SimReplica]) -> None:
        self.replicas = list(replicas)

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    @property
    def servers(self) -> list[SimServer]:
        return [replica.server for replica in self.replicas]

    async def stop_replica(self, index: int) -> None:
        await self.replicas[index].stop()
        log.info("simvlm_replica_stopped", replica=index, url=self.replicas[index].url)

    async def start_replica(self, index: int) -> None:
        await self.replicas[index].start()
        log.info("simvlm_replica_started", replica=index, url=self.replicas[index].url)

    def set_faults(self, index: int, **updates: Any) -> SimConfig:
        """Change fault/capacity settings of replica ``index`` (call on the fleet's loop)."""
        return self.replicas[index].server.set_faults(updates)

    def clear_faults(self, index: int | None = None) -> None:
        for i in self._indices(index):
            self.replicas[i].server.clear_faults()

    def stats(self, index: int) -> dict[str, Any]:
        return self.replicas[index].server.snapshot()

    def timeline(self, index: int) -> list[dict[str, Any]]:
        return [entry.as_json() for entry in self.replicas[index].server.stats.timeline]

    def reset(self, index: int | None = None) -> None:
        for i in self._indices(index):
            self.replicas[i].server.reset_stats()

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.stop()

    async def __aenter__(self) -> AsyncFleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _indices(self, index: int | None) -> range | list[int]:
        return range(len(self.replicas)) if index is None else [index]


def _configs(n: int, config: SimConfig | Sequence[SimConfig] | None) -> list[SimConfig]:
    if n < 1:
        raise ValueError("a fleet needs at least one replica")
    if config is None or isinstance(config, SimConfig):
        base = config or SimConfig()
        return [dataclasses.replace(base, seed=base.seed + i) for i in range(n)]
    if len(config) != n:
        raise ValueError(f"got {len(config)} replica configs for {n} replicas")
    return list(config)


async def start_fleet_async(
    n: int,
    config: SimConfig | Sequence[SimConfig] | None = None,
    *,
    host: str = "127.0.0.1",
    ports: Sequence[int] | None = None,
) -> AsyncFleet:
    """Start ``n`` replicas on the running loop (ports 0 = free ports)."""
    chosen = list(ports) if ports is not None else [0] * n
    if len(chosen) != n:
        raise ValueError(f"got {len(chosen)} ports for {n} replicas")
    fleet = AsyncFleet(
        [
            SimReplica(SimServer(c), host, p)
            for c, p in zip(_configs(n, config), chosen, strict=True)
        ]
    )
    try:
        for replica in fleet.replicas:
            await replica.start()
    except BaseException:
        await fleet.close()
        raise
    return fleet


class Fleet:
    """An :class:`AsyncFleet` on a private event loop in a daemon thread (sync API)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._loop = loop
        self._thread = thread
        self._fleet: AsyncFleet | None = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout_s)

    @property
    def inner(self) -> AsyncFleet:
        if self._fleet is None:
            raise RuntimeError("the fleet is closed")
        return self._fleet

    @property
    def urls(self) -> list[str]:
        return self.inner.urls

    def stop_replica(self, index: int) -> None:
        self._call(self.inner.stop_replica(index))

    def start_replica(self, index: int) -> None:
        self._call(self.inner.start_replica(index))

    def set_faults(self, index: int, **updates: Any) -> SimConfig:
        async def apply() -> SimConfig:
            return self.inner.set_faults(index, **updates)

        return self._call(apply())

    def clear_faults(self, index: int | None = None) -> None:
        async def apply() -> None:
            self.inner.clear_faults(index)

        self._call(apply())

    def stats(self, index: int) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            return self.inner.stats(index)

        return self._call(read())

    def timeline(self, index: int) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            return self.inner.timeline(index)

        return self._call(read())

    def reset(self, index: int | None = None) -> None:
        async def apply() -> None:
            self.inner.reset(index)

        self._call(apply())

    def close(self) -> None:
        if self._fleet is not None:
            self._call(self._fleet.close())
            self._fleet = None
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_fleet(
    n: int,
    config: SimConfig | Sequence[SimConfig] | None = None,
    *,
    host: str = "127.0.0.1",
    ports: Sequence[int] | None = None,
) -> Fleet:
    """Start ``n`` replicas on a background thread's event loop; close() stops them."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="simvlm-fleet", daemon=True)
    thread.start()
    started.wait(10)
    fleet = Fleet(loop, thread)
    try:
        fleet._fleet = fleet._call(start_fleet_async(n, config, host=host, ports=ports))
    except BaseException:
        fleet.close()
        raise
    return fleet


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m narrator.simulator",
        description="Serve simulated OpenAI-compatible VLM replicas on consecutive ports.",
    )
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--port", type=int, default=8000, help="first port; 0 = free ports")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default=SimConfig.model)
    parser.add_argument("--slots", type=int, default=SimConfig.slots)
    parser.add_argument("--base-s", type=float, default=SimConfig.base_s)
    parser.add_argument("--per-image-s", type=float, default=SimConfig.per_image_s)
    parser.add_argument("--per-output-token-s", type=float, default=SimConfig.per_output_token_s)
    parser.add_argument(
        "--occupancy-slowdown",
        type=float,
        default=SimConfig.occupancy_slowdown,
        help="service time x (1 + K * busy share of the slots); 0 = off",
    )
    parser.add_argument("--max-model-len", type=int, default=SimConfig.max_model_len)
    parser.add_argument("--seed", type=int, default=SimConfig.seed)
    parser.add_argument(
        "--api-key", default=None, help="like vllm serve --api-key: /v1 routes need the key"
    )
    parser.add_argument(
        "--publish-capacity",
        action="store_true",
        help="publish simvlm_max_num_seqs (the slot count) on /metrics; vLLM publishes none",
    )
    parser.add_argument("--faults", default="{}", help='JSON object, e.g. {"think_tags": true}')
    parser.add_argument(
        "--replica-faults",
        action="append",
        default=[],
        metavar="I=JSON",
        help='settings of replica I only, e.g. 1={"hang_rate": 0.5} (repeatable)',
    )
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def replica_configs(
    base: SimConfig, replicas: int, shared: Mapping[str, Any], per_replica: Sequence[str]
) -> list[SimConfig]:
    """One config per replica: ``base`` with seed + i, ``shared`` settings, then each
    ``I=JSON`` of ``per_replica`` on replica I (ValueError on a bad index or setting)."""
    configs = [apply_updates(c, shared) for c in _configs(replicas, base)]
    for spec in per_replica:
        index_text, sep, body = spec.partition("=")
        if not sep or not index_text.strip().isdigit():
            raise ValueError(f"--replica-faults wants I=JSON, got {spec!r}")
        index = int(index_text)
        if index >= replicas:
            raise ValueError(f"--replica-faults {index}: there are only {replicas} replica(s)")
        updates = orjson.loads(body)
        if not isinstance(updates, dict):
            raise ValueError(f"--replica-faults {index}: the settings must be a JSON object")
        configs[index] = apply_updates(configs[index], updates)
    return configs


async def _serve(args: argparse.Namespace) -> None:
    config = SimConfig(
        model=args.model,
        slots=args.slots,
        base_s=args.base_s,
        per_image_s=args.per_image_s,
        per_output_token_s=args.per_output_token_s,
        occupancy_slowdown=args.occupancy_slowdown,
        max_model_len=args.max_model_len,
        seed=args.seed,
        api_key=args.api_key,
        publish_capacity=args.publish_capacity,
    )
    configs = replica_configs(config, args.replicas, orjson.loads(args.faults), args.replica_faults)
    ports = [0] * args.replicas if args.port == 0 else [args.port + i for i in range(args.replicas)]
    fleet = await start_fleet_async(args.replicas, configs, host=args.host, ports=ports)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for index, url in enumerate(fleet.urls):
        log.info("simvlm_replica_serving", replica=index, url=url, model=config.model)
        sys.stdout.write(url + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await fleet.close()
        log.info("simvlm_fleet_stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_logging(args.log_level)
    if args.replicas < 1:
        sys.stderr.write("--replicas must be at least 1\n")
        return 2
    try:
        asyncio.run(_serve(args))
    except (ValueError, OSError, orjson.JSONDecodeError) as exc:
        sys.stderr.write(f"simvlm: {exc}\n")
        return 2
    return 0
