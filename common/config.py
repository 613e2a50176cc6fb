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
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from narrator.common import config_surface as surface
from narrator.common.config_surface import (
    ANNOTATE,
    CONFIG_COMMANDS,
    ENQUEUE,
    RETRY_FAILED,
    STATUS,
    WORKER,
    WRITER,
    Setting,
    Surface,
)
from narrator.common.errors import ConfigError
from narrator.common.modules import MODULES, selection_problem

QUESTION_TYPES: tuple[str, ...] = ("bbox", "keypoint", "count", "attribute", "spatial")
# What vLLM's chat-completion API accepts for ``reasoning_effort`` (ChatCompletionRequest).
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
REDIS_SCHEMES: tuple[str, ...] = ("redis", "rediss", "unix")

RUN_COMMANDS = frozenset({ANNOTATE, ENQUEUE})  # what shapes a run
VLM_COMMANDS = frozenset({ANNOTATE, ENQUEUE, WORKER})  # what talks to the VLM


class _Model(BaseModel):
    # Finite numbers only: "inf" or "nan" from a flag is a mistake, never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FrameSettings(_Model):
    max_pixels: int = Field(
        default=448 * 448,
        ge=64 * 64,
        le=4096 * 4096,
        description="pixel budget per image sent to the VLM, in pixels (width x height)",
    )
    jpeg_quality: int = Field(
        default=85, ge=10, le=100, description="JPEG quality of the images sent, 10-100"
    )


