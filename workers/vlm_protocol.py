"""Wire format of OpenAI-compatible chat completions as narrator's VLM client speaks it (pure).

Request bodies, reading replies and error bodies, what an error status means, the
corrective follow-up messages and the backoff formula. No I/O: :mod:`workers.vlm_client` is
the shell that sends and retries.

Invariants:

* every request asks for structured output with ``response_format = {"type":
  "json_schema", "json_schema": {name, schema, strict: true}}`` and only sends fields vLLM's
  chat-completion API accepts; for a server that refuses ``json_schema`` (llama.cpp answers
  500 "Input should be 'text' or 'json_object'", others 400) the same request is built with
  ``{"type": "json_object"}`` and the schema written into the prompt (:func:`chat_body`);
* optional fields (``seed``, ``chat_template_kwargs``, ``reasoning_effort``) are sent only when
  set, so a server that predates one of them never sees it unless the user asks for it;
* an error status falls in exactly one class (:func:`status_class`): ``retry`` (408, 429,
  5xx), ``access`` (401, 403, 404, 405: nothing of the run can work; the job fails) or
  ``rejected`` (every other 4xx, e.g. 400, 413, 422: this one request is refused; the item
  fails).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from narrator.workers.vlm_api import ChatRequest

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


ACCESS_STATUSES = frozenset({401, 403, 404, 405})
StatusClass = Literal["retry", "access", "rejected"]
# Words of a server's refusal of response_format json_schema (and not of one schema).
_FORMAT_WORDS = ("json_object", "response_format", "response format")
SCHEMA_IN_PROMPT = (
    "Answer with one JSON object, and nothing else, that is an instance of this JSON schema:\n"
)


def status_class(status: int) -> StatusClass:
    """What an HTTP error status of a chat request means (see the module docstring)."""
    if status in (408, 429) or status >= 500:
        return "retry"
    if status in ACCESS_STATUSES:
        return "access"
    return "rejected"


def refuses_json_schema(status: int, message: str) -> bool:
    """Whether an error answer says the server does not take ``response_format`` of type
    ``json_schema`` (rather than refusing one schema or the request for another reason)."""
    if status in ACCESS_STATUSES or status in (408, 429) or status < 400:
        return False
    text = message.lower()
    return any(word in text for word in _FORMAT_WORDS) or (
        "json_schema" in text and ("support" in text or "unknown" in text or "invalid" in text)
    )


def error_message(raw: bytes) -> str:
    """The human part of an error body: OpenAI's ``{"error": {"message"}}``, vLLM's
    ``{"error": "Unauthorized"}``, FastAPI's ``{"detail": ...}``, or the start of the text."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace")
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
        if isinstance(body.get("detail"), str):
            return str(body["detail"])[:500]
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


def _with_schema_in_prompt(
    messages: list[dict[str, Any]], schema: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """``messages`` with the schema appended to the last user turn (text or content parts)."""
    note = SCHEMA_IN_PROMPT + orjson.dumps(schema).decode()
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = [*content, {"type": "text", "text": note}]
        else:
            message["content"] = f"{content or ''}\n\n{note}".lstrip()
        return out
    return [*out, {"role": "user", "content": note}]


def chat_body(
    request: ChatRequest, response_format: Literal["json_schema", "json_object"] = "json_schema"
) -> dict[str, Any]:
    """The JSON body of one chat-completion request (see the module docstring)."""
    messages = [dict(m) for m in request.messages]
    if response_format == "json_schema":
        format_field: dict[str, Any] = {
            "type": "json_schema",
            "json_schema": {
                "name": request.schema_name,
                "schema": dict(request.schema),
                "strict": True,
            },
        }
    else:
        format_field = {"type": "json_object"}
        messages = _with_schema_in_prompt(messages, request.schema)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "response_format": format_field,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.chat_template_kwargs is not None:
        body["chat_template_kwargs"] = dict(request.chat_template_kwargs)
    if request.reasoning_effort is not None:
        body["reasoning_effort"] = request.reasoning_effort
    return body


def with_correction(body: dict[str, Any], bad_answer: str, problem: str) -> dict[str, Any]:
    """``body`` with the unusable answer and a request to send only the JSON appended."""
    follow_up = [
        {"role": "assistant", "content": bad_answer},
        {"role": "user", "content": CORRECTION.format(reason=problem)},
    ]
    return {**body, "messages": [*body["messages"], *follow_up]}
