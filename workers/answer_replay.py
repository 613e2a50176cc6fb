"""A VLM seam that replays recorded answers and records new ones (one per job).

A staged result keeps the parsed answers of its successful requests keyed by
:func:`request_key`, a hash of everything the request sends (messages with their images,
schema, model, sampling, seed) and the item it asks for. When an episode is annotated again
at the same module hash (its result had failed items, or a module it needs was redone),
:class:`ReplayingVLM` answers every request it has a recorded answer for without asking,
and asks the wrapped client only the rest: what failed, and what changed because an
earlier answer of a chain changed (a memory that failed before is now known, so the next
memory's prompt differs and is asked).

Invariants:
* A replayed answer goes through the module's parser again, like a fresh one; one that no
  longer parses is asked again.
* :attr:`ReplayingVLM.answers` holds exactly the answers this job used (replayed or new),
  so a result never carries answers of requests it no longer makes.
* Nothing is counted for a replayed answer: the request counters say what the VLM did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

from narrator.workers.vlm_api import VLM, AnswerParser, ChatAnswer, ChatRequest

T = TypeVar("T")

REPLAYED = "replay"  # the replica name of a replayed answer


def request_key(request: ChatRequest) -> str:
    """A stable hash of everything that decides the answer to ``request`` (pure)."""
    identity = {
        "module": request.module,
        "item": request.item,
        "messages": request.messages,
        "schema": request.schema,
        "schema_name": request.schema_name,
        "model": request.model,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "seed": request.seed,
        "chat_template_kwargs": request.chat_template_kwargs,
    }
    if request.reasoning_effort is not None:  # absent when unset: older keys stay valid
        identity["reasoning_effort"] = request.reasoning_effort
    return hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class ReplayingVLM:
    """Answers from ``recorded`` where it can, from ``inner`` otherwise; records both."""

    def __init__(self, inner: VLM, recorded: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._inner = inner
        self._recorded = dict(recorded or {})
        self.answers: dict[str, dict[str, Any]] = {}
        self.answered_items: set[str] = set()
        self.replayed = 0
        self.asked = 0

    async def ask(self, request: ChatRequest, parse: AnswerParser[T]) -> ChatAnswer[T]:
        key = request_key(request)
        data = self._recorded.get(key)
        if data is not None:
            try:
                value = parse(data)
            except ValueError:
                pass  # the parser changed since it was recorded: ask again
            else:
                self._remember(key, request, data)
                self.replayed += 1
                return ChatAnswer(
                    value=value,
                    data=data,
                    replica=REPLAYED,
                    attempts=0,
                    finish_reason="stop",
                    prompt_tokens=0,
                    completion_tokens=0,
                    images=request.images,
                )
        self.asked += 1
        answer = await self._inner.ask(request, parse)
        self._remember(key, request, answer.data)
        return answer

    def _remember(self, key: str, request: ChatRequest, data: dict[str, Any]) -> None:
        self.answers[key] = data
        self.answered_items.add(request.item)
