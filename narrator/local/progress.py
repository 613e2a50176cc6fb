"""What ``narrator annotate`` tells the person running it, and the loop that waits for a run.

* :class:`Reporter` prints the start-up phases (dataset, Redis, replicas, enqueueing,
  processes) as plain lines on stderr, then progress: a tqdm bar on a terminal, else one
  line every ``interval_s`` (no carriage-return frames in a log file). Retries and
  failures are in the bar's postfix and in each line. When a replica leaves rotation (the
  workers publish replica state to the Redis hash ``narrator:replicas``, label -> JSON
  ``{"healthy", "reason", "at"}``) it prints one warning line, and one when it is back.
* :func:`watch_run` polls the run's status until it is committed (exit 0), stalls on failures
  (exit 1, the failures listed) or a child process dies (ConfigError); it returns as soon as
  the run is committed.

Pure formatting (:func:`progress_line`, :func:`replica_changes`) is separate from the I/O.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
import redis
from tqdm import tqdm

from narrator.common import keys
from narrator.common.errors import ConfigError
from narrator.common.runs import text
from narrator.local.children import RoleChild
from narrator.ops.status import RunStatus, format_status, read_status

REPLICAS_KEY = keys.REPLICAS  # written by the workers: replica label -> JSON state
STALL_GRACE_S = 3.0
STATUS_DUTY = 10  # the progress poll waits at least 10x what reading the status took
REDIS_LOST_GRACE_S = 60.0  # how long the progress loop waits for an unreachable Redis


@dataclass(frozen=True)
class ReplicaState:
    healthy: bool
    reason: str


def parse_replicas(raw: Mapping[Any, Any]) -> dict[str, ReplicaState]:
    """The ``narrator:replicas`` hash as label -> state (entries that do not parse skipped)."""
    out: dict[str, ReplicaState] = {}
    for key, value in raw.items():
        try:
            data = orjson.loads(value)
        except (orjson.JSONDecodeError, TypeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("healthy"), bool):
            out[text(key) or ""] = ReplicaState(data["healthy"], str(data.get("reason") or ""))
    return out


def replica_changes(
    before: Mapping[str, ReplicaState], now: Mapping[str, ReplicaState]
) -> list[str]:
    """One line per replica that left or came back into rotation since ``before``."""
    lines = []
    for label, state in sorted(now.items()):
        was = before.get(label)
        was_healthy = True if was is None else was.healthy
        if was_healthy and not state.healthy:
            why = f": {state.reason}" if state.reason else ""
            lines.append(f"warning: replica {label} left rotation{why}")
        elif was is not None and not was.healthy and state.healthy:
            lines.append(f"replica {label} is back in rotation")
    return lines


def counts_of(status: RunStatus) -> dict[str, int]:
    retries = sum(v for k, v in status.counters.items() if k.endswith("retries"))
    return {
        "retries": retries,
        "item_failures": status.item_failures,
        "failed_jobs": len(status.failed_jobs),
    }


def postfix(status: RunStatus) -> str:
    c = counts_of(status)
    return (
        f"files {status.files_staged}/{status.files_total} retries {c['retries']} "
        f"failed items {c['item_failures']} failed jobs {c['failed_jobs']}"
    )


def progress_line(status: RunStatus, elapsed_s: float) -> str:
    """The periodic line printed when stderr is not a terminal."""
    total = status.jobs_total + status.files_total
    done = status.jobs_done + status.files_staged
    percent = 100.0 * done / total if total else 100.0
    eta = status.eta_s()
    eta_text = f" ETA {eta:.0f} s" if eta is not None and done < total else ""
    waiting = " (workers starting)" if done == 0 and status.started == 0 and status.queued else ""
    return (
        f"progress {percent:5.1f}% jobs {status.jobs_done}/{status.jobs_total} "
        f"{postfix(status)} elapsed {elapsed_s:.0f} s{eta_text}{waiting}"
    )


@dataclass
class Reporter:
    """Lines for the person at the terminal (or reading the log file) on ``stream``."""

    show_progress: bool = True
    interval_s: float = 10.0
    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.monotonic
    _bar: Any = None
    _started: float = 0.0
    _last_line_at: float | None = None
    _replicas: dict[str, ReplicaState] = field(default_factory=dict)

    @property
    def interactive(self) -> bool:
        return self.show_progress and self.stream.isatty()

    def say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(f"narrator: {line}", file=self.stream)
        else:
            self.stream.write(f"narrator: {line}\n")
            self.stream.flush()

    def start(self, run_id: str, total: int) -> None:
        self._started = self.clock()
        if self.interactive:
            self._bar = tqdm(total=total, unit="step", desc=f"run {run_id}", file=self.stream)

    def update(self, status: RunStatus) -> None:
        now = self.clock()
        if self._bar is not None:
            self._bar.n = status.jobs_done + status.files_staged
            self._bar.set_postfix_str(postfix(status), refresh=False)
            self._bar.refresh()
            return
        if not self.show_progress:
            return
        due = self._last_line_at is None or now - self._last_line_at >= self.interval_s
        if due or status.committed:
            self._last_line_at = now
            self.say(progress_line(status, now - self._started))

    def replicas(self, states: dict[str, ReplicaState]) -> None:
        for line in replica_changes(self._replicas, states):
            self.say(line)
        self._replicas = {**self._replicas, **states}

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _read_replicas(conn: redis.Redis) -> dict[str, ReplicaState]:
    try:
        return parse_replicas(conn.hgetall(REPLICAS_KEY))
    except redis.ResponseError:  # not a hash (another tool's key): nothing to say
        return {}


def watch_run(
    conn: redis.Redis,
    run_id: str,
    children: list[RoleChild],
    reporter: Reporter,
    *,
    poll_s: float,
    failure_hint: str,
) -> tuple[int, RunStatus]:
    """Wait for the run; (exit code, last status). See the module docstring."""
    status = read_status(conn, run_id)
    reporter.start(run_id, status.jobs_total + status.files_total)
    stalled_since: float | None = None
    redis_lost_since: float | None = None
    try:
        while True:
            read_started = time.monotonic()
            try:
                status = read_status(conn, run_id)
                replicas = _read_replicas(conn)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis restarting (it keeps its data on disk): wait for it a while.
                redis_lost_since = redis_lost_since or time.monotonic()
                if time.monotonic() - redis_lost_since > REDIS_LOST_GRACE_S:
                    raise
                reporter.say(f"Redis unreachable ({exc}); waiting for it")
                time.sleep(poll_s)
                continue
            redis_lost_since = None
            read_s = time.monotonic() - read_started
            reporter.replicas(replicas)
            reporter.update(status)
            if status.committed:
                return 0, status
            if status.state == "failed":
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > STALL_GRACE_S:
                    reporter.close()
                    sys.stderr.write(format_status(status) + "\n")
                    sys.stderr.write(f"narrator: the run stopped on failures; {failure_hint}\n")
                    return 1, status
            else:
                stalled_since = None
            for child in children:
                if child.proc.poll() is not None:
                    raise ConfigError(child.exit_message())
            # A big run's status costs Redis real work (58 ms at 10k episodes): poll so that
            # reading it takes at most 1/STATUS_DUTY of the time.
            time.sleep(max(poll_s, STATUS_DUTY * read_s))
    finally:
        reporter.close()
