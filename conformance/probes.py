"""Protocol probes: the same small requests sent to real vLLM and to narrator's simulator.

Each probe is one HTTP exchange whose status and body *shape* (not the generated text) must
be the same on both servers: OpenAI-style ``{"error": {"message", "type", "param", "code"}}``
for the OpenAI routes, ``{"detail": ...}`` for FastAPI-level errors, ``{"error":
"Unauthorized"}`` for a missing or wrong API key, ``{"server_load": N}`` from ``/load``,
the metric names narrator relies on, and whether a kept-alive connection survives a 500.

:func:`run_probes` returns one :class:`ProbeResult` per probe; :func:`compare` lines up the
results of two servers. Sync code (urllib/http.client): the probes are few and sequential.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

METRIC_NAMES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:kv_cache_usage_perc",
    "vllm:cache_config_info",
)
# Differences kept on purpose (the simulator answers no streams: narrator never streams).
KNOWN_DIFFERENCES = {"stream": "the simulator does not stream (400); narrator never asks to"}


@dataclass(frozen=True)
class ProbeResult:
    name: str
    status: int
    shape: str  # what the body looks like, e.g. "error{code,message,param,type}"
    detail: str  # a short excerpt, for the report

    def key(self) -> tuple[int, str]:
        return self.status, self.shape


def _jpeg_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def shape_of(status: int, raw: bytes) -> str:
    """A description of the body's structure: keys, not values."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return "text" if raw else "empty"
    if body is None:
        return "empty"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            if set(error) == {"message", "type", "param", "code"}:
                return f"openai-error {error.get('code')} {error.get('type')}"
            return "error{" + ",".join(sorted(error)) + "}"
        if isinstance(error, str):
            return f"error:{error}"
        if "detail" in body:
            return "detail"
        if "server_load" in body:
            return "server_load:int" if isinstance(body["server_load"], int) else "server_load"
        if body.get("object") == "chat.completion":
            return "chat.completion"
        if body.get("object") == "list":
            return "list"
        return "{" + ",".join(sorted(body)) + "}"
    return type(body).__name__


class Prober:
    """Sends the probes to one server (``base`` without ``/v1``)."""

    def __init__(self, base: str, model: str, api_key: str) -> None:
        self.base = base.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.image = _jpeg_url()

    def call(
        self,
        path: str,
        body: Any = None,
        *,
        method: str | None = None,
        key: str | bool | None = True,
        raw: bytes | None = None,
    ) -> tuple[int, bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            self.base + path, data=data, method=method or ("POST" if data else "GET")
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        token = self.api_key if key is True else key
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def chat(self, url: str | None = None, **extra: Any) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": "What colour is the cube?"}]
        content.append({"type": "image_url", "image_url": {"url": url or self.image}})
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "maxLength": 12}},
            "required": ["label"],
            "additionalProperties": False,
        }
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 24,
            "temperature": 0.0,
            "seed": 1,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "probe", "schema": schema, "strict": True},
            },
        }
        return {**body, **extra}

    def keepalive_after_500(self) -> tuple[int, bytes]:
        """A 500 (a file:// image), then GET /health on the same connection."""
        parts = urlsplit(self.base)
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}
        try:
            body = json.dumps(self.chat("file:///etc/hostname"))
            connection.request("POST", "/v1/chat/completions", body, headers)
            connection.getresponse().read()
            connection.request("GET", "/health", headers=headers)
            response = connection.getresponse()
            response.read()
            return 200, b'{"kept": true}'
        except (ConnectionError, http.client.HTTPException):
            return 200, b'{"reset": true}'
        finally:
            connection.close()

    def metrics_names(self) -> tuple[int, bytes]:
        status, raw = self.call("/metrics", key=False)
        text = raw.decode("utf-8", "replace")
        found = {n: bool(re.search(rf"^{re.escape(n)}[{{ ]", text, re.M)) for n in METRIC_NAMES}
        found["max_num_seqs (absent)"] = "max_num_seqs" not in text
        return status, json.dumps(found, sort_keys=True).encode()


def probes(p: Prober) -> list[tuple[str, Callable[[], tuple[int, bytes]]]]:
    v1 = "/v1/chat/completions"
    return [
        ("health", lambda: p.call("/health", key=False)),
        ("models", lambda: p.call("/v1/models")),
        ("models without key", lambda: p.call("/v1/models", key=False)),
        ("chat with a wrong key", lambda: p.call(v1, p.chat(), key="wrong-key")),
        ("metrics without key", lambda: (p.call("/metrics", key=False)[0], b"")),
        ("metric names", p.metrics_names),
        ("load", lambda: p.call("/load", key=False)),
        ("chat", lambda: p.call(v1, p.chat())),
        ("unknown top-level field", lambda: p.call(v1, p.chat(temperatur=0.3))),
        ("wrong model", lambda: p.call(v1, p.chat(model="no-such-model"))),
        ("file:// image", lambda: p.call(v1, p.chat("file:///etc/hostname"))),
        ("unreachable image URL", lambda: p.call(v1, p.chat("http://127.0.0.1:9/x.jpg"))),
        ("bad base64 image", lambda: p.call(v1, p.chat("data:image/jpeg;base64,@@@"))),
        ("undecodable image", lambda: p.call(v1, p.chat("data:image/jpeg;base64,aGVsbG8="))),
        ("max_tokens 0", lambda: p.call(v1, p.chat(max_tokens=0))),
        ("max_tokens over max_model_len", lambda: p.call(v1, p.chat(max_tokens=100_000))),
        ("temperature 3", lambda: p.call(v1, p.chat(temperature=3))),
        ("temperature not a number", lambda: p.call(v1, p.chat(temperature="hot"))),
        ("response_format yaml", lambda: p.call(v1, p.chat(response_format={"type": "yaml"}))),
        ("body not JSON", lambda: p.call(v1, raw=b"{not json")),
        ("empty messages", lambda: p.call(v1, p.chat(messages=[]))),
        ("GET on chat (405)", lambda: p.call(v1, method="GET")),
        ("unknown /v1 route", lambda: p.call("/v1/nothing")),
        ("unknown route", lambda: p.call("/nothing", key=False)),
        ("keep-alive after a 500", p.keepalive_after_500),
        ("stream", lambda: p.call(v1, p.chat(stream=True))),
    ]


def run_probes(base: str, model: str, api_key: str) -> list[ProbeResult]:
    prober = Prober(base, model, api_key)
    results = []
    for name, probe in probes(prober):
        status, raw = probe()
        shape = shape_of(status, raw)
        if name in ("metric names", "keep-alive after a 500"):
            shape = raw.decode()
        detail = raw[:160].decode("utf-8", "replace").replace("\n", " ")
        results.append(ProbeResult(name, status, shape, detail))
    return results


def compare(
    real: list[ProbeResult], simulated: list[ProbeResult]
) -> list[tuple[ProbeResult, ProbeResult, str]]:
    """(real, simulated, verdict) per probe: 'same', 'known: ...' or 'DIFFERENT'."""
    rows = []
    for a, b in zip(real, simulated, strict=True):
        if a.key() == b.key():
            verdict = "same"
        elif a.name in KNOWN_DIFFERENCES:
            verdict = "known: " + KNOWN_DIFFERENCES[a.name]
        else:
            verdict = "DIFFERENT"
        rows.append((a, b, verdict))
    return rows