class PlanSettings(_Model):
    """The plan module (and the camera the interjections module looks through).

    Two ways to show an episode: contact sheets (``contact_sheets``, the default: frames
    sampled at ``frames_per_second`` tiled into timestamped JPEG grids, at most
    ``max_frames_per_prompt`` frames per request) or one captioned image per frame (frames
    sampled at ``sample_hz``, at most ``frames_per_request`` per request)."""

    camera: Annotated[
        str | None,
        Surface(flag="--camera", metavar="KEY", default_text="the first non-depth video camera"),
    ] = Field(
        default=None,
        description="camera the plan and interjections modules show the VLM: an "
        "observation.images.* key or its last part (top)",
    )
    contact_sheets: bool = Field(
        default=True,
        description="show the plan module's frames as timestamped contact sheets (tiled "
        "JPEG grids); --no-contact-sheets sends one image per frame",
    )
    frames_per_second: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="rate at which frames are sampled for the contact sheets, in Hz (<= 60)",
    )
    max_frames_per_prompt: int = Field(
        default=60,
        ge=2,
        le=400,
        description="most contact-sheet frames per subtask request, 2-400 (longer episodes "
        "are cut into windows at the same rate and stitched)",
    )
    contact_sheet_columns: int = Field(
        default=5, ge=1, le=10, description="tiles per row of a contact sheet, 1-10"
    )
    contact_sheet_frames_per_sheet: int = Field(
        default=20, ge=1, le=100, description="tiles per contact sheet, 1-100"
    )
    contact_sheet_frame_width_px: int = Field(
        default=224, ge=64, le=1024, description="width of one contact-sheet tile, in pixels"
    )
    sample_hz: Annotated[float, Surface(flag="--plan-sample-hz")] = Field(
        default=1.0,
        gt=0,
        le=60,
        description="rate at which frames are sampled without contact sheets, in Hz (<= 60)",
    )
    frames_per_request: int = Field(
        default=16,
        ge=2,
        le=64,
        description="frames per subtask request without contact sheets, 2-64",
    )
    subtask_describe_first: bool = Field(
        default=True,
        description="before segmenting, ask the VLM to describe what the robot does (one "
        "more request per window; the description is given to the segmentation request)",
    )
    subtask_seeded_relabel: bool = Field(
        default=False,
        description="after segmenting, relabel each subtask from the previous, current and "
        "next segments' frames with its first label as a prior (one more request per "
        "subtask; boundaries stay)",
    )
    subtask_relabel_frames: int = Field(
        default=5, ge=1, le=20, description="frames shown per segment when relabelling, 1-20"
    )
    min_subtask_seconds: float = Field(
        default=1.0, ge=0, description="shortest subtask span, in seconds"
    )
    max_subtasks: int = Field(
        default=8, ge=1, le=100, description="most subtasks per episode, 1-100"
    )
    emit_plan: Annotated[bool, Surface(flag="--plan")] = Field(
        default=True,
        description="write plan rows (at every subtask start and every interjection); "
        "--no-plan writes none",
    )
    emit_memory: Annotated[bool, Surface(flag="--memory")] = Field(
        default=True,
        description="write memory rows (at every subtask boundary after the first); "
        "--no-memory writes none",
    )
    task_aug_count: int = Field(
        default=10,
        ge=0,
        le=50,
        description="task rephrasings per episode, 0-50 (after the effective task itself)",
    )
    task_aug_axes: bool = Field(
        default=False,
        description="rephrase the task along five axes (synonyms, omit arm, omit "
        "orientation, omit grasp method, combined omissions) instead of task_aug_count "
        "free rephrasings",
    )
    task_aug_synonym_paraphrase: int = Field(
        default=3, ge=0, le=10, description="axes mode: synonym paraphrases, 0-10"
    )
    task_aug_omit_arm: int = Field(
        default=3, ge=0, le=10, description="axes mode: variants without the arm, 0-10"
    )
    task_aug_omit_orientation: int = Field(
        default=2, ge=0, le=10, description="axes mode: variants without the orientation, 0-10"
    )
    task_aug_omit_grasp_method: int = Field(
        default=2, ge=0, le=10, description="axes mode: variants without the grasp, 0-10"
    )
    task_aug_combined_omissions: int = Field(
        default=2, ge=0, le=10, description="axes mode: variants omitting two of those, 0-10"
    )
    derive_task_from_video: Literal["off", "if_short", "always"] = Field(
        default="if_short",
        description="ask the VLM what the episode shows and use that as the task in prompts "
        "and as the first task_aug row: off, if_short (the dataset task is a placeholder or "
        "shorter than derive_task_min_words) or always; meta/tasks.parquet is never changed",
    )
    derive_task_min_words: int = Field(
        default=3, ge=1, le=20, description="a dataset task with fewer words counts as short"
    )

    def task_aug_axis_counts(self) -> dict[str, int]:
        """Axis name -> how many variants the axes mode asks for, in axis order."""
        return {
            "synonym_paraphrase": self.task_aug_synonym_paraphrase,
            "omit_arm": self.task_aug_omit_arm,
            "omit_orientation": self.task_aug_omit_orientation,
            "omit_grasp_method": self.task_aug_omit_grasp_method,
            "combined_omissions": self.task_aug_combined_omissions,
        }


class InterjectionSettings(_Model):
    max_interjections: int = Field(
        default=1, ge=0, le=100, description="most interjections per episode, 0-100"
    )
    interjection_min_s: float = Field(
        default=1.0,
        ge=0,
        description="earliest time of an interjection in an episode, in seconds",
    )
    context_frames: Annotated[int, Surface(flag="--interjection-context-frames")] = Field(
        default=4, ge=1, le=16, description="frames shown per interjection request, 1-16"
    )


class VQASettings(_Model):
    vqa_hz: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="VQA ticks per second of episode, per camera, in Hz (<= 60; ticks snap "
        "to stored frames)",
    )
    question_types: tuple[str, ...] = Field(
        default=QUESTION_TYPES,
        description="comma-separated VQA question types, a subset of " + ",".join(QUESTION_TYPES),
    )
    vqa_cameras: Annotated[
        tuple[str, ...], Surface(metavar="KEY,...", default_text="every non-depth camera")
    ] = Field(
        default=(),
        description="comma-separated cameras VQA asks about: observation.images.* keys or "
        "their last parts",
    )
    vqa_frames_per_tick: int = Field(
        default=1,
        ge=1,
        le=30,
        description="consecutive frames asked about per VQA tick, from the tick's frame on "
        "(upstream's K), 1-30",
    )

    @field_validator("question_types")
    @classmethod
    def _known_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - set(QUESTION_TYPES)
        if unknown or not v:
            raise ValueError(f"question types must be a non-empty subset of {QUESTION_TYPES}")
        return v

    @field_validator("vqa_cameras")
    @classmethod
    def _distinct_cameras(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"cameras {list(v)} name one camera twice")
        return v


