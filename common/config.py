"""The one typed, validated configuration object of a narrator process.

Built in exactly one place, :func:`load_config`, from (lowest to highest precedence):
defaults < optional YAML file < environment variables (``NARRATOR_*``) < CLI flags.

Invariants:
* Units are in the names (``timeout_s``, ``vqa_hz``, ``max_pixels``).
* ``AnnotationSettings`` is what changes results: the producer stores it in the run record and
  workers read it from there, so every worker of a run uses the same settings.
* Secrets (API key, Redis password) never appear in ``repr`` or logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from narrator.common.errors import ConfigError

QUESTION_TYPES: tuple[str, ...] = ("bbox", "keypoint", "count", "attribute", "spatial")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrameSettings(_Model):
    max_pixels: int = Field(default=448 * 448, ge=64 * 64, description="pixel budget per image")
    jpeg_quality: int = Field(default=85, ge=10, le=100)


class PlanSettings(_Model):
    sample_hz: float = Field(default=1.0, gt=0)
    frames_per_request: int = Field(default=16, ge=2, le=64)
    min_subtask_seconds: float = Field(default=1.0, ge=0)
    max_subtasks: int = Field(default=8, ge=1)
    task_aug_count: int = Field(default=2, ge=0, le=10)


class InterjectionSettings(_Model):
    max_interjections: int = Field(default=1, ge=0)
    interjection_min_s: float = Field(default=1.0, ge=0)
    context_frames: int = Field(default=4, ge=1, le=16)


class VQASettings(_Model):
    vqa_hz: float = Field(default=0.5, gt=0)
    question_types: tuple[str, ...] = QUESTION_TYPES

    @field_validator("question_types")
    @classmethod
    def _known_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - set(QUESTION_TYPES)
        if unknown or not v:
            raise ValueError(f"question types must be a non-empty subset of {QUESTION_TYPES}")
        return v


class AnnotationSettings(_Model):
    """Everything that changes what the VLM is asked (hashed into module hashes)."""

    modules: tuple[str, ...] = ("plan", "interjections", "vqa")
    seed: int = 0
    temperature: float = Field(default=0.2, ge=0)
    max_tokens: int = Field(default=1024, ge=16)
    frames: FrameSettings = FrameSettings()
    plan: PlanSettings = PlanSettings()
    interjections: InterjectionSettings = InterjectionSettings()
    vqa: VQASettings = VQASettings()
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("modules")
    @classmethod
    def _known_modules(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - {"plan", "interjections", "vqa"}
        if unknown:
            raise ValueError(f"unknown modules {sorted(unknown)}; use plan, interjections, vqa")
        if "interjections" in v and "plan" not in v:
            raise ValueError("the interjections module needs the plan module")
        return v


class VLMSettings(_Model):
    urls: tuple[str, ...] = ()
    model: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_in_flight_per_replica: int | None = Field(default=None, ge=1)
    max_attempts: int = Field(default=6, ge=1)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    health_interval_s: float = Field(default=5.0, gt=0)

    @field_validator("urls")
    @classmethod
    def _strip(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(u.rstrip("/") for u in v)


class NarratorConfig(_Model):
    redis_url: SecretStr | None = None
    vlm: VLMSettings = VLMSettings()
    annotation: AnnotationSettings = AnnotationSettings()
    workers: int = Field(default=2, ge=1, description="worker processes")
    # 16: a job keeps about 1.75 requests in flight on average (its requests are partly
    # sequential), so 2 processes x 16 jobs keep ~56 requests at the replicas, enough to fill
    # ~45 slots; 2 x 4 left 16 slots only 90% busy (tests/bench/bench_saturation.py).
    jobs_per_worker: int = Field(
        default=16, ge=1, le=64, description="jobs one worker process runs at once"
    )
    frame_processes: int | None = Field(
        default=None,
        ge=0,
        description="processes per worker process that decode, resize and JPEG-encode frames "
        "(default: one per CPU core this process may use; 0: a thread of the worker instead)",
    )
    job_timeout_s: int = Field(default=1800, ge=10)
    job_retries: int = Field(default=3, ge=0)
    prompt_dir: Path | None = None
    state_dir: Path | None = None
    staging_dir: Path | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: str = "info"
    log_format: Literal["json", "console"] | None = None

    def redis_url_value(self) -> str | None:
        return self.redis_url.get_secret_value() if self.redis_url else None


# Environment variables with a fixed meaning; anything else of the form
# NARRATOR_SECTION__FIELD (double underscore) reaches nested fields generically.
_ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "NARRATOR_REDIS_URL": ("redis_url",),
    "NARRATOR_VLM_URLS": ("vlm", "urls"),
    "NARRATOR_MODEL": ("vlm", "model"),
    "NARRATOR_VLM_API_KEY": ("vlm", "api_key"),
    "NARRATOR_WORKERS": ("workers",),
    "NARRATOR_JOBS_PER_WORKER": ("jobs_per_worker",),
    "NARRATOR_JOB_TIMEOUT_S": ("job_timeout_s",),
    "NARRATOR_FRAME_PROCESSES": ("frame_processes",),
    "NARRATOR_PROMPT_DIR": ("prompt_dir",),
    "NARRATOR_STATE_DIR": ("state_dir",),
    "NARRATOR_STAGING_DIR": ("staging_dir",),
    "NARRATOR_METRICS_PORT": ("metrics_port",),
    "NARRATOR_LOG_LEVEL": ("log_level",),
    "NARRATOR_LOG_FORMAT": ("log_format",),
}
_LIST_FIELDS = {("vlm", "urls"), ("annotation", "modules"), ("annotation", "vqa", "question_types")}


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Map ``NARRATOR_*`` environment variables onto the config's nested dict shape."""
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith("NARRATOR_") or raw == "":
            continue
        if name in _ENV_ALIASES:
            path = _ENV_ALIASES[name]
        elif "__" in name:
            path = tuple(p.lower() for p in name.removeprefix("NARRATOR_").split("__"))
        else:
            continue
        value: Any = raw
        if path in _LIST_FIELDS:
            value = [v.strip() for v in raw.split(",") if v.strip()]
        _set_path(out, path, value)
    return out


def load_config(
    cli: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    yaml_path: Path | None = None,
) -> NarratorConfig:
    """Build the process's config; raises :class:`ConfigError` with every problem listed.

    ``cli`` uses the nested shape of :class:`NarratorConfig` and holds only flags the user
    gave (None values are ignored).
    """
    merged: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {yaml_path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {yaml_path} must hold a mapping at top level")
        merged = _deep_merge(merged, loaded)
    merged = _deep_merge(merged, env_overrides(os.environ if env is None else env))
    merged = _deep_merge(merged, _drop_none(cli or {}))
    try:
        return NarratorConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
