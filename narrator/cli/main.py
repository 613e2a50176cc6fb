"""The ``narrator`` command: one subcommand per role plus the one-machine runner and tools.

Subcommands: annotate, enqueue, worker, writer, status, retry-failed, demo, validate, render,
report. Errors that narrator raises on purpose (bad dataset, bad config, unreachable server)
end with a one-line message and exit code 2; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import redis

from narrator.cli import cmd_demo, cmd_render, cmd_report, cmd_validate
from narrator.cli.options import add_config_flags, config_from_args
from narrator.common.errors import ConfigError, NarratorError
from narrator.common.logging import configure_logging, redact_text


def _cmd_annotate(args: argparse.Namespace) -> int:
    from narrator.local.run import AnnotateResult, annotate
    from narrator.local.serve import ServeSpec, detect_gpus, start_replicas

    config = config_from_args(args)
    progress = not args.no_progress
    result: AnnotateResult
    if args.serve:
        spec = ServeSpec.parse(args.serve)
        gpus = detect_gpus()
        replicas = args.replicas or max(len(gpus), 1)
        with start_replicas(
            spec.argv,
            replicas=replicas,
            base_port=args.serve_port,
            gpus=gpus if len(gpus) >= replicas else None,
        ) as group:
            vlm = config.vlm.model_copy(update={"urls": tuple(group.urls)})
            result = annotate(config.model_copy(update={"vlm": vlm}), args.root, progress=progress)
    elif not config.vlm.urls:
        raise ConfigError("give --vlm-url URL (a running server) or --serve 'vllm serve MODEL'")
    else:
        result = annotate(config, args.root, progress=progress)
    if result.exit_code == 0 and result.status is not None:
        sys.stdout.write(f"run {result.run_id} done: {result.status.files_total} shards written\n")
    return result.exit_code


def _cmd_enqueue(args: argparse.Namespace) -> int:
    from narrator.common.job_specs import CommitPolicy, JobOptions
    from narrator.common.prompts import load_prompts
    from narrator.local.run import resolve_model
    from narrator.producer.enqueue import enqueue_run

    config = config_from_args(args)
    url = config.redis_url_value()
    if not url:
        raise ConfigError("narrator enqueue needs --redis-url (or NARRATOR_REDIS_URL)")
    if not config.vlm.model and not config.vlm.urls:
        raise ConfigError("give --model NAME, or --vlm-url URL to ask the server for it")
    conn = redis.Redis.from_url(url)
    summary = enqueue_run(
        conn,
        args.root,
        settings=config.annotation,
        prompts=load_prompts(config.prompt_dir),
        model=resolve_model(config),
        options=JobOptions(job_timeout_s=config.job_timeout_s, job_retries=config.job_retries),
        policy=CommitPolicy(config.failed_items_threshold, config.allow_failed_items),
        staging_dir=config.staging_dir,
    )
    sys.stdout.write(summary.run_id + "\n")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from narrator.workers.main import run_workers

    run_workers(config_from_args(args), burst=args.burst)
    return 0


def _cmd_writer(args: argparse.Namespace) -> int:
    from narrator.writer.main import run_writer

    run_writer(config_from_args(args), burst=args.burst)
    return 0


def _redis(args: argparse.Namespace) -> redis.Redis:
    url = config_from_args(args).redis_url_value()
    if not url:
        raise ConfigError("give --redis-url (or NARRATOR_REDIS_URL)")
    return redis.Redis.from_url(url)


def _cmd_status(args: argparse.Namespace) -> int:
    from narrator.ops.status import format_status, list_runs, read_status

    conn = _redis(args)
    runs = [args.run] if args.run else list_runs(conn)
    if not runs:
        sys.stdout.write("no runs\n")
    for run_id in runs:
        sys.stdout.write(format_status(read_status(conn, run_id)) + "\n")
    return 0


def _cmd_retry_failed(args: argparse.Namespace) -> int:
    from narrator.ops.status import retry_failed

    count = retry_failed(_redis(args), args.run)
    sys.stdout.write(f"re-enqueued {count} failed job(s) of run {args.run}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narrator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("annotate", help="annotate a dataset on this machine, end to end")
    p.add_argument("root", type=Path, help="LeRobot v3 dataset root (holding meta/ and data/)")
    add_config_flags(p, "annotate")
    g = p.add_argument_group("one machine")
    g.add_argument(
        "--serve",
        metavar="COMMAND",
        help="start vLLM replicas with this command, e.g. 'vllm serve MODEL [ARGS]' "
        "(default: use --vlm-url servers)",
    )
    g.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="replicas for --serve (default: one per visible GPU)",
    )
    g.add_argument(
        "--serve-port",
        type=int,
        default=8000,
        metavar="PORT",
        help="TCP port of the first --serve replica; replica i gets PORT+i (default: 8000)",
    )
    g.add_argument(
        "--no-progress", action="store_true", help="no progress display (default: shown)"
    )
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("enqueue", help="register a run and enqueue its jobs (the producer)")
    p.add_argument("root", type=Path, help="LeRobot v3 dataset root (holding meta/ and data/)")
    add_config_flags(p, "enqueue")
    p.set_defaults(func=_cmd_enqueue)

    p = sub.add_parser("worker", help="run rq worker processes for the module queue")
    add_config_flags(p, "worker")
    p.add_argument(
        "--burst", action="store_true", help="exit when the queue is empty (default: wait)"
    )
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("writer", help="run the writer (finalizes shards, commits runs)")
    add_config_flags(p, "writer")
    p.add_argument(
        "--burst", action="store_true", help="exit when the queue is empty (default: wait)"
    )
    p.set_defaults(func=_cmd_writer)

    p = sub.add_parser("status", help="progress, failures, throughput and ETA of runs")
    p.add_argument("run", nargs="?", help="run id (default: every run)")
    add_config_flags(p, "status")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("retry-failed", help="re-enqueue the failed jobs of a run")
    p.add_argument("run", help="run id, as printed by annotate or status")
    add_config_flags(p, "retry-failed")
    p.set_defaults(func=_cmd_retry_failed)

    for module in (cmd_demo, cmd_validate, cmd_render, cmd_report):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(
        level=getattr(args, "log_level", None) or os.environ.get("NARRATOR_LOG_LEVEL") or "info",
        fmt=getattr(args, "log_format", None),
    )
    try:
        code: int = args.func(args)
        return code
    except NarratorError as exc:
        sys.stderr.write(f"narrator: {redact_text(str(exc))}\n")
        return 2
    except redis.exceptions.AuthenticationError as exc:
        sys.stderr.write(
            f"narrator: Redis refused the credentials ({exc}); check the user and password "
            "in --redis-url / NARRATOR_REDIS_URL\n"
        )
        return 2
    except redis.exceptions.NoPermissionError as exc:
        sys.stderr.write(
            f"narrator: the Redis user may not run a command narrator needs ({exc}); grant "
            "it access to the narrator:* and rq:* keys (ACL SETUSER ... ~narrator:* ~rq:* "
            "+@all) or use another user\n"
        )
        return 2
    except redis.exceptions.ConnectionError as exc:
        sys.stderr.write(
            f"narrator: cannot reach Redis: {redact_text(str(exc)).rstrip('.')}. "
            "Start Redis or fix --redis-url / NARRATOR_REDIS_URL "
            "(without it, `annotate` starts its own).\n"
        )
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("narrator: interrupted; run the same command again to resume\n")
        return 130
