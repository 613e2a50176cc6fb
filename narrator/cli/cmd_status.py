"""``narrator status [ROOT|RUN]`` and ``narrator retry-failed ROOT|RUN [ROOT|RUN]``.

A target is a dataset root (a directory) or a run id. With ``--redis-url`` (a cluster's
Redis) the runs are read there. Without it, a dataset root means its one-machine state
(``default_state_dir(ROOT)`` or ``--state-dir``): while ``narrator annotate`` runs on it, its
embedded Redis is used; after the run, the Redis data it kept on disk is started on demand,
read, and stopped again (under the dataset's run lock, so no annotate starts meanwhile).

``retry-failed`` moves a run's failed jobs back to the queue; in the one-machine case they run
when ``narrator annotate`` runs on the dataset again (or now, if one is running).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from narrator.cli.options import add_config_flags, config_from_args
from narrator.common.errors import ConfigError

BUSY_WAIT_S = 15.0  # an annotate that holds the lock but has not started its Redis yet
TARGET_HELP = "a dataset root (its one-machine run) or a run id"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="progress, failures, throughput and ETA of runs")
    p.add_argument(
        "targets", nargs="*", metavar="ROOT|RUN", help=TARGET_HELP + " (default: every run)"
    )
    add_config_flags(p, "status")
    p.set_defaults(func=run_status)

    p = sub.add_parser("retry-failed", help="re-enqueue the failed jobs of a run")
    p.add_argument("targets", nargs="+", metavar="ROOT|RUN", help=TARGET_HELP)
    add_config_flags(p, "retry-failed")
    p.set_defaults(func=run_retry_failed)


@dataclass(frozen=True)
class Target:
    root: Path | None
    run_id: str | None


def parse_targets(targets: list[str]) -> Target:
    roots = [Path(t).resolve() for t in targets if Path(t).is_dir()]
    runs = [t for t in targets if not Path(t).is_dir()]
    if len(roots) > 1 or len(runs) > 1:
        raise ConfigError(f"give at most one dataset root and one run id, got {' '.join(targets)}")
    for run in runs:
        if "/" in run or not run.isalnum():
            raise ConfigError(
                f"{run!r} is neither a dataset directory nor a run id (run ids look like "
                "3f9c2a1b7d4e; `narrator status ROOT` lists a dataset's runs)"
            )
    return Target(roots[0] if roots else None, runs[0] if runs else None)


@dataclass
class Session:
    conn: Any  # redis.Redis
    note: str | None  # what the user should know about where the data came from
    running_pid: int | None
    embedded: bool = True  # a one-machine run's Redis (not a shared one)


@contextmanager
def open_runs(args: argparse.Namespace, target: Target) -> Iterator[Session]:
    """A Redis connection holding the target's runs (see the module docstring)."""
    config = config_from_args(args)
    url = config.redis_url_value()
    from narrator.cli.redis_errors import connect

    if url:
        conn = connect(url)
        try:
            yield Session(conn, None, None, embedded=False)
        finally:
            conn.close()
        return
    if target.root is None:
        raise ConfigError(
            "give the dataset ROOT of a one-machine run (`narrator status ROOT`), or "
            "--redis-url (or NARRATOR_REDIS_URL) for a shared Redis"
        )
    from narrator.common.runs import default_state_dir

    state_dir = Path(config.state_dir or default_state_dir(target.root))
    with _kept_redis(target.root, state_dir) as session:
        yield session


@contextmanager
def _kept_redis(root: Path, state_dir: Path) -> Iterator[Session]:
    from narrator.cli.redis_errors import connect
    from narrator.local.redis_server import LocalRedis, running_server_url
    from narrator.local.run_lock import DatasetBusyError, RunLock, describe_holder, read_holder

    redis_dir = state_dir / "redis"
    if not redis_dir.is_dir():
        raise ConfigError(
            f"no narrator state for {root} in {state_dir}: it was not annotated on this "
            "machine (give --state-dir if the run used one, or --redis-url for a shared Redis)"
        )
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        url = running_server_url(redis_dir)
        if url is not None:  # a run is going: read its Redis
            holder = read_holder(state_dir) or {}
            conn = connect(url)
            try:
                yield Session(
                    conn, f"narrator annotate is running ({describe_holder(holder)})",
                    holder.get("pid") if isinstance(holder.get("pid"), int) else None,
                )  # fmt: skip
            finally:
                conn.close()
            return
        try:
            lock = RunLock(state_dir, purpose="narrator status").acquire()
        except DatasetBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the run holds the lock and is starting its Redis
            continue
        try:
            server = LocalRedis(redis_dir, die_with_parent=True).start()
            try:
                conn = connect(server.url)
                try:
                    yield Session(
                        conn, f"no run is going; read the state kept in {state_dir}", None
                    )
                finally:
                    conn.close()
            finally:
                server.stop()
        finally:
            lock.release()
        return


def _runs_of(conn: Any, target: Target) -> list[str]:
    from narrator.common.runs import load_run
    from narrator.ops.status import list_runs

    if target.run_id is not None:
        return [target.run_id]
    runs = list_runs(conn)
    if target.root is None:
        return runs
    records = [load_run(conn, r) for r in runs]
    mine = [r for r in records if Path(r.root).resolve() == target.root]
    return [r.run_id for r in sorted(mine, key=lambda r: r.created_at)]


def run_status(args: argparse.Namespace) -> int:
    from narrator.ops.status import format_status, read_status

    target = parse_targets(args.targets)
    with open_runs(args, target) as session:
        if session.note:
            sys.stdout.write(session.note + "\n")
        runs = _runs_of(session.conn, target)
        if not runs:
            where = f" of {target.root}" if target.root else ""
            sys.stdout.write(f"no runs{where}\n")
        for run_id in runs:
            sys.stdout.write(format_status(read_status(session.conn, run_id)) + "\n")
    return 0


def run_retry_failed(args: argparse.Namespace) -> int:
    from narrator.ops.status import read_status, retry_failed

    target = parse_targets(args.targets)
    with open_runs(args, target) as session:
        runs = _runs_of(session.conn, target)
        if target.run_id is None:
            runs = [r for r in runs if read_status(session.conn, r).failed_jobs][-1:]
        if not runs:
            sys.stdout.write(f"no failed jobs in the runs of {target.root}\n")
            return 0
        run_id = runs[-1]
        count = retry_failed(session.conn, run_id)
        line = f"re-enqueued {count} job(s) of run {run_id} (failed jobs, jobs with failed items)"
        if session.embedded:
            if session.running_pid is not None:
                line += f"; the running narrator annotate (pid {session.running_pid}) runs them"
            elif count:
                line += (
                    f"; they run when `narrator annotate {target.root}` runs again "
                    "(with the same flags)"
                )
        sys.stdout.write(line + "\n")
    return 0
