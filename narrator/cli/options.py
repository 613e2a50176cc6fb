"""Command-line flags shared by the subcommands, and their mapping onto the config object.

This is the one place where argparse results become a :class:`~common.config.NarratorConfig`
(through :func:`common.config.load_config`, which also reads ``NARRATOR_*`` variables and an
optional YAML file).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from narrator.common.config import NarratorConfig, load_config
from narrator.common.errors import ConfigError


def add_connection_flags(p: argparse.ArgumentParser, *, vlm: bool = True) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (flags and env override it)")
    p.add_argument("--redis-url", help="redis://[user:password@]host:port/db or rediss://...")
    if vlm:
        p.add_argument(
            "--vlm-url",
            action="append",
            dest="vlm_urls",
            metavar="URL",
            help="base URL of an OpenAI-compatible server (repeat for several replicas)",
        )
        p.add_argument("--model", help="model name (default: the one the server lists)")
        p.add_argument("--vlm-timeout-s", type=float, help="per-request timeout")
        p.add_argument(
            "--max-in-flight-per-replica", type=int, help="concurrent requests per replica"
        )
    p.add_argument("--log-level", help="debug, info, warning, error")
    p.add_argument("--log-format", choices=["json", "console"])


def add_annotation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("annotation")
    g.add_argument("--modules", help="comma-separated subset of plan,interjections,vqa")
    g.add_argument("--seed", type=int)
    g.add_argument("--prompt-dir", type=Path, help="directory of prompt files overriding ours")
    g.add_argument("--vqa-hz", type=float)
    g.add_argument("--max-interjections", type=int)
    g.add_argument("--interjection-min-s", type=float)
    g.add_argument("--max-subtasks", type=int)
    g.add_argument("--min-subtask-seconds", type=float)
    g.add_argument("--task-aug-count", type=int)
    g.add_argument("--max-pixels", type=int, help="pixel budget per image sent to the VLM")
    g.add_argument("--jpeg-quality", type=int)
    g.add_argument(
        "--chat-template-kwargs",
        help="JSON object passed to the chat template, e.g. '{\"enable_thinking\": false}'",
    )
    g.add_argument("--job-timeout-s", type=int)
    g.add_argument("--state-dir", type=Path, help="embedded Redis and staged shards")


def config_from_args(args: argparse.Namespace) -> NarratorConfig:
    a: dict[str, Any] = vars(args)
    chat_kwargs = a.get("chat_template_kwargs")
    if chat_kwargs is not None:
        try:
            chat_kwargs = orjson.loads(chat_kwargs)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"--chat-template-kwargs is not a JSON object: {exc}") from exc
    modules = a.get("modules")
    cli = {
        "redis_url": a.get("redis_url"),
        "workers": a.get("workers"),
        "jobs_per_worker": a.get("jobs_per_worker"),
        "job_timeout_s": a.get("job_timeout_s"),
        "prompt_dir": a.get("prompt_dir"),
        "state_dir": a.get("state_dir"),
        "metrics_port": a.get("metrics_port"),
        "log_level": a.get("log_level"),
        "log_format": a.get("log_format"),
        "vlm": {
            "urls": a.get("vlm_urls"),
            "model": a.get("model"),
            "timeout_s": a.get("vlm_timeout_s"),
            "max_in_flight_per_replica": a.get("max_in_flight_per_replica"),
        },
        "annotation": {
            "modules": [m.strip() for m in modules.split(",") if m.strip()] if modules else None,
            "seed": a.get("seed"),
            "chat_template_kwargs": chat_kwargs,
            "frames": {"max_pixels": a.get("max_pixels"), "jpeg_quality": a.get("jpeg_quality")},
            "plan": {
                "max_subtasks": a.get("max_subtasks"),
                "min_subtask_seconds": a.get("min_subtask_seconds"),
                "task_aug_count": a.get("task_aug_count"),
            },
            "interjections": {
                "max_interjections": a.get("max_interjections"),
                "interjection_min_s": a.get("interjection_min_s"),
            },
            "vqa": {"vqa_hz": a.get("vqa_hz")},
        },
    }
    return load_config(cli, yaml_path=a.get("config"))
