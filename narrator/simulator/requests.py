"""Validation of chat-completion requests, the way vLLM's OpenAI server judges them (pure).

:func:`parse_chat_request` turns a decoded JSON body into a :class:`ChatRequest` or raises
:class:`InvalidRequest` carrying the HTTP status and an OpenAI-style error body. Statuses,
messages, ``type`` and ``param`` follow what vLLM 0.32 answers (checked against the real
server by ``make conformance``, see docs/CONFORMANCE.md):

* unknown top-level fields are accepted and ignored (vLLM logs a warning); they are listed in
  :attr:`ChatRequest.ignored_fields` so the server can count them and tests can assert that
  narrator sends none;
* a body that fails vLLM's pydantic validation (not JSON, wrong JSON type of a field, an
  unknown ``response_format`` type, a ``json_schema`` without ``name``, a ``reasoning_effort``
  outside vLLM's values) is 400 with type
  ``Bad Request`` and ``param`` ``body.<field>``; semantic errors (``max_tokens`` < 1 or above
  ``max_model_len``, ``temperature`` outside [0, 2], a prompt longer than ``max_model_len``,
  no messages) are 400 ``BadRequestError`` with vLLM's message; another model is 404;
* a prompt that fits but leaves fewer than ``max_tokens`` tokens is accepted, its answer is
  cut at the room left (``finish_reason: "length"``), as vLLM does;
* images: ``data:`` URLs are decoded with Pillow (bad base64 or undecodable bytes: 400);
  ``http(s)://`` URLs are fetched by the server beforehand and passed in ``fetched`` (a fetch
  that fails is 500, like vLLM's); ``file://`` URLs are 500 ("Cannot load local files");
* message roles are not checked (vLLM hands any role to the chat template).

Decoding is CPU work, so the server calls this off its event loop when a request carries
images. The first image of a request with exactly one image is kept (as an RGB array) for the
pixel-reading VQA answers of :mod:`narrator.simulator.vision`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema", "structural_tag"})
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    408: "TimeoutError",
    429: "RateLimitError",
}
VALIDATION_ERROR_TYPE = "Bad Request"  # what vLLM calls a pydantic validation failure
REMOTE_SCHEMES = ("http://", "https://")
LOCAL_FILES_MESSAGE = "Cannot load local files without `--allowed-local-media-path`."


class InvalidRequest(Exception):
    """A request the server refuses, with the HTTP status to answer (400, 404, 500...)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.error_type = error_type or ERROR_TYPES.get(status, "InternalServerError")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
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
    ignored_fields: tuple[str, ...] = ()  # unknown top-level fields, accepted and ignored
    first_image: np.ndarray | None = field(default=None, repr=False, compare=False)
    format_type: str = "none"  # response_format.type as sent ("none" without one)
    # The sampling options as sent ("temperature=0.2", "max_tokens=64", "seed",
    # "reasoning_effort=low"): counted by the server so tests can see what a client sent.
    options: tuple[str, ...] = ()

    def text(self) -> str:
        """The text parts of the messages, joined (what the prompt says)."""
        parts: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [str(p.get("text", "")) for p in content if p.get("type") == "text"]
        return "\n".join(parts)

    def prompt_tokens(self, image_tokens: int) -> int:
        return math.ceil(self.text_chars / 4) + image_tokens * len(self.image_sizes)


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(400, message, param)


def _invalid_body(loc: str, message: str) -> InvalidRequest:
    """A pydantic-style validation failure, as vLLM reports one (type 'Bad Request')."""
    where = f"body.{loc}" if loc else "body"
    text = f"1 validation error:\n  {{'loc': '{where}', 'msg': '{message}'}}"
    return InvalidRequest(400, text, where, VALIDATION_ERROR_TYPE)


@dataclass(frozen=True)
class DecodedImage:
    width: int
    height: int
    pixels: np.ndarray | None  # RGB uint8 (H, W, 3) when asked to keep them


def image_urls(body: Any) -> list[str]:
    """Every ``image_url.url`` string in the messages of ``body`` (tolerant of bad shapes)."""
    urls: list[str] = []
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            image_url = part.get("image_url") if isinstance(part, dict) else None
            url = image_url.get("url") if isinstance(image_url, dict) else None
            if isinstance(url, str):
                urls.append(url)
    return urls


def _image_bytes(url: str, fetched: Mapping[str, bytes]) -> bytes:
    if url.startswith("file:"):
        raise InvalidRequest(500, LOCAL_FILES_MESSAGE)
    if url.startswith(REMOTE_SCHEMES):
        if url not in fetched:
            raise InvalidRequest(500, f"Cannot fetch {url}")
        return fetched[url]
    head, sep, payload = url.partition(",")
    if not head.startswith("data:") or not sep:
        raise _bad("The URL must be either a HTTP, data or file URL.")
    if not head.endswith(";base64"):
        return payload.encode()
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(str(exc) or "Non-base64 digit found") from exc


def decode_image(
    url: str, fetched: Mapping[str, bytes] | None = None, keep_pixels: bool = False
) -> DecodedImage:
    """Size (and pixels if asked) of one image URL; InvalidRequest as vLLM would answer."""
    raw = _image_bytes(url, fetched or {})
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            pixels = np.asarray(image.convert("RGB")) if keep_pixels else None
            return DecodedImage(int(image.width), int(image.height), pixels)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _bad(f"Failed to load image: {exc}") from exc


@dataclass
class _Contents:
    chars: int = 0
    images: list[tuple[str, str]] = field(default_factory=list)  # (url, where)


