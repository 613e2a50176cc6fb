"""Where narrator keeps its state for a dataset, and the start-time check that it can work there.

Layout (see docs/DECISIONS.md, "State directory"): by default ``ROOT/.narrator/``, a hidden
directory inside the dataset root, so it lies on the dataset's own filesystem even when the
root is a mount point::

    ROOT/.narrator/redis/                          embedded Redis (append-only file)
    ROOT/.narrator/logs/                           logs of the child processes of `annotate`
    ROOT/.narrator/staging/<run>/<generation>/     finalized shards waiting for the commit
        data/chunk-XXX/file-YYY.parquet
        COMMIT.json                                the commit journal (only during a commit)

Readers never see it: every reader of the dataset follows ``meta/`` and the data/video path
templates, and nothing here is under ``data/``, ``videos/`` or ``meta/``.

Invariants:
* :func:`check_dataset_writable` runs before any VLM work and raises a one-line
  :class:`~common.errors.DatasetError` naming the directory and what to do.
* :func:`prune_superseded_stages` never removes a stage that holds a commit journal (an
  interrupted commit must be finished from it) nor the stage of the current generation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from narrator.common.dataset.files import INFO_FILE
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.errors import DatasetError
from narrator.common.logging import get_logger

log = get_logger(__name__)

STATE_DIR_NAME = ".narrator"
JOURNAL = "COMMIT.json"
_PROBE_PREFIX = ".narrator-probe-"


def stage_dir(staging_dir: Path, run_id: str, generation: str) -> Path:
    """The staging directory of one generation of one run."""
    return Path(staging_dir) / run_id / generation


# --- the start-time check ------------------------------------------------------------------


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _probe_write(directory: Path) -> None:
    """Create and remove a file in ``directory``: what the writer will do there."""
    try:
        fd, name = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=directory)
    except OSError as exc:
        raise DatasetError(
            directory,
            f"is not writable ({_why(exc)}); narrator rewrites the data shards and "
            f"{INFO_FILE} in place: annotate a writable copy of the dataset, or remount it "
            "read-write",
        ) from None
    os.close(fd)
    Path(name).unlink(missing_ok=True)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_dataset_writable(
    meta: DatasetMeta, staging_dir: Path, *, probe_writes: bool = True
) -> None:
    """Refuse, before any VLM work, a dataset the writer could not commit to; leaves nothing
    behind.

    With ``probe_writes`` (``narrator annotate`` and the writer: this process writes the
    dataset) a file is created and removed in ``meta/``, in every directory holding a data
    file, and in the staging directory (or its nearest existing parent, where it will be
    created). Always: that directory must be on the filesystem (``st_dev``) of every data
    file's directory, because a staged shard is swapped in with a rename.
    """
    root = meta.root
    data_dirs = sorted({(root / rel).parent for rel in meta.files})
    staging = _existing_ancestor(Path(staging_dir).absolute())
    if probe_writes:
        for directory in [root / "meta", *data_dirs]:
            _probe_write(directory)
        try:
            _probe_write(staging)
        except DatasetError:
            raise DatasetError(
                staging,
                "is not writable, so the staging directory cannot be created there; it must "
                "be writable and on the dataset's filesystem (leave --staging-dir unset for "
                f"ROOT/{STATE_DIR_NAME}/staging)",
            ) from None
    device = staging.stat().st_dev
    for directory in data_dirs:
        if directory.stat().st_dev != device:
            raise DatasetError(
                Path(staging_dir).absolute(),
                f"is on another filesystem than the data files in {directory}; a finished "
                "shard is swapped in by a rename, which cannot cross filesystems: leave "
                f"--staging-dir and --state-dir unset (the default is ROOT/{STATE_DIR_NAME}/) "
                "or point them at the dataset's filesystem",
            )


# --- pruning --------------------------------------------------------------------------------


def prune_superseded_stages(staging_dir: Path, run_id: str, generation: str) -> list[str]:
    """Remove the staging directories of ``run_id``'s other generations; their names.

    A stage holding a commit journal is kept (its commit must be finished first), and so is
    the current generation's. An empty run directory is removed too. OS errors (a read-only
    view of the dataset) are logged, never raised: pruning only frees disk space.
    """
    run_dir = Path(staging_dir) / run_id
    removed: list[str] = []
    try:
        stages = sorted(p for p in run_dir.iterdir() if p.is_dir()) if run_dir.is_dir() else []
        for stage in stages:
            if stage.name == generation or (stage / JOURNAL).exists():
                continue
            shutil.rmtree(stage)
            removed.append(stage.name)
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
    except OSError as exc:
        log.warning("stage_prune_failed", run=run_id, directory=str(run_dir), error=_why(exc))
    if removed:
        log.info("stages_pruned", run=run_id, generations=removed)
    return removed
