"""The services of one writer process, built once and handed to every finalize job.

:class:`WriterContext` is what ``narrator writer`` builds at start and its
:class:`~common.queueing.ContextWorker` passes as the first argument of each job (as arq
passes ``ctx``); tests build their own. Nothing here is a module global.

Invariants:
* :class:`DatasetCache` never serves metadata of a dataset that changed under it: an entry is
  keyed on the identity of ``meta/info.json`` (inode, size, modification time), which every
  commit replaces atomically, and the writer drops the entry itself after each commit.
  What the cache holds (episodes, files, cameras, fingerprint) is what a commit leaves
  alone; whether a shard already has language columns is read from the shard itself when it
  is finalized, never from the cache.
* The metadata served always has the fingerprint of the run asking for it; otherwise the
  dataset changed since the run was enqueued and the job fails permanently.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import redis

from narrator.common.dataset.files import INFO_FILE
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import PermanentError
from narrator.common.logging import get_logger
from narrator.common.runs import RunRecord

log = get_logger(__name__)

InfoIdentity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def info_identity(root: Path) -> InfoIdentity | None:
    """The identity of ``root``'s ``meta/info.json`` (None when it cannot be stat'ed)."""
    try:
        st = (Path(root) / INFO_FILE).stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class DatasetCache:
    """Dataset metadata per root, loaded once and reloaded when the dataset changed."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[InfoIdentity | None, DatasetMeta]] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how many times metadata was read from disk

    def meta(self, run: RunRecord) -> DatasetMeta:
        """The metadata of ``run``'s dataset as it is on disk now."""
        root = str(run.root)
        identity = info_identity(run.root)
        with self._lock:
            entry = self._entries.get(root)
            if entry is None or entry[0] != identity or identity is None:
                meta = load_dataset_meta(run.root)
                self.loads += 1
                entry = (identity, meta)
                self._entries[root] = entry
        meta = entry[1]
        if meta.fingerprint() != run.fingerprint:
            raise PermanentError(
                f"the dataset at {run.root} changed since run {run.run_id} was enqueued; "
                "enqueue it again"
            )
        return meta

    def invalidate(self, root: Path) -> None:
        """Forget ``root``'s metadata (called after a commit changed the dataset)."""
        with self._lock:
            self._entries.pop(str(root), None)


@dataclass
class WriterContext:
    """What a finalize job needs besides its payload."""

    conn: redis.Redis
    datasets: DatasetCache = field(default_factory=DatasetCache)
    # (run, generation) pairs whose dataset passed the write check in this process
    checked: set[tuple[str, str]] = field(default_factory=set)
