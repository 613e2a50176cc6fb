"""The roles on their own, against a shared Redis: ``narrator enqueue ROOT`` (the producer),
``narrator worker`` (a pool of rq worker processes) and ``narrator writer``.

Each checks its Redis URL (and the producer its dataset) before doing anything, so a wrong
URL is one line and exit 2, never a traceback from a child process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from narrator.cli.options import add_config_flags, config_from_args
from narrator.common.errors import ConfigError

BURST_HELP = "exit when the queue is empty (default: keep waiting for jobs)"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("enqueue", help="register a run and enqueue its jobs (the producer)")
    p.add_argument("root", type=Path, help="LeRobot v3 dataset root (holding meta/ and data/)")
    add_config_flags(p, "enqueue")
    p.set_defaults(func=run_enqueue)

    p = sub.add_parser("worker", help="run rq worker processes for the module queue")
    add_config_flags(p, "worker")
    p.add_argument("--burst", action="store_true", help=BURST_HELP)
    p.set_defaults(func=run_worker)

    p = sub.add_parser("writer", help="run the writer (finalizes shards, commits runs)")
    add_config_flags(p, "writer")
    p.add_argument("--burst", action="store_true", help=BURST_HELP)
    p.set_defaults(func=run_writer)


def _redis_url(command: str, url: str | None) -> str:
    if not url:
        raise ConfigError(f"narrator {command} needs --redis-url (or NARRATOR_REDIS_URL)")
    return url


def run_enqueue(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    url = _redis_url("enqueue", config.redis_url_value())
    if not config.vlm.model and not config.vlm.urls:
        raise ConfigError("give --model NAME, or --vlm-url URL to ask the server for it")

    from narrator.cli.redis_errors import connect
    from narrator.common.job_specs import CommitPolicy, JobOptions
    from narrator.common.prompts import load_prompts
    from narrator.local.run import resolve_model
    from narrator.producer.enqueue import enqueue_run

    prompts = load_prompts(config.prompt_dir)
    conn = connect(url)
    summary = enqueue_run(
        conn,
        args.root,
        settings=config.annotation,
        prompts=prompts,
        model=resolve_model(config),
        options=JobOptions(job_timeout_s=config.job_timeout_s, job_retries=config.job_retries),
        policy=CommitPolicy(config.failed_items_threshold, config.allow_failed_items),
        staging_dir=config.staging_dir,
        only_episodes=config.episode_selection(),
    )
    sys.stdout.write(summary.run_id + "\n")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    url = _redis_url("worker", config.redis_url_value())
    if not config.vlm.urls:
        raise ConfigError("narrator worker needs --vlm-url (or NARRATOR_VLM_URLS)")

    from narrator.cli.redis_errors import connect
    from narrator.workers.main import run_workers

    connect(url).close()
    run_workers(config, burst=args.burst)
    return 0


def run_writer(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    url = _redis_url("writer", config.redis_url_value())

    from narrator.cli.redis_errors import connect
    from narrator.writer.main import run_writer as serve_writer

    connect(url).close()
    serve_writer(config, burst=args.burst)
    return 0
