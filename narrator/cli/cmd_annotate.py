"""``narrator annotate ROOT``: the whole pipeline on one machine (narrator.local.run).

With ``--vlm-url`` it uses running servers; with ``--serve 'vllm serve MODEL ...'`` it starts
one replica per GPU first and stops them at the end. SIGTERM and SIGHUP stop it like Ctrl-C:
workers and writer first, the embedded Redis last; the same command again resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from narrator.cli.options import add_config_flags, config_from_args
from narrator.common.errors import ConfigError

DATASET_HELP = "LeRobot v3 dataset root (the folder holding meta/ and data/)"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("annotate", help="annotate a dataset on this machine, end to end")
    p.add_argument("root", type=Path, help=DATASET_HELP)
    add_config_flags(p, "annotate")
    g = p.add_argument_group("one machine")
    g.add_argument(
        "--serve",
        metavar="COMMAND",
        help="start vLLM replicas with this command, e.g. 'vllm serve MODEL [ARGS]' "
        "(default: use the --vlm-url servers)",
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
        "--no-progress",
        action="store_true",
        help="no progress bar or progress lines (default: a bar on a terminal, else a line "
        "every --progress-interval-s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # every bad flag fails here, before any work
    if args.replicas is not None and args.replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {args.replicas}")
    if not 1 <= args.serve_port <= 65535:
        raise ConfigError(f"--serve-port must be a TCP port (1-65535), got {args.serve_port}")
    if not args.serve and not config.vlm.urls:
        raise ConfigError("give --vlm-url URL (a running server) or --serve 'vllm serve MODEL'")
    url = config.redis_url_value()
    if url is not None:  # a shared Redis: check it answers before anything is started
        from narrator.cli.redis_errors import connect

        connect(url).close()

    from narrator.common.lifecycle import install_stop_handlers
    from narrator.local.run import AnnotateResult, annotate
    from narrator.local.serve import ServeSpec, detect_gpus, start_replicas

    install_stop_handlers()
    progress = not args.no_progress
    result: AnnotateResult
    if args.serve:
        spec = ServeSpec.parse(args.serve)
        gpus = detect_gpus()
        replicas = args.replicas or max(len(gpus), 1)
        last = args.serve_port + replicas - 1
        sys.stderr.write(
            f"narrator: starting {replicas} replica(s) of `{args.serve}` on ports "
            f"{args.serve_port}-{last}; waiting until each answers /health (a large model "
            "takes minutes to load)\n"
        )
        with start_replicas(
            spec.argv,
            replicas=replicas,
            base_port=args.serve_port,
            gpus=gpus if len(gpus) >= replicas else None,
        ) as group:
            sys.stderr.write(f"narrator: replicas ready: {', '.join(group.urls)}\n")
            vlm = config.vlm.model_copy(update={"urls": tuple(group.urls)})
            result = annotate(config.model_copy(update={"vlm": vlm}), args.root, progress=progress)
    else:
        result = annotate(config, args.root, progress=progress)
    if result.exit_code == 0 and result.status is not None:
        sys.stdout.write(f"run {result.run_id} done: {result.status.files_total} shards written\n")
    return result.exit_code
