"""The adaptive in-flight limit of one replica over a run, as narrator's client exposes it
(pure: the rows and log lines are read by the caller).

Two sources, the first that has data wins:

1. the worker's Prometheus gauge ``narrator_vlm_in_flight_limit{replica}`` read every half
   second by :class:`~tests.bench.fleet_gauges.GaugeSampler` (beside the replica's own
   ``vllm:num_requests_running`` / ``_waiting``, read at the same moment);
2. the worker's structured log event ``vlm_in_flight_limit`` (JSON lines: ``replica``,
   ``limit``, ``running``, ``waiting``, ``in_flight``, ISO ``timestamp``), written when the
   limit changes.

When neither has data the client of this commit has no adaptive limit; :func:`fixed_budgets`
then reads the fixed per-replica budgets from its ``vlm client ready`` log event, so the
benchmark can say what the limit was instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tests.bench.fleet_gauges import GaugeRow

LIMIT_EVENT = "vlm_in_flight_limit"
READY_EVENT = "vlm client ready"


@dataclass(frozen=True)
class TraceRow:
    t_s: float  # seconds since the fleet's reset (the run's start)
    limit: float | None
    in_flight: float | None  # this client's requests at the replica
    running: float | None  # the replica's own gauges
    waiting: float | None


def json_events(lines: Iterable[str], event: str) -> list[dict[str, object]]:
    """The JSON log records whose ``event`` is ``event`` (other lines are skipped)."""
    out: list[dict[str, object]] = []
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            out.append(record)
    return out


def epoch_of(timestamp: object) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def trace_from_gauges(
    rows: Sequence[GaugeRow], pod: str, replica: str, clock0_s: float
) -> list[TraceRow]:
    """The client ``pod``'s limit for ``replica`` with the replica's gauges read beside it."""
    server = sorted((r for r in rows if r.source == "server" and r.replica == replica),
                    key=lambda r: r.at_s)  # fmt: skip
    out: list[TraceRow] = []
    for row in rows:
        if row.source != pod or row.replica != replica or "limit" not in row.values:
            continue
        near = min(server, key=lambda r: abs(r.at_s - row.at_s)) if server else None
        out.append(
            TraceRow(
                t_s=row.at_s - clock0_s,
                limit=row.values.get("limit"),
                in_flight=row.values.get("in_flight"),
                running=None if near is None else near.values.get("running"),
                waiting=None if near is None else near.values.get("waiting"),
            )
        )
    return sorted(out, key=lambda r: r.t_s)


def trace_from_log(lines: Iterable[str], replica: str, epoch0_s: float) -> list[TraceRow]:
    """The limit changes the client logged for ``replica``."""
    out: list[TraceRow] = []
    for record in json_events(lines, LIMIT_EVENT):
        if record.get("replica") != replica:
            continue
        at = epoch_of(record.get("timestamp"))
        if at is None:
            continue
        out.append(
            TraceRow(
                t_s=at - epoch0_s,
                limit=_number(record.get("limit")),
                in_flight=_number(record.get("in_flight")),
                running=_number(record.get("running")),
                waiting=_number(record.get("waiting")),
            )
        )
    return sorted(out, key=lambda r: r.t_s)


def fixed_budgets(lines: Iterable[str]) -> list[int]:
    """The per-replica budgets of every ``vlm client ready`` event (a client without an
    adaptive limit logs them once at start)."""
    budgets: list[int] = []
    for record in json_events(lines, READY_EVENT):
        value = record.get("budgets")
        if isinstance(value, list):
            budgets += [int(v) for v in value if isinstance(v, int | float)]
    return budgets


def thin(rows: Sequence[TraceRow], max_rows: int) -> list[TraceRow]:
    """At most ``max_rows`` rows spread evenly over the run, keeping the first and last and
    every row where the limit changed if they fit."""
    if len(rows) <= max_rows:
        return list(rows)
    changes = [i for i in range(1, len(rows)) if rows[i].limit != rows[i - 1].limit]
    keep = {0, len(rows) - 1, *changes}
    if len(keep) > max_rows:
        keep = {round(i * (len(rows) - 1) / (max_rows - 1)) for i in range(max_rows)}
    else:
        spare = max_rows - len(keep)
        keep |= {round(i * (len(rows) - 1) / max(1, spare)) for i in range(spare + 1)}
    return [rows[i] for i in sorted(keep)][:max_rows]


def format_trace(rows: Sequence[TraceRow]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    lines = [f"{'t (s)':>7}  {'limit':>6}  {'in flight':>9}  {'running':>7}  {'waiting':>7}"]
    lines += [
        f"{row.t_s:7.1f}  {cell(row.limit):>6}  {cell(row.in_flight):>9}  "
        f"{cell(row.running):>7}  {cell(row.waiting):>7}"
        for row in rows
    ]
    return "\n".join(lines)
