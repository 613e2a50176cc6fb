"""Wire format of OpenAI-compatible chat completions as narrator's VLM client speaks it (pure).

Request bodies, reading replies and error bodies, the corrective follow-up messages, the
backoff formula and the ``max_num_seqs`` probe parser. No I/O: :mod:`workers.vlm_client` is
the shell that sends and retries.

Invariant: every request asks for structured output with
``response_format = {"type": "json_schema", "json_schema": {name, schema, strict: true}}``
and only sends fields vLLM's chat-completion API accepts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import orjson

from narrator.workers.vlm_api import ChatRequest

_MAX_NUM_SEQS = re.compile(r'max_num_seqs(?:="(\d+)"|\s+(\d+)(?:\.0+)?\s*$)', re.MULTILINE)
CORRECTION = (
    "Your previous reply could not be used: {reason}. Reply again with only the JSON object "
    "that matches the requested schema: no explanation, no code fences, no other text."
)


@dataclass(frozen=True)
class Reply:
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    replica: str


class AttemptFailed(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, outcome: str, reason: str, *, replica_fault: bool) -> None:
        super().__init__(reason)
        self.outcome = outcome  # metric label: timeout, connection, http_503, bad_response...
        self.reason = reason
        self.replica_fault = replica_fault  # counts toward taking the replica out


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(max_s, base_s * 2**attempt))."""
    return rng.uniform(0.0, min(max_s, base_s * (2.0**attempt)))


def budget_from_metrics(metrics_text: str, default: int) -> int:
    """In-flight budget of a replica: its ``max_num_seqs`` plus 25% headroom, else ``default``.

    The headroom keeps a request queued at the server for the moment a slot frees.
    """
    seqs = parse_max_num_seqs(metrics_text)
    return default if seqs is None else seqs + max(1, seqs // 4)


def parse_max_num_seqs(metrics_text: str) -> int | None:
    """A ``max_num_seqs`` value published in Prometheus text (label or metric), if any."""
    match = _MAX_NUM_SEQS.search(metrics_text)
    if match is None:
        return None
    value = int(match.group(1) or match.group(2))
    return value if value > 0 else None


def error_message(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace")
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
    return raw[:200].decode("utf-8", "replace")


def reply_from(raw: bytes, replica: str) -> Reply:
    try:
        body = orjson.loads(raw)
        choice = body["choices"][0]
        content = choice["message"].get("content") or ""
        usage = body.get("usage") or {}
        return Reply(
            content=str(content),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            replica=replica,
        )
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise AttemptFailed(
            "bad_response", f"malformed chat completion ({exc!r})", replica_fault=True
        ) from exc


def chat_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body of one chat-completion request."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [dict(m) for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": request.schema_name,
                "schema": dict(request.schema),
                "strict": True,
            },
        },
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.chat_template_kwargs is not None:
        body["chat_template_kwargs"] = dict(request.chat_template_kwargs)
    return body


def with_correction(body: dict[str, Any], bad_answer: str, problem: str) -> dict[str, Any]:
    """``body`` with the unusable answer and a request to send only the JSON appended."""
    follow_up = [
        {"role": "assistant", "content": bad_answer},
        {"role": "user", "content": CORRECTION.format(reason=problem)},
    ]
    return {**body, "messages": [*body["messages"], *follow_up]}
