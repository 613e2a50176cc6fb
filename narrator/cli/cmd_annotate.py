"""``narrator annotate ROOT``: the whole pipeline on one machine (narrator.local.run).

With ``--vlm-url`` it uses running servers; with ``--serve 'vllm serve MODEL ...'`` it starts
the replicas first (replica i on GPU group ``i % groups``, see narrator.local.serve) and stops
them at the end. With ``--repo-id USER/NAME`` the dataset comes from the Hugging Face Hub
(downloaded into ROOT, or into ``$HF_LEROBOT_HOME/USER/NAME`` without ROOT), and
``--push-to-hub [REPO]`` uploads it after the commit (narrator.hub). SIGTERM and SIGHUP stop it
like Ctrl-C: workers and writer first, the embedded Redis last; the same command again resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from narrator.cli.options import add_config_flags, config_from_args
from narrator.common.config import NarratorConfig
from narrator.common.errors import ConfigError

DATASET_HELP = (
    "LeRobot v3 dataset root (the folder holding meta/ and data/); with --repo-id, where the "
    "Hub dataset is downloaded to (default: $HF_LEROBOT_HOME/USER/NAME)"
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("annotate", help="annotate a dataset on this machine, end to end")
    p.add_argument("root", type=Path, nargs="?", help=DATASET_HELP)
    add_config_flags(p, "annotate")
    g = p.add_argument_group("one machine")
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar or progress lines (default: a bar on a terminal, else a line "
        "every --progress-interval-s)",
    )
    p.set_defaults(func=run)


def _check(config: NarratorConfig, root: Path | None) -> None:
    """The flag combinations no single setting can refuse; before any work."""
    if root is None and config.hub.repo_id is None:
        raise ConfigError(
            "give the dataset ROOT, or --repo-id USER/NAME to download one from the Hub"
        )
    if not config.serve.command and not config.vlm.urls:
        raise ConfigError("give --vlm-url URL (a running server) or --serve 'vllm serve MODEL'")
    if config.hub.push_to_hub and config.hub.push_repo_id is None and config.hub.repo_id is None:
        raise ConfigError(
            "--push-to-hub needs a target: --push-to-hub USER/NAME, or --repo-id USER/NAME"
        )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # every bad flag fails here, before any work
    _check(config, args.root)
    url = config.redis_url_value()
    if url is not None:  # a shared Redis: check it answers before anything is started
        from narrator.cli.redis_errors import connect

        connect(url).close()

    from narrator.common.lifecycle import install_stop_handlers
    from narrator.hub.flow import hub_client, prepare_root, push_after_run
    from narrator.local.run import AnnotateResult, annotate

    install_stop_handlers()
    progress = not args.no_progress
    client = hub_client() if config.hub.repo_id or config.hub.push_to_hub else None
    root = prepare_root(config, args.root, client, say=_say)
    result: AnnotateResult
    serve = config.serve
    if serve.command:
        from narrator.local.serve import ServeSpec, detect_gpus, place_replicas, start_replicas

        spec = ServeSpec.parse(serve.command)
        placement = place_replicas(detect_gpus(), serve.replicas, serve.gpus_per_replica)
        for note in placement.notes:
            _say(note)
        replicas = len(placement.devices)
        last = serve.port + replicas - 1
        _say(
            f"starting {replicas} replica(s) of `{serve.command}` on ports {serve.port}-{last} "
            f"({placement.describe()}); waiting until each answers /health (a large model "
            "takes minutes to load)"
        )
        with start_replicas(
            spec.argv,
            replicas=replicas,
            base_port=serve.port,
            gpus=placement.devices,
            ready_timeout_s=serve.ready_timeout_s,
        ) as group:
            _say(f"replicas ready: {', '.join(group.urls)}")
            vlm = config.vlm.model_copy(update={"urls": tuple(group.urls)})
            result = annotate(config.model_copy(update={"vlm": vlm}), root, progress=progress)
    else:
        result = annotate(config, root, progress=progress)
    if result.exit_code == 0 and result.status is not None:
        sys.stdout.write(f"run {result.run_id} done: {result.status.files_total} shards written\n")
        sys.stdout.write(_style_summary(root))
        if config.hub.push_to_hub and client is not None and result.record is not None:
            pushed = push_after_run(config, root, result.record, client, say=_say)
            sys.stdout.write(f"pushed to {pushed.url} (revision {pushed.revision})\n")
    return result.exit_code


def _style_summary(root: Path) -> str:
    """How many episodes got each style, and the validator's verdict, read back from the
    written dataset (an episode that got no subtask rows is a validation warning)."""
    from narrator.inspection.dataset_check import check_annotated_dataset

    report = check_annotated_dataset(root)
    total = len(report.episodes)
    counts: dict[str, int] = {}
    for stats in report.episodes.values():
        for style, rows in stats.styles.items():
            if rows:
                counts[style] = counts.get(style, 0) + 1
    styles = ", ".join(f"{style} {n}/{total}" for style, n in sorted(counts.items()))
    return (
        f"episodes per style: {styles or 'none'}\n"
        f"validation: {report.errors} error(s), {report.warnings} warning(s)"
        f"{'' if report.ok else ' (run `narrator validate ROOT` for the list)'}\n"
    )


def _say(line: str) -> None:
    sys.stderr.write(f"narrator: {line}\n")
