"""How modules ask the VLM: message building, one request, concurrency, item failures.

* :func:`user_message` builds the one user message of a request: the rendered prompt, then
  for each frame a caption line followed by the image (OpenAI content parts).
* :func:`ask` sends one request with the run's settings (model, temperature, max_tokens,
  chat_template_kwargs) and a seed derived from (run seed, episode, module, item), and returns
  the answer's JSON object. The client counts requests and tokens; modules count nothing.
* :func:`gather_all` runs independent requests concurrently; if one raises, the others are
  cancelled before the error propagates (no orphaned requests).
* :data:`ITEM_ERRORS` are the errors that fail one item, recorded as a
  :class:`~common.staging.Failure` by :func:`item_failure`; anything else (a VLM that stays
  unavailable, an undecodable video) propagates and fails the job, which rq may retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from narrator.common.errors import BadAnswerError, VLMRequestRejectedError
from narrator.common.logging import get_logger
from narrator.common.staging import Failure, StagedRow

if TYPE_CHECKING:
    from narrator.workers.frames import EncodedFrame
    from narrator.workers.modules.base import EpisodeContext
    from narrator.workers.vlm_client import VLMClient

ITEM_ERRORS: tuple[type[Exception], ...] = (BadAnswerError, VLMRequestRejectedError)

_log = get_logger(__name__)
_T = TypeVar("_T")


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


def _discarding_result(
    parse: Callable[[dict[str, Any]], object],
) -> Callable[[dict[str, Any]], None]:
    """``parse`` as a client ``check``: it may raise ``ValueError``; its value is dropped."""

    def check(data: dict[str, Any]) -> None:
        parse(data)

    return check


async def ask(
    ctx: EpisodeContext,
    client: VLMClient,
    *,
    module: str,
    item: str,
    messages: list[dict[str, Any]],
    schema: dict[str, Any],
    schema_name: str,
    check: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """One structured-output request for ``item`` of ``module``; the answer's JSON object.

    ``check`` is a parser of the answer: it raises ``ValueError`` for an unusable one (which
    earns the client's corrective retry); what it returns is ignored here."""
    settings = ctx.settings
    answer = await client.chat_json(
        messages=messages,
        schema=schema,
        schema_name=schema_name,
        module=module,
        model=ctx.model,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        seed=ctx.seed_for(module, item),
        chat_template_kwargs=settings.chat_template_kwargs,
        check=_discarding_result(check) if check is not None else None,
    )
    return answer.data


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


def merge(parts: Sequence[Collected]) -> Collected:
    """All rows and failures of ``parts``, in order."""
    out = Collected()
    for part in parts:
        out.rows.extend(part.rows)
        out.failures.extend(part.failures)
    return out
