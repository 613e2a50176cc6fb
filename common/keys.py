"""The Redis key layout and queue names shared by the producer, workers and writer.

Invariants:
* Every key narrator writes starts with ``narrator:`` so an operator can find (and clear) them.
* Per-run keys embed the run id; a run's keys can be listed with ``run_pattern(run_id)``.
* rq job ids are deterministic and only use ``[A-Za-z0-9_-]`` (rq's rule), so enqueuing the
  same work twice names the same job.
"""

from __future__ import annotations

PREFIX = "narrator"

MODULE_QUEUE = "narrator-modules"
WRITER_QUEUE = "narrator-writer"

MODULES: tuple[str, str, str] = ("plan", "interjections", "vqa")

RUNS = f"{PREFIX}:runs"  # set of run ids


def run(run_id: str) -> str:
    """Hash: root, fingerprint, model, config (JSON), prompt hashes, module hashes, totals."""
    return f"{PREFIX}:run:{run_id}"


def run_pattern(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}*"


def run_files(run_id: str) -> str:
    """Hash: file key -> JSON {"path": relative data path, "episodes": [...]}"""
    return f"{PREFIX}:run:{run_id}:files"


def pending(run_id: str, file_key: str) -> str:
    """Set of ``module:episode`` members still to finish before ``file_key`` can be written."""
    return f"{PREFIX}:run:{run_id}:pending:{file_key}"


def finalize_claim(run_id: str, file_key: str, generation: str) -> str:
    """String set once (SET NX) by whoever enqueues the finalize job of a file generation."""
    return f"{PREFIX}:run:{run_id}:finalize:{file_key}:{generation}"


def result(run_id: str, module: str, episode: int) -> str:
    """Hash {"hash": module hash, "data": JSON of the ModuleResult} (see ``common.staging``)."""
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


def failures(run_id: str) -> str:
    """List of JSON failure records (item-level failures that did not stop a job)."""
    return f"{PREFIX}:run:{run_id}:failures"


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
