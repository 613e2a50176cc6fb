"""Failed items of a run: the per-module totals, the records, and whether they hold the commit.

Every published result carries how many distinct items its module asked for the episode and
how many of them failed; the publish script (:mod:`common.job_specs`) keeps each member's
latest tally and the per-module sums, and each member's latest failure records. A member
whose latest result has failed items is not done: the next enqueue of the same settings, or
``narrator retry-failed``, asks those items again.

:func:`commit_hold` is the writer's gate (pure): a run in which more than
``failed_items_threshold`` of a module's items failed is not committed unless the run allows
failed items. The reason is stored in Redis for ``narrator status``.

Invariant: only the modules of the run count; totals of modules a run does not include are
ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from narrator.common import keys
from narrator.common.job_specs import CommitPolicy


@dataclass(frozen=True)
class ModuleTally:
    module: str
    items: int
    failed: int

    @property
    def fraction(self) -> float:
        return self.failed / self.items if self.items else 0.0


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_tallies(
    conn: redis.Redis,
    run_id: str,
    modules: Collection[str],
    episodes: Collection[int] | None = None,
) -> list[ModuleTally]:
    """Per-module item totals of the run; with ``episodes`` (an ``--only-episodes`` run),
    the sums over those episodes' members only, so failures of episodes outside the
    selection neither hold its commit nor count in its status."""
    if episodes is None:
        raw = {_as_str(k): int(v) for k, v in conn.hgetall(keys.item_totals(run_id)).items()}
        return [
            ModuleTally(m, raw.get(f"{m}:items", 0), raw.get(f"{m}:failed", 0)) for m in modules
        ]
    ordered = sorted(episodes)
    out: list[ModuleTally] = []
    for module in modules:
        items = failed = 0
        for start in range(0, len(ordered), 5000):
            members = [keys.member(module, e) for e in ordered[start : start + 5000]]
            for value in conn.hmget(keys.item_tallies(run_id), members):
                if value is not None:
                    got_items, _, got_failed = _as_str(value).partition(" ")
                    items += int(got_items)
                    failed += int(got_failed or 0)
        out.append(ModuleTally(module, items, failed))
    return out


def commit_hold(tallies: Collection[ModuleTally], policy: CommitPolicy) -> str | None:
    """Why the run must not be committed yet, or None (pure)."""
    if policy.allow_failed_items:
        return None
    over = [t for t in tallies if t.items and t.fraction > policy.failed_items_threshold]
    if not over:
        return None
    parts = ", ".join(
        f"{t.module}: {t.failed} of {t.items} items failed ({100 * t.fraction:.1f} %)" for t in over
    )
    return (
        f"{parts}; more than {100 * policy.failed_items_threshold:g} % of a module's items "
        "failed, so the dataset was not changed. Run the same command again to ask the failed "
        "items again (or `narrator retry-failed`), or pass --allow-failed-items to commit "
        "with them"
    )


def record_hold(conn: redis.Redis, run_id: str, reason: str | None) -> None:
    if reason is None:
        conn.delete(keys.commit_hold(run_id))
    else:
        conn.set(keys.commit_hold(run_id), orjson.dumps({"reason": reason}))


def read_hold(conn: redis.Redis, run_id: str) -> str | None:
    raw = conn.get(keys.commit_hold(run_id))
    return str(orjson.loads(raw)["reason"]) if raw else None


def read_failure_records(
    conn: redis.Redis,
    run_id: str,
    modules: Collection[str],
    episodes: Collection[int] | None = None,
) -> list[dict[str, Any]]:
    """The failure records of the latest results of the run's modules, by member (only the
    members of ``episodes`` when given)."""
    out: list[dict[str, Any]] = []
    wanted = None if episodes is None else set(episodes)
    raw: Mapping[Any, Any] = conn.hgetall(keys.item_failures(run_id))
    for member, records in sorted(raw.items(), key=lambda kv: _member_order(_as_str(kv[0]))):
        module, episode = _member_order(_as_str(member))
        if module in modules and (wanted is None or episode in wanted):
            out.extend(orjson.loads(records))
    return out


def _member_order(member: str) -> tuple[str, int]:
    module, _, episode = member.partition(":")
    return (module, int(episode) if episode.isdigit() else -1)
