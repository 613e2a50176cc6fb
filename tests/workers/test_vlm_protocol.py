"""Wire format as pure code: what an error status means, which refusals are about
json_schema, the json_object body, error messages of the servers seen in the wild."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from narrator.workers.vlm_api import ChatRequest
from narrator.workers.vlm_protocol import (
    SCHEMA_IN_PROMPT,
    chat_body,
    error_message,
    refuses_json_schema,
    status_class,
)

SCHEMA = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}


def request(messages: list[dict[str, object]]) -> ChatRequest:
    return ChatRequest(
        module="vqa",
        item="q",
        messages=messages,
        schema=SCHEMA,
        schema_name="vqa_count",
        model="m",
        max_tokens=64,
        temperature=0.0,
        seed=3,
    )


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (401, "access"),
        (403, "access"),
        (404, "access"),
        (405, "access"),
        (400, "rejected"),
        (413, "rejected"),
        (422, "rejected"),
    ],
)
def test_status_classes(status: int, kind: str) -> None:
    assert status_class(status) == kind


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, "Input should be 'text' or 'json_object'"),  # llama.cpp's server
        (400, "response_format type 'json_schema' is not supported"),
        (400, "Invalid value for 'response_format.type'"),
        (422, "json_schema is not supported by this backend"),
    ],
)
def test_refusals_of_json_schema_are_recognised(status: int, message: str) -> None:
    assert refuses_json_schema(status, message)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "The provided JSON schema contains features not supported by xgrammar."),
        (400, "This model's maximum context length is 32768 tokens."),
        (500, "simulated server error 500"),
        (404, "The model `x` does not exist."),
        (401, "response_format: Unauthorized"),  # access errors are never format refusals
        (429, "json_object rate limit"),
    ],
)
def test_other_errors_are_not_format_refusals(status: int, message: str) -> None:
    assert not refuses_json_schema(status, message)


def test_json_object_body_carries_the_schema_in_the_last_user_turn() -> None:
    parts = [{"type": "text", "text": "How many cubes?"}]
    body = chat_body(request([{"role": "user", "content": parts}]), "json_object")
    assert body["response_format"] == {"type": "json_object"}
    content = body["messages"][-1]["content"]
    assert content[0] == parts[0] and content[-1]["type"] == "text"
    note = content[-1]["text"]
    assert note.startswith(SCHEMA_IN_PROMPT)
    assert orjson.loads(note[len(SCHEMA_IN_PROMPT) :]) == SCHEMA
    assert parts == [{"type": "text", "text": "How many cubes?"}]  # the request is unchanged
    text = chat_body(request([{"role": "user", "content": "Count."}]), "json_object")
    assert text["messages"][0]["content"].startswith("Count.\n\n" + SCHEMA_IN_PROMPT)
    strict = chat_body(request([{"role": "user", "content": "Count."}]))
    assert strict["response_format"]["json_schema"]["schema"] == SCHEMA
    assert strict["messages"][0]["content"] == "Count." and strict["seed"] == 3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"error": {"message": "bad", "type": "BadRequestError"}}', "bad"),
        (b'{"error": "Unauthorized"}', "Unauthorized"),  # vLLM's --api-key middleware
        (b'{"detail": "Not Found"}', "Not Found"),  # FastAPI
        (b"upstream timed out", "upstream timed out"),
    ],
)
def test_error_messages_of_the_servers_seen(raw: bytes, message: str) -> None:
    assert error_message(raw) == message


def test_reasoning_effort_is_sent_only_when_set() -> None:
    plain = request([{"role": "user", "content": "count"}])
    assert "reasoning_effort" not in chat_body(plain)
    body = chat_body(dataclasses.replace(plain, reasoning_effort="low"))
    assert body["reasoning_effort"] == "low"
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.0, 64, 3)
    fallback = chat_body(dataclasses.replace(plain, reasoning_effort="high"), "json_object")
    assert fallback["reasoning_effort"] == "high"
