"""The seam between the annotation modules and the VLM: a request value, an answer, a protocol.

A module builds a :class:`ChatRequest` (what to ask: messages, the JSON schema of the answer,
limits and sampling) and hands it, with a *parser*, to anything that satisfies :class:`VLM`
(narrator's :class:`~narrator.workers.vlm_client.VLMClient` in production, the same client
pointed at the simulated server in tests). The parser turns the answer's JSON object into the
value the module wants, raising ``ValueError`` when the answer is unusable; the client then
retries once with a correction. The parser runs once per answer: modules never parse twice.

Invariants (pure, no I/O):
* a request is immutable and carries everything that changes the answer, so it can be hashed,
  recorded and replayed;
* ``module`` and ``item`` name the request for counters, logs and failure records; they are not
  sent to the server; nor is ``on_chain``, which says that later requests wait for this one
  (plan, memory chain, interjections): the client may hedge such a request (re-send it to a
  second replica when the first is slow and take the first answer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

AnswerParser = Callable[[dict[str, Any]], T]
"""Turns the answer's JSON object into a value; raises ``ValueError`` for an unusable one."""


@dataclass(frozen=True)
class ChatRequest:
    """One structured-output chat request of one item of one module."""

    module: str
    item: str
    messages: Sequence[Mapping[str, Any]]
    schema: Mapping[str, Any]
    schema_name: str
    model: str
    max_tokens: int
    temperature: float
    seed: int | None = None
    chat_template_kwargs: Mapping[str, Any] | None = None
    reasoning_effort: str | None = None  # sent as is when set (vLLM's ChatCompletionRequest)
    on_chain: bool = False

    @property
    def images(self) -> int:
        """How many images the request carries (OpenAI ``image_url`` content parts)."""
        return sum(
            1
            for message in self.messages
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if isinstance(part, Mapping) and part.get("type") == "image_url"
        )


@dataclass(frozen=True)
class ChatAnswer(Generic[T]):
    """A usable answer: the parsed value, the raw JSON object, and how it was obtained."""

    value: T
    data: dict[str, Any]
    replica: str
    attempts: int
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    images: int


class VLM(Protocol):
    """What the modules need from a VLM client."""

    async def ask(self, request: ChatRequest, parse: AnswerParser[T]) -> ChatAnswer[T]:
        """The parsed answer to ``request``.

        Raises :class:`~narrator.common.errors.BadAnswerError` when the answer stays unusable,
        :class:`~narrator.common.errors.VLMRequestRejectedError` when the server refuses this
        request (400/413/422: an item failure),
        :class:`~narrator.common.errors.VLMAccessError` when it refuses every request (API key,
        model, route: 401/403/404/405, a job failure),
        :class:`~narrator.common.errors.VLMUnavailableError` when no replica answers within the
        retry budget.
        """
        ...


def as_object(data: dict[str, Any]) -> dict[str, Any]:
    """The parser that takes any JSON object as it is."""
    return data
