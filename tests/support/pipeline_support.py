"""Helpers for end-to-end tests: run the real pipeline (producer, rq workers, writer) against
a real Redis and the simulated VLM, and read an annotated dataset back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from narrator.common.config import NarratorConfig, load_config
from narrator.common.state_dir import STATE_DIR_NAME


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of the dataset at ``root``; narrator's own state directory
    (``ROOT/.narrator/``: embedded Redis, logs, staging) is not part of the dataset."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != STATE_DIR_NAME
    }


def output_hashes(root: Path) -> dict[str, str]:
    """Hashes of what a run may change: the data shards and meta/info.json."""
    return {
        rel: digest
        for rel, digest in file_hashes(root).items()
        if rel.startswith("data/") or rel == "meta/info.json"
    }


def pipeline_config(
    urls: list[str], *, redis_url: str | None, state_dir: Path, workers: int = 2, **extra: Any
) -> NarratorConfig:
    # No hedging: a hedge is an extra request by design, and several tests count requests
    # exactly (tests/workers/test_hedging.py tests the mechanism).
    cli: dict[str, Any] = {
        "vlm": {
            "urls": urls,
            "timeout_s": 20,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.5,
            "hedge": False,
        },
        "workers": workers,
        "redis_url": redis_url,
        "state_dir": str(state_dir),
        "job_retries": 1,
    }
    cli.update(extra)
    return load_config(cli, env={})


def read_shards(root: Path) -> Iterator[tuple[str, Any]]:
    for shard in sorted((root / "data").rglob("*.parquet")):
        yield str(shard.relative_to(root)), pq.read_table(shard)


def info_json(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "meta" / "info.json").read_text())
    return data
