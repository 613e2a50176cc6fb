"""Settings of one simulated VLM replica: capacity model and fault modes (pure).

:class:`SimConfig` is fixed at start; :func:`apply_updates` returns a copy changed by the flat
JSON body of ``POST /admin/faults`` (or ``Fleet.set_faults``), validating every key and value,
so a typo in a test fails loudly instead of silently doing nothing.

Rates are probabilities in [0, 1] drawn per request from the replica's own random sequence
(seeded by ``SimConfig.seed``); switches are booleans applied to every request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "narrator-sim-vlm"


@dataclass(frozen=True)
class FaultConfig:
    latency_s: float = 0.0  # fixed extra delay before a request is queued (holds no slot)
    error_rate: float = 0.0  # answer error_status instead of a completion
    error_status: int = 500
    hang_rate: float = 0.0  # never answer; the request ends only when the client gives up
    think_tags: bool = False  # <think>...</think> before the answer
    prose: bool = False  # a sentence before and after the JSON
    fences: bool = False  # ```json fences around the JSON
    wrong_shape_rate: float = 0.0  # valid JSON object that is not an instance of the schema
    garbage_rate: float = 0.0  # text that holds no JSON at all
    truncate_rate: float = 0.0  # JSON cut in half, finish_reason "length"
    dead: bool = False  # every connection to chat/health/models is dropped without an answer
    ignore_schema: bool = False  # JSON of the schema's shape plus a property it forbids
    # Refuse response_format json_schema like llama.cpp's server (HTTP 500 "Input should be
    # 'text' or 'json_object'") or, with status 400, like other OpenAI-compatible servers.
    refuse_json_schema: bool = False
    refuse_json_schema_status: int = 500


@dataclass(frozen=True)
class SimConfig:
    model: str = DEFAULT_MODEL
    slots: int = 8  # concurrent requests served; the rest wait in a FIFO queue
    base_s: float = 0.0  # service time = (base_s + per_image_s * images
    per_image_s: float = 0.0  #   + per_output_token_s * completion_tokens)
    per_output_token_s: float = 0.0  #   * (1 + occupancy_slowdown * busy share of the slots)
    occupancy_slowdown: float = 0.0  # 0 = service time independent of how full the replica is
    image_tokens: int = 256  # prompt tokens counted per image
    max_model_len: int = 32768  # max_tokens or a prompt above this is rejected with 400
    seed: int = 0  # seed of the per-replica fault sequence
    api_key: str | None = None  # like vllm --api-key: /v1/* needs "Authorization: Bearer KEY"
    # Publish the slot count as ``simvlm_max_num_seqs`` on /metrics. Real vLLM publishes no
    # capacity figure, so this is off unless a test asks for it.
    publish_capacity: bool = False
    faults: FaultConfig = field(default_factory=FaultConfig)


_RATES = {"error_rate", "hang_rate", "wrong_shape_rate", "garbage_rate", "truncate_rate"}
_CAPACITY_FIELDS = {
    "slots",
    "base_s",
    "per_image_s",
    "per_output_token_s",
    "occupancy_slowdown",
    "image_tokens",
}


def _checked(name: str, value: Any, template: Any) -> Any:
    if isinstance(template, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(template, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if name == "slots" and value < 1:
            raise ValueError("slots must be at least 1")
        if name in ("error_status", "refuse_json_schema_status") and not 400 <= value <= 599:
            raise ValueError("error_status must be an HTTP error status (400..599)")
        if value < 0:
            raise ValueError(f"{name} must not be negative")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (name in _RATES and value > 1):
        raise ValueError(f"{name} must be in [0, 1]" if name in _RATES else f"{name} < 0")
    return float(value)


def apply_updates(config: SimConfig, updates: Mapping[str, Any]) -> SimConfig:
    """A copy of ``config`` with fault and capacity fields replaced; ValueError on bad input."""
    fault_names = {f.name for f in dataclasses.fields(FaultConfig)}
    unknown = set(updates) - fault_names - _CAPACITY_FIELDS
    if unknown:
        known = sorted(fault_names | _CAPACITY_FIELDS)
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {known}")
    faults = config.faults
    fault_changes = {
        k: _checked(k, v, getattr(faults, k)) for k, v in updates.items() if k in fault_names
    }
    capacity_changes = {
        k: _checked(k, v, getattr(config, k)) for k, v in updates.items() if k in _CAPACITY_FIELDS
    }
    return dataclasses.replace(
        config, faults=dataclasses.replace(faults, **fault_changes), **capacity_changes
    )


def describe(config: SimConfig) -> dict[str, Any]:
    """The settings as a JSON-ready dict (faults nested)."""
    return dataclasses.asdict(config)
