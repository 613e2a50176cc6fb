"""How modules ask the VLM: message building, one request, concurrency, item failures.

* :func:`user_message` builds the one user message of a request: the rendered prompt, then
  for each frame a caption line followed by the image (OpenAI content parts).
* :func:`ask` sends one request with the run's settings (model, temperature, max_tokens,
  chat_template_kwargs) and a seed derived from (run seed, episode, module, item), parses the
  answer once, and returns the parsed value or the item's failure (value-or-failure: callers
  branch on ``isinstance(got, Failure)``). The client counts requests and tokens; modules
  count nothing.
* :func:`gather_all` (and :func:`gather_pair` for two results of different types) runs
  independent requests concurrently; if one raises, the others are cancelled before the
  error propagates (no orphaned requests).
* :data:`ITEM_ERRORS` are the errors that fail one item, recorded as a
  :class:`~common.staging.Failure` by :func:`item_failure`; anything else (a VLM that stays
  unavailable, an undecodable video) propagates and fails the job, which rq may retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from narrator.common.errors import BadAnswerError, VLMRequestRejectedError
from narrator.common.logging import get_logger
from narrator.common.staging import Failure, StagedRow

if TYPE_CHECKING:
    from narrator.workers.frames import EncodedFrame
    from narrator.workers.modules.base import EpisodeContext
    from narrator.workers.vlm_api import VLM, AnswerParser

ITEM_ERRORS: tuple[type[Exception], ...] = (BadAnswerError, VLMRequestRejectedError)

_log = get_logger(__name__)
_T = TypeVar("_T")
_U = TypeVar("_U")


@dataclass
class Collected:
    """Rows and item failures produced by one concurrent piece of a module."""

    rows: list[StagedRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def frame_caption(position: int, time_s: float) -> str:
    return f"Frame {position} (t={time_s:.2f} s):"


def user_message(
    prompt: str, frames: Sequence[tuple[str, EncodedFrame]] = ()
) -> list[dict[str, Any]]:
    """The messages of a request: one user turn with the prompt and captioned images."""
    if not frames:
        return [{"role": "user", "content": prompt}]
    parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    for caption, frame in frames:
        parts.append({"type": "text", "text": caption})
        parts.append({"type": "image_url", "image_url": {"url": frame.data_url}})
    return [{"role": "user", "content": parts}]


async def ask(
    ctx: EpisodeContext,
    client: VLM,
    *,
    module: str,
    item: str,
    messages: list[dict[str, Any]],
    schema: dict[str, Any],
    schema_name: str,
    parse: AnswerParser[_T],
    failure_item: str | None = None,
    on_chain: bool = False,
) -> _T | Failure:
    """Ask for ``item`` of ``module`` and return the parsed answer, or the item's failure.

    ``parse`` turns the answer's JSON object into the value (``ValueError`` for an unusable
    answer earns the client's corrective retry); it runs once. An answer that stays unusable
    or a refused request is returned as a :class:`~narrator.common.staging.Failure` recorded
    under ``failure_item`` (default ``item``); anything else propagates and fails the job.
    ``on_chain`` marks a request that later requests of the episode wait for (hedged)."""
    request = ctx.chat_request(
        module=module,
        item=item,
        messages=messages,
        schema=schema,
        schema_name=schema_name,
        on_chain=on_chain,
    )
    try:
        answer = await client.ask(request, parse)
    except ITEM_ERRORS as exc:
        return item_failure(ctx, module, failure_item or item, exc)
    return answer.value


def item_failure(ctx: EpisodeContext, module: str, item: str, exc: Exception) -> Failure:
    """Record (and log) that ``item`` of ``module`` failed for this episode."""
    _log.warning(
        "item_failed",
        module=module,
        episode=ctx.episode.index,
        item=item,
        kind=type(exc).__name__,
        error=str(exc),
    )
    return Failure(
        module=module,
        episode=ctx.episode.index,
        item=item,
        kind=type(exc).__name__,
        message=str(exc),
    )


async def gather_all(coroutines: Sequence[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run ``coroutines`` concurrently and return their results in order; on the first
    error, cancel the rest, wait for them, and re-raise that error."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def gather_pair(
    first: Coroutine[Any, Any, _T], second: Coroutine[Any, Any, _U]
) -> tuple[_T, _U]:
    """:func:`gather_all` for two coroutines of different result types."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return tasks[0].result(), tasks[1].result()


def merge(parts: Sequence[Collected]) -> Collected:
    """All rows and failures of ``parts``, in order."""
    out = Collected()
    for part in parts:
        out.rows.extend(part.rows)
        out.failures.extend(part.failures)
    return out