class AnnotationSettings(_Model):
    """Everything that changes what the VLM is asked (hashed into module hashes)."""

    cli_group: ClassVar[str] = "annotation (what is asked; changing it recomputes)"
    cli_commands: ClassVar[frozenset[str]] = RUN_COMMANDS

    modules: tuple[str, ...] = Field(
        default=MODULES,
        description=f"comma-separated modules to run: a subset of {','.join(MODULES)}",
    )
    seed: int = Field(default=0, description="seed of the per-episode choices and requests")
    temperature: float = Field(
        default=0.2, ge=0, le=2, description="sampling temperature of the VLM, 0-2"
    )
    max_tokens: int = Field(
        default=1024, ge=16, le=131072, description="most tokens per VLM answer, in tokens"
    )
    reasoning_effort: Annotated[ReasoningEffort | None, Surface(default_text="unset: not sent")] = (
        Field(
            default=None,
            description="reasoning budget hint sent as the chat request's reasoning_effort "
            "(vLLM takes it for reasoning models; older vLLM only low, medium, high)",
        )
    )
    frames: FrameSettings = FrameSettings()
    plan: PlanSettings = PlanSettings()
    interjections: InterjectionSettings = InterjectionSettings()
    vqa: VQASettings = VQASettings()
    chat_template_kwargs: Annotated[dict[str, Any] | None, Surface(metavar="JSON")] = Field(
        default=None,
        description="JSON object passed to the chat template, e.g. '{\"enable_thinking\": false}'",
    )

    @field_validator("modules")
    @classmethod
    def _known_modules(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError(f"give at least one module: {', '.join(MODULES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"modules {list(v)} name one module twice")
        problem = selection_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


def parse_episode_ranges(parts: tuple[str, ...] | list[str]) -> list[int]:
    """``["3", "7", "10-20"]`` -> the sorted distinct episode indices; ValueError says which
    part is not an index or an inclusive ``A-B`` range (pure)."""
    found: set[int] = set()
    for raw in parts:
        part = raw.strip()
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ValueError(
                f"{part!r} is not an episode index or range; write e.g. 3,7,10-20"
            ) from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a range of episode indices (write LOW-HIGH, >= 0)")
        if last - first >= 10_000_000:
            raise ValueError(f"{part!r} names more than 10 million episodes")
        found.update(range(first, last + 1))
    if not found:
        raise ValueError("name at least one episode, e.g. 3,7,10-20")
    return sorted(found)


def format_episode_ranges(episodes: list[int] | tuple[int, ...]) -> tuple[str, ...]:
    """Sorted episode indices as merged ranges: ``[3, 4, 5, 7]`` -> ``("3-5", "7")`` (pure)."""
    out: list[str] = []
    ordered = sorted(set(episodes))
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[start], ordered[end]
        out.append(str(first) if first == last else f"{first}-{last}")
        start = end + 1
    return tuple(out)


def normalize_base_url(url: str) -> str:
    """The one spelling of a replica's base URL: the server root, without ``/v1``.

    ``http://h:p``, ``http://h:p/``, ``http://h:p/v1`` and ``http://h:p/v1/`` are the same
    replica (OpenAI clients and LeRobot write the ``/v1`` form); a path prefix before ``/v1``
    (a reverse proxy) is kept: ``http://proxy/vlm/v1`` -> ``http://proxy/vlm``. The client
    appends ``/v1/chat/completions`` and ``/v1/models`` to it, and ``/health`` and ``/metrics``
    (vLLM serves those at the root). Raises ValueError for anything that is not an
    ``http(s)://host[:port][/path]`` URL.
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"VLM URL {text!r} is not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"VLM URL {text!r} must look like http://host:port/v1 (scheme http or https)"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"VLM URL {text!r} must not have a query or fragment")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))


class VLMSettings(_Model):
    cli_prefix: ClassVar[str] = "vlm-"
    cli_group: ClassVar[str] = "VLM server and requests"
    cli_commands: ClassVar[frozenset[str]] = VLM_COMMANDS

    urls: Annotated[
        tuple[str, ...],
        Surface(flag="--vlm-url", env="NARRATOR_VLM_URLS", repeat=True, metavar="URL"),
    ] = Field(
        default=(),
        description="base URL of an OpenAI-compatible server, e.g. http://host:8000/v1 (with "
        "or without /v1; repeat the flag for several replicas; the variable takes a "
        "comma-separated list)",
    )
    model: Annotated[
        str | None,
        Surface(flag="--model", env="NARRATOR_MODEL", default_text="the one the server lists"),
    ] = Field(default=None, description="model name to ask for")
    api_key: Annotated[
        SecretStr | None,
        Surface(env="NARRATOR_VLM_API_KEY", no_flag="a secret: argv is visible to every user"),
    ] = Field(default=None, description="API key sent as 'Authorization: Bearer KEY'")
    timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="longest time one request may take, in seconds (the adaptive timeout "
        "never exceeds it)",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="connection timeout per request, in seconds"
    )
    max_in_flight_per_replica: Annotated[
        int | None,
        Surface(flag="--max-in-flight-per-replica", default_text="adaptive, from the replica"),
    ] = Field(
        default=None,
        ge=1,
        description="fixed number of concurrent requests per replica and worker process "
        "(unset: adapted to the replica's vllm:num_requests_running/waiting)",
    )
    initial_in_flight_per_replica: int = Field(
        default=16, ge=1, description="first in-flight limit of the adaptive control, requests"
    )
    in_flight_ceiling_per_replica: int = Field(
        default=1024, ge=1, description="highest in-flight limit the adaptive control sets"
    )
    queue_target: float = Field(
        default=1.25,
        ge=1.0,
        le=4.0,
        description="the adaptive control aims at running + waiting = this x what the replica "
        "runs at once (a ratio)",
    )
    metrics_interval_s: float = Field(
        default=1.0, gt=0, description="how often each replica's /metrics is read, in seconds"
    )
    max_attempts: int = Field(
        default=6, ge=1, le=100, description="attempts per request, across replicas"
    )
    backoff_base_s: float = Field(
        default=0.5, ge=0, description="first retry delay, in seconds (doubles per attempt)"
    )
    backoff_max_s: float = Field(default=30.0, ge=0, description="longest retry delay, in seconds")
    health_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="how often each replica's /health is checked (and a replica out of "
        "rotation probed), in seconds",
    )
    timeout_p99_multiple: float = Field(
        default=6.0,
        ge=0,
        description="adaptive request timeout: this multiple of the fleet's p99 latency for "
        "the same kind of request, between min_timeout_s and timeout_s (0: always timeout_s)",
    )
    min_timeout_s: float = Field(
        default=5.0, gt=0, description="shortest adaptive request timeout, in seconds"
    )
    hedge: bool = Field(
        default=True,
        description="re-send a slow request on a dependency chain (the plan and "
        "interjections modules' requests) to another replica and take the first answer",
    )
    hedge_min_delay_s: float = Field(
        default=1.0,
        ge=0,
        description="earliest hedge, in seconds (otherwise 1.5 x the p95 latency of the same "
        "kind of request)",
    )
    stats_window_s: float = Field(
        default=60.0, gt=0, description="window of the per-replica failure rates, in seconds"
    )
    eject_failure_rate: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="a replica whose share of timeouts/errors exceeds this (and is much above "
        "its peers') leaves rotation until a probe request succeeds (a ratio)",
    )

    @field_validator("urls", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("urls")
    @classmethod
    def _normalize(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """One spelling per replica (see :func:`normalize_base_url`); the same replica given
        twice (say with and without ``/v1``) is one replica."""
        return tuple(dict.fromkeys(normalize_base_url(u) for u in v if u.strip()))


class ServeSettings(_Model):
    """``--serve``: vLLM replicas that ``narrator annotate`` starts itself (narrator.local.serve).

    Replica ``i`` gets the GPU group ``i % groups``, where the visible GPUs are cut into
    ``len(gpus) // gpus_per_replica`` disjoint groups of ``gpus_per_replica`` devices; more
    replicas than groups share them (see docs/DECISIONS.md, "--serve packing")."""

    cli_group: ClassVar[str] = "one machine: --serve starts the vLLM replicas"
    cli_commands: ClassVar[frozenset[str]] = frozenset({ANNOTATE})

    command: Annotated[
        str | None,
        Surface(flag="--serve", metavar="COMMAND", default_text="use the --vlm-url servers"),
    ] = Field(
        default=None,
        description="start vLLM replicas with this command, e.g. 'vllm serve MODEL [ARGS]' "
        "(no shell; narrator adds --port and --host)",
    )
    replicas: Annotated[
        int | None,
        Surface(flag="--replicas", default_text="visible GPUs / --gpus-per-replica, at least 1"),
    ] = Field(default=None, ge=1, le=1024, description="replicas --serve starts")
    port: Annotated[int, Surface(flag="--serve-port", metavar="PORT")] = Field(
        default=8000,
        ge=1,
        le=65535,
        description="TCP port of the first --serve replica; replica i gets PORT+i",
    )
    gpus_per_replica: Annotated[int, Surface(flag="--gpus-per-replica")] = Field(
        default=1,
        ge=1,
        le=64,
        description="GPUs each --serve replica sees (CUDA_VISIBLE_DEVICES=a,b; set the "
        "matching --tensor-parallel-size in the --serve command)",
    )
    ready_timeout_s: Annotated[float, Surface(flag="--serve-ready-timeout")] = Field(
        default=1800.0,
        gt=0,
        description="longest wait for every --serve replica to answer /health, in seconds "
        "(a large model takes minutes to load)",
    )


class HubSettings(_Model):
    """The Hugging Face Hub round trip of ``narrator annotate`` (narrator.hub)."""

    cli_group: ClassVar[str] = "Hugging Face Hub (download before, upload after the run)"
    cli_commands: ClassVar[frozenset[str]] = frozenset({ANNOTATE})

    repo_id: Annotated[str | None, Surface(metavar="USER/NAME")] = Field(
        default=None,
        description="Hub dataset to annotate: downloaded into ROOT (or into "
        "$HF_LEROBOT_HOME/USER/NAME without ROOT) unless a dataset is there already; also "
        "where --push-to-hub uploads by default",
    )
    revision: Annotated[str | None, Surface(metavar="REV", default_text="main")] = Field(
        default=None, description="branch, tag or commit of --repo-id to download"
    )
    push_to_hub: Annotated[bool, Surface(value_path=("hub", "push_repo_id"), metavar="REPO")] = (
        Field(
            default=False,
            description="after the commit, upload the annotated dataset (never narrator's state "
            "or staging) to REPO, or without REPO to --repo-id; refused when the dataset fails "
            "validation",
        )
    )
    push_repo_id: Annotated[str | None, Surface(metavar="USER/NAME")] = Field(
        default=None,
        description="dataset repo --push-to-hub uploads to, when not --repo-id (upstream's "
        "new_repo_id)",
    )
    private: bool = Field(
        default=False,
        description="create the --push-to-hub repo private (an existing repo keeps its visibility)",
    )
    commit_message: Annotated[
        str | None,
        Surface(
            metavar="TEXT",
            default_text="'Add language annotations (MODULES) by narrator with MODEL'",
        ),
    ] = Field(default=None, description="message of the --push-to-hub commit")

    @field_validator("repo_id", "push_repo_id")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        parts = v.split("/")
        if len(parts) != 2 or not all(parts) or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a Hub repo id; write it as USER/NAME")
        return v


_RUNS_WORKERS = frozenset({ANNOTATE, WORKER})  # commands that start worker processes


class NarratorConfig(_Model):
    cli_group: ClassVar[str] = "run, connection and processes"
    cli_commands: ClassVar[frozenset[str]] = RUN_COMMANDS

    redis_url: Annotated[
        SecretStr | None,
        Surface(
            commands=frozenset(CONFIG_COMMANDS),
            metavar="URL",
            default_text="annotate: its own embedded Redis",
        ),
    ] = Field(
        default=None,
        description="Redis URL: redis://[user:password@]host:port/db, rediss:// (TLS) or unix://PATH",
    )
    vlm: VLMSettings = VLMSettings()
    annotation: AnnotationSettings = AnnotationSettings()
    serve: ServeSettings = ServeSettings()
    hub: HubSettings = HubSettings()
    only_episodes: Annotated[
        tuple[str, ...], Surface(metavar="3,7,10-20", default_text="every episode")
    ] = Field(
        default=(),
        description="annotate only these episodes (indices and inclusive ranges); the other "
        "episodes keep their rows as they are",
    )
    workers: Annotated[int, Surface(commands=frozenset({ANNOTATE, WORKER}))] = Field(
        default=2, ge=1, le=256, description="worker processes"
    )
    # A worker process holds its jobs as coroutines on one loop and takes more while the VLM
    # fleet has spare capacity (workers/intake.py): jobs_per_worker is the floor it keeps
    # while work is queued (jobs spend part of their time on the CPU), max_jobs_per_worker
    # the ceiling. A job keeps ~1.75 requests in flight, so filling 4 x 128 slots (x1.25,
    # the adaptive limit's target) takes some 350 jobs across the processes.
    jobs_per_worker: Annotated[int, Surface(commands=frozenset({ANNOTATE, WORKER}))] = Field(
        default=16,
        ge=1,
        le=64,
        description="jobs one worker process holds at least while work is queued, 1-64 (it "
        "takes more while the VLM fleet has room, up to max_jobs_per_worker)",
    )
    max_jobs_per_worker: Annotated[int, Surface(commands=frozenset({ANNOTATE, WORKER}))] = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="most jobs one worker process holds at once (a cap on its memory; "
        "beyond jobs_per_worker it takes jobs only while the VLM fleet has spare capacity)",
    )
    stop_grace_s: Annotated[float, Surface(commands=frozenset({WORKER}))] = Field(
        default=3.0,
        ge=0,
        le=86_400,
        description="seconds a worker stopped by SIGTERM/SIGINT lets its running jobs finish "
        "before it hands the rest back to the front of the queue (no retry used)",
    )
    frame_processes: Annotated[int | None, Surface(commands=_RUNS_WORKERS)] = Field(
        default=None,
        ge=0,
        description="processes per worker process that decode, resize and JPEG-encode frames "
        "(default: one per CPU core it may use; 0: a thread of the worker instead)",
    )
    job_timeout_s: int = Field(
        default=1800, ge=10, description="longest time one job may run, in seconds"
    )
    job_retries: int = Field(
        default=3, ge=0, le=100, description="retries of a failed job before it counts as failed"
    )
    failed_items_threshold: Annotated[float, Surface(commands=RUN_COMMANDS)] = Field(
        default=0.05,
        ge=0,
        le=1,
        description="largest fraction of a module's items that may fail (0.05: one in "
        "twenty) before the run is held back from committing",
    )
    allow_failed_items: Annotated[bool, Surface(commands=RUN_COMMANDS)] = Field(
        default=False,
        description="commit even when more items failed than failed_items_threshold allows, "
        "and stage a module result whose items all failed",
    )
    prompt_dir: Annotated[Path | None, Surface(metavar="DIR")] = Field(
        default=None,
        description="directory of prompt files replacing the shipped ones of the same name",
    )
    state_dir: Annotated[
        Path | None,
        Surface(
            commands=frozenset({ANNOTATE, ENQUEUE, STATUS, RETRY_FAILED}),
            metavar="DIR",
            default_text="inside the dataset",
        ),
    ] = Field(default=None, description="where annotate keeps its Redis data, staging and logs")
    staging_dir: Annotated[
        Path | None, Surface(metavar="DIR", default_text="STATE_DIR/staging")
    ] = Field(default=None, description="where finalized shards wait until the run commits")
    metrics_port: Annotated[int | None, Surface(commands=frozenset({WORKER, WRITER}))] = Field(
        default=None, ge=0, le=65535, description="serve Prometheus metrics on this TCP port"
    )
    progress_interval_s: Annotated[float, Surface(commands=frozenset({ANNOTATE}))] = Field(
        default=10.0,
        gt=0,
        description="seconds between progress lines when stderr is not a terminal",
    )
    log_level: Annotated[str, Surface(commands=frozenset(CONFIG_COMMANDS), metavar="LEVEL")] = (
        Field(default="info", description="log level: " + ", ".join(LOG_LEVELS))
    )
    log_format: Annotated[
        Literal["json", "console"] | None,
        Surface(
            commands=frozenset(CONFIG_COMMANDS),
            default_text="console on a terminal, else json",
        ),
    ] = Field(default=None, description="log line format")

    @field_validator("only_episodes", mode="before")
    @classmethod
    def _split_episodes(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [part for part in v.split(",") if part.strip()]
        if isinstance(v, list | tuple):
            return [str(part) for part in v]  # YAML may give integers
        return v

    @field_validator("only_episodes")
    @classmethod
    def _episode_ranges(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """The canonical spelling: sorted, merged ranges (``7,3,4-5`` -> ``3-5,7``)."""
        if not v:
            return v
        return format_episode_ranges(parse_episode_ranges(v))

    def episode_selection(self) -> frozenset[int] | None:
        """The episodes ``only_episodes`` names, or None for every episode."""
        return frozenset(parse_episode_ranges(self.only_episodes)) if self.only_episodes else None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v.get_secret_value())
            port = parts.port  # raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a URL Redis understands ({exc})") from None
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and port is not None and not 0 < port < 65536:
            raise ValueError("the port must be 1-65535")
        return v

    @field_validator("max_jobs_per_worker")
    @classmethod
    def _at_least_the_floor(cls, v: int, info: ValidationInfo) -> int:
        floor = info.data.get("jobs_per_worker")
        if floor is not None and v < floor:
            raise ValueError(f"must be at least jobs_per_worker ({floor})")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower()
            if v not in LOG_LEVELS:
                raise ValueError(f"use one of {', '.join(LOG_LEVELS)}")
        return v

    def redis_url_value(self) -> str | None:
        return self.redis_url.get_secret_value() if self.redis_url else None


@cache
def config_settings() -> tuple[Setting, ...]:
    """Every leaf setting of :class:`NarratorConfig` with its flag and env names."""
    return surface.settings_of(NarratorConfig)


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Map ``NARRATOR_*`` environment variables onto the config's nested dict shape."""
    return surface.env_overrides(config_settings(), env)


def child_env(config: NarratorConfig, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with its config variables replaced by ``config``: a child process that loads
    its config from this environment (no flags, no YAML) gets ``config`` back."""
    return surface.child_environment(config_settings(), config, base)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    cli: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    yaml_path: Path | None = None,
) -> NarratorConfig:
    """Build the process's config; raises :class:`ConfigError` with every problem listed.

    ``cli`` uses the nested shape of :class:`NarratorConfig` and holds only flags the user
    gave (None values are ignored). Each problem names the setting's flag and variable.
    """
    merged: dict[str, Any] = {}
    if yaml_path is not None:
        import yaml  # only when a file is given: keeps `narrator --help` light

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
        problems = "; ".join(_describe(err["loc"], err["msg"]) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _describe(loc: tuple[str | int, ...], message: str) -> str:
    where = ".".join(str(p) for p in loc)
    setting = surface.setting_for(config_settings(), loc)
    if setting is not None:
        where = f"{setting.names()} ({setting.dotted})"
    return f"{where}: {message.removeprefix('Value error, ')}"


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