def _content_parts(content: Any, where: str, out: _Contents) -> None:
    if isinstance(content, str):
        out.chars += len(content)
        return
    if not isinstance(content, list):
        raise _invalid_body(f"{where}.content", "Input should be a valid string or list")
    for index, part in enumerate(content):
        here = f"{where}.content.{index}"
        if not isinstance(part, dict):
            raise _invalid_body(here, "Input should be a valid dictionary")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _invalid_body(f"{here}.text", "Field required")
            out.chars += len(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
                raise _invalid_body(f"{here}.image_url.url", "Field required")
            out.images.append((image_url["url"], here))
        else:
            raise _invalid_body(f"{here}.type", f"Input tag {kind!r} is not supported")


def _messages(value: Any) -> _Contents:
    if not isinstance(value, list):
        raise _invalid_body("messages", "Input should be a valid list")
    if not value:
        raise _bad(
            "Cannot apply chat template to an empty conversation. Provide at least one message."
        )
    out = _Contents()
    for index, message in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _invalid_body(f"{where}.role", "Field required")
        content = message.get("content")
        if content is None and message["role"] == "assistant" and message.get("tool_calls"):
            continue
        if "content" not in message:
            raise _invalid_body(f"{where}.content", "Field required")
        _content_parts(content, where, out)
    return out


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_body(name, "Input should be a valid integer")
    if value < minimum:
        raise _bad(
            f"{name} must be at least {minimum}, got {value}. (parameter={name}, value={value})",
            name,
        )
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
            raise _invalid_body("response_format", "Input should be a valid dictionary")
        kind = response_format.get("type")
        if kind not in RESPONSE_FORMATS:
            raise _invalid_body(
                "response_format.type", "Input should be 'text', 'json_object' or 'json_schema'"
            )
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise _invalid_body("response_format.json_schema.name", "Field required")
            if not isinstance(spec.get("schema"), dict):
                raise _invalid_body(
                    "response_format.json_schema.schema", "Input should be a valid dictionary"
                )
            if "strict" in spec and not isinstance(spec["strict"], bool | None):
                raise _invalid_body(
                    "response_format.json_schema.strict", "Input should be a valid boolean"
                )
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
            raise _invalid_body("guided_json", "Input should be a valid dictionary")
        return guided, "guided_json"
    return None, "none"


def _sent_options(
    temperature: float, max_tokens: int | None, seed: int | None, effort: str | None, sent: bool
) -> tuple[str, ...]:
    options = [f"temperature={float(temperature):g}"] if sent else []
    if max_tokens is not None:
        options.append(f"max_tokens={max_tokens}")
    if seed is not None:
        options.append("seed")
    if effort is not None:
        options.append(f"reasoning_effort={effort}")
    return tuple(options)


def parse_chat_request(
    body: Any,
    *,
    model: str,
    max_model_len: int,
    image_tokens: int,
    fetched: Mapping[str, bytes] | None = None,
) -> ChatRequest:
    """Validate ``body``; raises :class:`InvalidRequest` (see the module docstring).

    ``fetched`` maps the ``http(s)`` image URLs of the request to the bytes the server
    fetched for them.
    """
    if not isinstance(body, dict):
        raise _invalid_body("", "Input should be a valid dictionary or object to extract fields")
    ignored = tuple(sorted(set(body) - ACCEPTED_FIELDS))
    if body.get("stream"):
        raise _bad("stream=true is not supported by the simulated server", "stream")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise _invalid_body("temperature", "Input should be a valid number")
    if not 0 <= temperature <= 2:
        raise _bad(
            f"temperature must be in [0, 2], got {float(temperature)}. "
            f"(parameter=temperature, value={float(temperature)})",
            "temperature",
        )
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise _invalid_body("chat_template_kwargs", "Input should be a valid dictionary")
    max_tokens = _optional_int(body, "max_completion_tokens", 1)
    max_tokens = _optional_int(body, "max_tokens", 1) if max_tokens is None else max_tokens
    if max_tokens is not None and max_tokens > max_model_len:
        raise _bad(
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. "
            f"Please request fewer output tokens. (parameter=max_tokens, value={max_tokens})",
            "max_tokens",
        )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _invalid_body("seed", "Input should be a valid integer")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        choices = ", ".join(f"'{e}'" for e in REASONING_EFFORTS[:-1])
        raise _invalid_body(
            "reasoning_effort", f"Input should be {choices} or '{REASONING_EFFORTS[-1]}'"
        )
    n = _optional_int(body, "n", 1) or 1
    schema, schema_name = _schema_of(body)
    contents = _messages(body.get("messages"))
    requested = body.get("model") or model
    if requested != model:
        raise InvalidRequest(
            404, f"The model `{requested}` does not exist. Valid aliases: {model}.", "model"
        )
    keep = len(contents.images) == 1
    decoded = [decode_image(url, fetched, keep_pixels=keep) for url, _ in contents.images]
    request = ChatRequest(
        messages=body["messages"],
        text_chars=contents.chars,
        image_sizes=tuple((d.width, d.height) for d in decoded),
        max_tokens=max_tokens,
        seed=seed,
        n=n,
        schema=schema,
        schema_name=schema_name,
        digest=hashlib.sha256(orjson.dumps(body["messages"], option=orjson.OPT_SORT_KEYS)).digest(),
        ignored_fields=ignored,
        first_image=decoded[0].pixels if keep else None,
        format_type=str((body.get("response_format") or {}).get("type") or "none"),
        options=_sent_options(temperature, max_tokens, seed, effort, "temperature" in body),
    )
    prompt_tokens = request.prompt_tokens(image_tokens)
    if prompt_tokens > max_model_len:
        raise _bad(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains at least {prompt_tokens} input tokens, which exceeds this limit "
            "even without any output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={prompt_tokens})",
            "input_tokens",
        )
    room = max_model_len - prompt_tokens
    if max_tokens is None or max_tokens > room:
        request = dataclasses.replace(request, max_tokens=room)
    return request
