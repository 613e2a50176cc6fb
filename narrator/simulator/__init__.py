"""A simulated OpenAI-compatible VLM server, owned by narrator, for tests, demos and benchmarks.

It validates requests the way vLLM does, answers JSON-schema requests with deterministic,
plausible instances of the schema, models a replica's capacity (slots and a FIFO queue), and
injects faults (errors, hangs, wrapped or broken JSON, dead replicas) on demand.
"""

from narrator.simulator.config import DEFAULT_MODEL, FaultConfig, SimConfig
from narrator.simulator.fleet import AsyncFleet, Fleet, main, start_fleet, start_fleet_async
from narrator.simulator.server import SimServer

__all__ = [
    "DEFAULT_MODEL",
    "AsyncFleet",
    "FaultConfig",
    "Fleet",
    "SimConfig",
    "SimServer",
    "main",
    "start_fleet",
    "start_fleet_async",
]
