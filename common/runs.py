"""The run record: what the producer registers in Redis and every role reads back.

A run is identified by the dataset (absolute root + fingerprint), so running the same command
again resumes it. What changes answers (settings, prompt texts, model) goes into per-module
hashes; the *generation* is a hash of all module hashes (and of the episode selection of an
``--only-episodes`` run) and names one complete set of results to commit. A changed prompt
changes one module hash and the generation; only that module's jobs (and the modules that
need it, per :mod:`common.modules`) are recomputed.

Selections: results are kept per (module, episode) whatever the selection, so a run over
another selection reuses the answers of the episodes both name, and its commit rewrites only
the shards of its own episodes, keeping every other episode's rows (those of an earlier
selection among them). The same selection again is the same generation: it resumes.

Invariants:
* Workers and the writer take the dataset root, settings, prompts and model from the run
  record only, never from their own flags: a job payload names a run, not a path.
* Prompt *texts* are stored in the run, so every worker uses the prompts the producer saw.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aredis

from narrator.common import keys
from narrator.common.config import AnnotationSettings, parse_episode_ranges
from narrator.common.errors import PermanentError
from narrator.common.job_specs import CommitPolicy, JobOptions
from narrator.common.modules import SPECS
from narrator.common.prompts import PromptSet
from narrator.common.state_dir import STATE_DIR_NAME


def compute_run_id(root: Path, fingerprint: str) -> str:
    text = f"{Path(root).resolve()}\0{fingerprint}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _settings_json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def compute_module_hashes(
    settings: AnnotationSettings, prompts: PromptSet, model: str
) -> dict[str, str]:
    """One hash per enabled module over everything that changes its answers: the shared
    sampling settings and model, the module's own settings section and prompts, and the
    hashes of the modules it needs."""
    common_part = {
        "seed": settings.seed,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
        "frames": settings.frames.model_dump(),
        "chat_template_kwargs": settings.chat_template_kwargs,
        "model": model,
    }
    if settings.reasoning_effort is not None:
        # Only when set, so runs recorded before the setting existed keep their hashes.
        common_part["reasoning_effort"] = settings.reasoning_effort
    sections = settings.model_dump(mode="json")
    hashes: dict[str, str] = {}
    for spec in SPECS:
        if spec.name not in settings.modules:
            continue
        digest = hashlib.sha256()
        digest.update(spec.name.encode())
        digest.update(_settings_json(common_part))
        digest.update(_settings_json(sections.get(spec.name)))
        digest.update(prompts.module_hash(spec.name).encode())
        for need in spec.needs:
            digest.update(hashes[need].encode())
        hashes[spec.name] = digest.hexdigest()[:16]
    return hashes


def generation_of(module_hashes: dict[str, str], selection: tuple[str, ...] = ()) -> str:
    """The hash naming one set of results to commit; ``selection`` is the canonical
    ``--only-episodes`` spelling (empty for every episode, which keeps older generations)."""
    if not selection:
        return hashlib.sha256(_settings_json(module_hashes)).hexdigest()[:16]
    payload = {"module_hashes": module_hashes, "only_episodes": list(selection)}
    return hashlib.sha256(_settings_json(payload)).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    root: Path
    fingerprint: str
    model: str
    settings: AnnotationSettings
    prompts: PromptSet
    module_hashes: dict[str, str]
    generation: str
    staging_dir: Path
    total_files: int
    total_episodes: int
    total_jobs: int
    created_at: float
    job_options: JobOptions = field(default_factory=JobOptions)
    commit_policy: CommitPolicy = field(default_factory=CommitPolicy)
    selection: tuple[str, ...] = ()  # --only-episodes, canonical ranges; () = every episode

    def selected_episodes(self) -> frozenset[int] | None:
        """The episodes of an ``--only-episodes`` run, None for every episode."""
        return frozenset(parse_episode_ranges(self.selection)) if self.selection else None

    def to_redis(self) -> dict[Any, Any]:
        return {
            "run_id": self.run_id,
            "root": str(self.root),
            "fingerprint": self.fingerprint,
            "model": self.model,
            "settings": self.settings.model_dump_json(),
            "prompts": orjson.dumps(
                {"texts": self.prompts.texts, "sources": self.prompts.sources}
            ).decode(),
            "prompt_hashes": orjson.dumps(self.prompts.hashes()).decode(),
            "module_hashes": orjson.dumps(self.module_hashes).decode(),
            "generation": self.generation,
            "staging_dir": str(self.staging_dir),
            "total_files": str(self.total_files),
            "total_episodes": str(self.total_episodes),
            "total_jobs": str(self.total_jobs),
            "created_at": repr(self.created_at),
            "job_timeout_s": str(self.job_options.job_timeout_s),
            "job_retries": str(self.job_options.job_retries),
            "retry_intervals_s": orjson.dumps(list(self.job_options.retry_intervals_s)).decode(),
            "failed_items_threshold": repr(self.commit_policy.failed_items_threshold),
            "allow_failed_items": "1" if self.commit_policy.allow_failed_items else "0",
            "selection": ",".join(self.selection),
            "updated_at": repr(time.time()),
        }

    @classmethod
    def from_redis(cls, raw: Mapping[Any, Any]) -> RunRecord:
        data = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        prompts = orjson.loads(data["prompts"])
        return cls(
            run_id=data["run_id"],
            root=Path(data["root"]),
            fingerprint=data["fingerprint"],
            model=data["model"],
            settings=AnnotationSettings.model_validate_json(data["settings"]),
            prompts=PromptSet(texts=prompts["texts"], sources=prompts["sources"]),
            module_hashes=orjson.loads(data["module_hashes"]),
            generation=data["generation"],
            staging_dir=Path(data["staging_dir"]),
            total_files=int(data["total_files"]),
            total_episodes=int(data["total_episodes"]),
            total_jobs=int(data["total_jobs"]),
            created_at=float(data["created_at"]),
            job_options=JobOptions(
                job_timeout_s=int(data.get("job_timeout_s", 1800)),
                job_retries=int(data.get("job_retries", 3)),
                retry_intervals_s=tuple(orjson.loads(data.get("retry_intervals_s", "[5,30,120]"))),
            ),
            commit_policy=CommitPolicy(
                failed_items_threshold=float(data.get("failed_items_threshold", 0.05)),
                allow_failed_items=data.get("allow_failed_items") == "1",
            ),
            selection=tuple(p for p in data.get("selection", "").split(",") if p),
        )


class UnknownRunError(PermanentError):
    pass


def load_run(conn: redis.Redis, run_id: str) -> RunRecord:
    raw = conn.hgetall(keys.run(run_id))
    if not raw:
        raise UnknownRunError(f"no run {run_id!r} in Redis; list runs with `narrator status`")
    return RunRecord.from_redis(raw)


async def load_run_async(conn: aredis.Redis, run_id: str) -> RunRecord:
    raw = await conn.hgetall(keys.run(run_id))
    if not raw:
        raise UnknownRunError(f"no run {run_id!r} in Redis; list runs with `narrator status`")
    return RunRecord.from_redis(raw)


def load_run_files(conn: redis.Redis, run_id: str) -> dict[str, list[int]]:
    """data file -> its episodes, as the producer registered them."""
    raw = conn.hgetall(keys.run_files(run_id))
    out: dict[str, list[int]] = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        out[name] = [int(e) for e in orjson.loads(v)["episodes"]]
    return dict(sorted(out.items()))


def text(value: Any) -> str | None:
    """Redis replies as ``str`` whether the client decodes responses or not."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def default_state_dir(root: Path) -> Path:
    """``ROOT/.narrator``: inside the dataset, so on its filesystem even when the root is a
    mount point (see :mod:`common.state_dir`)."""
    return Path(root).resolve() / STATE_DIR_NAME
