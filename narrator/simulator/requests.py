"""Validation of chat-completion requests, the way vLLM's OpenAI server judges them (pure).

:func:`parse_chat_request` turns a decoded JSON body into a :class:`ChatRequest` or raises
:class:`InvalidRequest` carrying the HTTP status and an OpenAI-style error message.

Deliberate difference from vLLM: vLLM only logs a warning for unknown top-level fields; the
simulator answers 400, so a misspelled parameter in narrator's client fails the tests instead
of being silently ignored. Accepted fields are vLLM's real chat-completion parameters.

Images must be ``data:image/...;base64,`` URLs that Pillow can decode (the simulator cannot
fetch remote URLs); decoding is CPU work, so the server calls this off its event loop when a
request carries images.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson
from PIL import Image, UnidentifiedImageError

ACCEPTED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "response_format",
        "stream",
        "stream_options",
        "n",
        "stop",
        "stop_token_ids",
        "chat_template",
        "chat_template_kwargs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
        "structured_outputs",
        "structural_tag",
        "logprobs",
        "top_logprobs",
        "user",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "length_penalty",
        "logit_bias",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "include_reasoning",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "prompt_logprobs",
        "add_generation_prompt",
        "continue_final_message",
        "echo",
        "add_special_tokens",
        "documents",
        "mm_processor_kwargs",
        "priority",
        "request_id",
        "cache_salt",
        "best_of",
        "use_beam_search",
        "allowed_token_ids",
        "bad_words",
        "include_stop_str_in_output",
        "return_tokens_as_token_ids",
        "metadata",
        "vllm_xargs",
        "kv_transfer_params",
    }
)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema", "structural_tag"})
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    408: "TimeoutError",
    429: "RateLimitError",
}


class InvalidRequest(Exception):
    """A request the server refuses, with the HTTP status to answer (400, 404...)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        error_type = ERROR_TYPES.get(self.status, "InternalServerError")
        return {
            "error": {
                "message": self.message,
                "type": error_type,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    text_chars: int
    image_sizes: tuple[tuple[int, int], ...]
    max_tokens: int | None
    seed: int | None
    n: int
    schema: dict[str, Any] | None  # what the answer must be an instance of, if anything
    schema_name: str  # json_schema name, "guided_json", "json_object" or "none"
    digest: bytes  # sha256 of the canonical messages
    format_type: str = "none"  # response_format.type as sent ("none" without one)

    def prompt_tokens(self, image_tokens: int) -> int:
        return math.ceil(self.text_chars / 4) + image_tokens * len(self.image_sizes)


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(400, message, param)


def decode_image(url: str, where: str) -> tuple[int, int]:
    """(width, height) of a base64 data-URL image; InvalidRequest when it does not decode."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise _bad(f"{where}: image_url must be a data:image/...;base64, URL", where)
    try:
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return int(image.width), int(image.height)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"{where}: image data is not valid base64 ({exc})", where) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise _bad(f"{where}: image cannot be decoded ({exc})", where) from exc


def _content_parts(content: Any, where: str) -> tuple[int, list[tuple[int, int]]]:
    if isinstance(content, str):
        return len(content), []
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or a list of parts", where)
    chars = 0
    sizes: list[tuple[int, int]] = []
    for index, part in enumerate(content):
        here = f"{where}.content[{index}]"
        if not isinstance(part, dict):
            raise _bad(f"{here} must be an object", here)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{here}.text must be a string", here)
            chars += len(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
                raise _bad(f"{here}.image_url must be an object with a string url", here)
            sizes.append(decode_image(image_url["url"], here))
        else:
            raise _bad(f"{here}.type {kind!r} is not supported (text, image_url)", here)
    return chars, sizes


def _messages(value: Any) -> tuple[int, list[tuple[int, int]]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages must be a non-empty list", "messages")
    chars = 0
    sizes: list[tuple[int, int]] = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object with role and content", where)
        if message.get("role") not in ROLES:
            raise _bad(f"{where}.role must be one of {sorted(ROLES)}", where)
        content = message.get("content")
        if content is None and message["role"] == "assistant" and message.get("tool_calls"):
            continue
        if "content" not in message:
            raise _bad(f"{where} has no content", where)
        part_chars, part_sizes = _content_parts(content, where)
        chars += part_chars
        sizes.extend(part_sizes)
    return chars, sizes


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(f"{name} must be an integer >= {minimum}", name)
    return value


def schema_in_prompt(messages: Any) -> dict[str, Any] | None:
    """The last JSON schema (an object with ``properties``) written in a user turn's text."""
    if not isinstance(messages, list):
        return None
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    decoder = json.JSONDecoder()
    for text in reversed(texts):
        found: dict[str, Any] | None = None
        position = text.find("{")
        while position != -1:
            try:
                value, end = decoder.raw_decode(text, position)
            except ValueError:
                position = text.find("{", position + 1)
                continue
            if isinstance(value, dict) and isinstance(value.get("properties"), dict):
                found = value
            position = text.find("{", end)
        if found is not None:
            return found
    return None


def _schema_of(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise _bad("response_format must be an object", "response_format")
        kind = response_format.get("type")
        if kind not in RESPONSE_FORMATS:
            raise _bad(f"response_format.type must be one of {sorted(RESPONSE_FORMATS)}")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise _bad("response_format.json_schema needs a string name", "response_format")
            if not isinstance(spec.get("schema"), dict):
                raise _bad("response_format.json_schema.schema must be an object")
            if "strict" in spec and not isinstance(spec["strict"], bool | None):
                raise _bad("response_format.json_schema.strict must be a boolean")
            return spec["schema"], spec["name"]
        if kind == "json_object":
            # A model asked for "some JSON object" follows a schema the prompt spells out.
            written = schema_in_prompt(body.get("messages"))
            if written is not None:
                return written, "json_object"
            return {"type": "object", "properties": {"answer": {"type": "string"}}}, "json_object"
    guided = body.get("guided_json")
    structured = body.get("structured_outputs")
    if guided is None and isinstance(structured, dict):
        guided = structured.get("json")
    if isinstance(guided, str):
        try:
            guided = orjson.loads(guided)
        except orjson.JSONDecodeError as exc:
            raise _bad(f"guided_json is not valid JSON: {exc}", "guided_json") from exc
    if guided is not None:
        if not isinstance(guided, dict):
            raise _bad("guided_json must be a JSON schema object", "guided_json")
        return guided, "guided_json"
    return None, "none"


def parse_chat_request(
    body: Any, *, model: str, max_model_len: int, image_tokens: int
) -> ChatRequest:
    """Validate ``body``; raises :class:`InvalidRequest` (400, or 404 for another model)."""
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    unknown = sorted(set(body) - ACCEPTED_FIELDS)
    if unknown:
        raise _bad(f"unknown request field(s): {', '.join(unknown)}", unknown[0])
    requested = body.get("model", model)
    if requested != model:
        raise InvalidRequest(404, f"The model `{requested}` does not exist.", "model")
    if body.get("stream"):
        raise _bad("stream=true is not supported by the simulated server", "stream")
    temperature = body.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise _bad("temperature must be a number", "temperature")
    if not 0 <= temperature <= 2:
        raise _bad("temperature must be in [0, 2]", "temperature")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise _bad("chat_template_kwargs must be an object", "chat_template_kwargs")
    max_tokens = _optional_int(body, "max_completion_tokens", 1)
    max_tokens = _optional_int(body, "max_tokens", 1) if max_tokens is None else max_tokens
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed must be an integer", "seed")
    n = _optional_int(body, "n", 1) or 1
    schema, schema_name = _schema_of(body)
    chars, sizes = _messages(body.get("messages"))
    request = ChatRequest(
        messages=body["messages"],
        text_chars=chars,
        image_sizes=tuple(sizes),
        max_tokens=max_tokens,
        seed=seed,
        n=n,
        schema=schema,
        schema_name=schema_name,
        digest=hashlib.sha256(orjson.dumps(body["messages"], option=orjson.OPT_SORT_KEYS)).digest(),
        format_type=str((body.get("response_format") or {}).get("type") or "none"),
    )
    prompt_tokens = request.prompt_tokens(image_tokens)
    if prompt_tokens + (max_tokens or 0) > max_model_len:
        raise _bad(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} in the "
            f"messages, {max_tokens or 0} in the completion). Please reduce the length of the "
            "messages or completion.",
            "max_tokens",
        )
    return request
