"""The services a worker process gives its jobs, built once per process (as arq's ``ctx``).

:class:`WorkerContext` holds the Redis connections, the VLM client (anything satisfying the
:class:`~narrator.workers.vlm_api.VLM` protocol), the dataset-metadata cache and the frame
pool (:class:`~workers.frame_pool.FramePool`: decoding and JPEG work in processes). Job
functions take it as their first argument (:mod:`workers.jobs`), so they are plain async
functions: the worker runtime (:mod:`workers.runtime`) passes the process's context, and a
test builds one with :func:`open_worker_context` on its own loop and calls the job
function directly.

Invariants:
* The async parts (the async Redis client, the VLM client's session) belong to the loop
  that opened the context; in a worker process that is the process's one loop, on which
  every job runs.
* The sync Redis connection is only used off the loop (``asyncio.to_thread``): rq's
  enqueue API is synchronous.
* Dataset metadata is cached per (root, fingerprint) and only when it matches the
  fingerprint the run recorded, so a changed dataset is never cached under the old one.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis
import redis.asyncio as aredis

from narrator.common.config import NarratorConfig
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import ConfigError, PermanentError
from narrator.workers.frame_pool import FramePool
from narrator.workers.replica_status import ReplicaStatusPublisher
from narrator.workers.vlm_api import VLM
from narrator.workers.vlm_client import VLMClient


class DatasetMetaCache:
    """Dataset metadata loaded once per (root, fingerprint) per process (thread-safe)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], DatasetMeta] = {}
        self._lock = threading.Lock()

    def get(self, root: Path, fingerprint: str) -> DatasetMeta:
        key = (str(root), fingerprint)
        with self._lock:
            meta = self._cache.get(key)
            if meta is None:
                meta = load_dataset_meta(root)
                if meta.fingerprint() != fingerprint:
                    raise PermanentError(
                        f"the dataset at {root} changed since its run was enqueued; "
                        "enqueue it again"
                    )
                self._cache[key] = meta
            return meta


@dataclass
class WorkerContext:
    redis: redis.Redis
    aredis: aredis.Redis
    client: VLM
    metas: DatasetMetaCache = field(default_factory=DatasetMetaCache)
    replicas: ReplicaStatusPublisher | None = None
    frames: FramePool | None = None  # decode, resize, JPEG off the loop (None: a thread)
    _owned_client: VLMClient | None = None

    def with_client(self, client: VLM) -> WorkerContext:
        """This context with another VLM client (one job's view of the shared one); closing
        it closes nothing of this one."""
        return replace(self, client=client, _owned_client=None)

    async def close(self) -> None:
        if self.frames is not None:
            await asyncio.to_thread(self.frames.close)
        if self._owned_client is not None:
            await self._owned_client.close()
        if self.replicas is not None:
            await self.replicas.drain()
        await self.aredis.aclose()
        self.redis.close()


async def open_worker_context(
    config: NarratorConfig, *, client: VLM | None = None
) -> WorkerContext:
    """Connect to Redis and start the VLM client (unless one is given) on the running loop;
    replica health changes of the client are published to Redis."""
    url = config.redis_url_value()
    if not url:
        raise ConfigError("the worker needs a Redis URL (--redis-url or NARRATOR_REDIS_URL)")
    if client is None and not config.vlm.urls:
        raise ConfigError("the worker needs VLM server URLs (--vlm-url or NARRATOR_VLM_URLS)")
    async_conn = aredis.Redis.from_url(url)
    publisher = ReplicaStatusPublisher(async_conn)
    owned: VLMClient | None = None
    if client is None:
        owned = VLMClient(config.vlm, observer=publisher)
        try:
            await owned.start()
        except BaseException:
            await owned.close()
            await async_conn.aclose()
            raise
        client = owned
    return WorkerContext(
        redis=redis.Redis.from_url(url),
        aredis=async_conn,
        client=client,
        replicas=publisher,
        frames=FramePool(config.frame_processes),
        _owned_client=owned,
    )
