"""What a job is: typed payloads, the retry / TTL policy, and the Redis scripts that publish
a result and claim a file's finalize job (pure data; beside :mod:`common.modules`, the graph).

Payloads travel as rq's JSON arguments; :class:`ModuleJob` and :class:`FinalizeJob` are their
typed form and say how the deterministic job ids are made.

The two Lua scripts are the only writers of a run's pending sets, results and finalize
claims besides the producer's reset, and they are atomic, so a job of an older generation
can never empty a newer generation's pending set or overwrite a newer result:

* :data:`PUBLISH_SCRIPT` stores one result only if its module hash is still the run's (read
  from the run record inside the script), replaces the member's failure records and item
  tally, removes the member from its file's pending set, adds the job's counters (first
  publish of the member only) and, when the set became empty, claims the file's finalize
  job for the run's *current* generation (a hash field ``file -> generation``, so a
  generation can be claimed again after the producer reset the claim).
* :data:`REBUILD_PENDING_SCRIPT` rebuilds one file's pending set for the producer, reading
  every member's result in the same atomic step: a member is done when its result has the
  current module hash, no failed items, and every module it needs is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from narrator.common import keys
from narrator.common.modules import SPECS, spec

MODULE_JOB = "narrator.workers.jobs.run_module"
FINALIZE_JOB = "narrator.writer.finalize.finalize_file"

RESULT_TTL_S = 3600  # how long rq keeps a finished job (the writer forgets them at commit)
FAILURE_TTL_S = 7 * 24 * 3600  # how long a failed job stays for `narrator retry-failed`
FINALIZE_TIMEOUT_S = 3600
FINALIZE_RETRIES = 3
FINALIZE_RETRY_INTERVALS_S: tuple[int, ...] = (5, 30, 60)
MODULE_BATCH = 500  # module jobs enqueued per Redis round trip


@dataclass(frozen=True)
class JobOptions:
    """rq settings of module jobs (stored in the run record so workers enqueue alike)."""

    job_timeout_s: int = 1800
    job_retries: int = 3
    retry_intervals_s: tuple[int, ...] = (5, 30, 120)

    def intervals(self) -> list[int]:
        """The waits before retry 1, 2, ... of a module job.

        rq takes a job's interval from the *end* of the list (``intervals[len - retries_left]``),
        so the list is cut to the retry count: one retry waits the first interval, not the last.
        """
        return list(self.retry_intervals_s[: self.job_retries])


def on_chain(module: str) -> bool:
    """Is ``module`` on a dependency chain of the job graph (it needs a module, or a module
    needs it: plan -> interjections)? Such jobs are long serial chains of requests (the plan's
    memory chain, then the episode's interjections), so they are taken before independent work
    (vqa, all of whose requests go out at once): the producer enqueues them first, the job
    that unblocks one puts it at the front of the queue, and rq retries them at the front.
    Otherwise the end of a run would be a serial tail that no number of slots shortens."""
    return bool(spec(module).needs) or any(module in s.needs for s in SPECS)


@dataclass(frozen=True)
class CommitPolicy:
    """When a run with failed items may still be committed (stored in the run record)."""

    failed_items_threshold: float = 0.05  # fraction of a module's items
    allow_failed_items: bool = False


@dataclass(frozen=True)
class ModuleJob:
    """Annotate ``episode`` with ``module`` for run ``run_id`` at ``module_hash``."""

    run_id: str
    module: str
    episode: int
    module_hash: str

    @property
    def job_id(self) -> str:
        return keys.job_id(self.run_id, self.module, self.episode, self.module_hash)

    @property
    def member(self) -> str:
        return keys.member(self.module, self.episode)

    def args(self) -> tuple[str, str, int, str]:
        return (self.run_id, self.module, self.episode, self.module_hash)

    @classmethod
    def from_args(cls, args: tuple[Any, ...] | list[Any]) -> ModuleJob:
        run_id, module, episode, module_hash = args
        return cls(str(run_id), str(module), int(episode), str(module_hash))


@dataclass(frozen=True)
class FinalizeJob:
    """Validate and stage the shard of ``data_file`` for ``generation`` of run ``run_id``."""

    run_id: str
    data_file: str
    generation: str

    @property
    def job_id(self) -> str:
        return keys.finalize_job_id(self.run_id, self.data_file, self.generation)

    def args(self) -> tuple[str, str, str]:
        return (self.run_id, self.data_file, self.generation)


# KEYS: 1 run record, 2 result, 3 pending set of the file, 4 finalize claims, 5 stats,
#       6 item failures, 7 item tallies, 8 item totals
# ARGV: 1 module, 2 module hash, 3 result data, 4 member, 5 file key, 6 items, 7 failed items,
#       8 failure records (JSON, '' for none), 9 n counters, then n (name, value) pairs
# Returns {outcome, generation}: outcome 'stale' | 'published' | 'claimed' (the caller
# enqueues the finalize job of the file for that generation).
PUBLISH_SCRIPT = """
local record = redis.call('HGET', KEYS[1], 'module_hashes')
if not record or cjson.decode(record)[ARGV[1]] ~= ARGV[2] then
  return {'stale', ''}
end
redis.call('HSET', KEYS[2], 'hash', ARGV[2], 'data', ARGV[3], 'failed', ARGV[7])
if ARGV[8] == '' then
  redis.call('HDEL', KEYS[6], ARGV[4])
else
  redis.call('HSET', KEYS[6], ARGV[4], ARGV[8])
end
local old_items, old_failed = 0, 0
local old = redis.call('HGET', KEYS[7], ARGV[4])
if old then
  local sep = string.find(old, ' ', 1, true)
  old_items = tonumber(string.sub(old, 1, sep - 1))
  old_failed = tonumber(string.sub(old, sep + 1))
end
redis.call('HSET', KEYS[7], ARGV[4], ARGV[6] .. ' ' .. ARGV[7])
redis.call('HINCRBY', KEYS[8], ARGV[1] .. ':items', tonumber(ARGV[6]) - old_items)
redis.call('HINCRBY', KEYS[8], ARGV[1] .. ':failed', tonumber(ARGV[7]) - old_failed)
if redis.call('SREM', KEYS[3], ARGV[4]) == 1 then
  local n = tonumber(ARGV[9])
  for i = 0, n - 1 do
    redis.call('HINCRBY', KEYS[5], ARGV[10 + 2 * i], ARGV[11 + 2 * i])
  end
end
if redis.call('SCARD', KEYS[3]) == 0 then
  local generation = redis.call('HGET', KEYS[1], 'generation')
  if redis.call('HGET', KEYS[4], ARGV[5]) ~= generation then
    redis.call('HSET', KEYS[4], ARGV[5], generation)
    return {'claimed', generation}
  end
end
return {'published', ''}
"""

# KEYS: 1 pending set of the file, 2 staged files, 3 finalize claims, then the result key of
#       every member, in dependency order
# ARGV: 1 file key, then per member (member, module hash, needs) where needs is a
#       comma-separated list of 1-based positions of the members it needs ('' for none)
# Returns the members that are done (the rest are in the pending set). A file with a member
# to do loses its staged mark and its finalize claim: it is finalized again once done.
REBUILD_PENDING_SCRIPT = """
redis.call('DEL', KEYS[1])
local done, out, todo = {}, {}, 0
for i = 1, #KEYS - 3 do
  local member, want, needs = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local got = redis.call('HMGET', KEYS[i + 3], 'hash', 'failed')
  local ok = got[1] == want and (not got[2] or tonumber(got[2]) == 0)
  if ok and needs ~= '' then
    for j in string.gmatch(needs, '[^,]+') do
      if not done[tonumber(j)] then ok = false end
    end
  end
  done[i] = ok
  if ok then
    table.insert(out, member)
  else
    redis.call('SADD', KEYS[1], member)
    todo = todo + 1
  end
end
if todo > 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return out
"""
