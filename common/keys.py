"""The Redis key layout and queue names shared by the producer, workers and writer.

Invariants:
* Every key narrator writes starts with ``narrator:`` so an operator can find (and clear) them.
* Per-run keys embed the run id (``narrator:run:<id>...``).
* rq job ids are deterministic and only use ``[A-Za-z0-9_-]`` (rq's rule), so enqueuing the
  same work twice names the same job.
"""

from __future__ import annotations

PREFIX = "narrator"

MODULE_QUEUE = "narrator-modules"
WRITER_QUEUE = "narrator-writer"

RUNS = f"{PREFIX}:runs"  # set of run ids

REPLICAS = f"{PREFIX}:replicas"
"""Hash: replica label -> JSON {"healthy": bool, "reason": str, "at": unix time}, the latest
health change any worker process saw (written by the workers, read by progress displays)."""


def run(run_id: str) -> str:
    """Hash: root, fingerprint, model, config (JSON), prompt hashes, module hashes, totals."""
    return f"{PREFIX}:run:{run_id}"


def run_files(run_id: str) -> str:
    """Hash: file key -> JSON {"path": relative data path, "episodes": [...]}"""
    return f"{PREFIX}:run:{run_id}:files"


def pending(run_id: str, file_key: str) -> str:
    """Set of ``module:episode`` members still to finish before ``file_key`` can be written."""
    return f"{PREFIX}:run:{run_id}:pending:{file_key}"


def finalize_claims(run_id: str) -> str:
    """Hash: file key -> generation whose finalize job was claimed (by the publish script that
    emptied the file's pending set, or by the producer); reset by the producer when a
    generation is enqueued again, so returning to earlier settings finalizes again."""
    return f"{PREFIX}:run:{run_id}:finalize_claims"


def result(run_id: str, module: str, episode: int) -> str:
    """Hash {"hash": module hash, "data": JSON of the ModuleResult, "failed": failed items}
    (see ``common.staging``)."""
    return f"{PREFIX}:run:{run_id}:result:{module}:{episode}"


def staged_files(run_id: str) -> str:
    """Hash: file key -> generation of the shard staged for it."""
    return f"{PREFIX}:run:{run_id}:staged"


def committed(run_id: str) -> str:
    """String: generation of the run that was swapped into the dataset."""
    return f"{PREFIX}:run:{run_id}:committed"


def stats(run_id: str) -> str:
    """Hash of counters: ``<module>:<counter>`` -> integer (requests, tokens, images, ...)."""
    return f"{PREFIX}:run:{run_id}:stats"


def item_failures(run_id: str) -> str:
    """Hash: member -> JSON list of the failure records of its latest result (members whose
    latest result has no failed item have no field)."""
    return f"{PREFIX}:run:{run_id}:item_failures"


def item_tallies(run_id: str) -> str:
    """Hash: member -> "<items> <failed items>" of its latest result."""
    return f"{PREFIX}:run:{run_id}:item_tallies"


def item_totals(run_id: str) -> str:
    """Hash: ``<module>:items`` / ``<module>:failed`` -> the sums of the members' tallies."""
    return f"{PREFIX}:run:{run_id}:item_totals"


def commit_hold(run_id: str) -> str:
    """String: JSON {"reason", "modules"} when the writer held back the commit because too
    many items failed; cleared by the next enqueue."""
    return f"{PREFIX}:run:{run_id}:commit_hold"


def writer_errors(run_id: str) -> str:
    """Hash: file key -> JSON list of validation errors that stopped its shard."""
    return f"{PREFIX}:run:{run_id}:writer_errors"


def job_id(run_id: str, module: str, episode: int, module_hash: str) -> str:
    return f"nar-{run_id}-{module}-{episode}-{module_hash[:12]}"


def finalize_job_id(run_id: str, file_key: str, generation: str) -> str:
    safe = file_key.replace("/", "_").replace(".", "_")
    return f"nar-{run_id}-finalize-{safe}-{generation[:12]}"


def member(module: str, episode: int) -> str:
    return f"{module}:{episode}"
