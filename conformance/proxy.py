"""A recording reverse proxy between narrator and one vLLM server (aiohttp).

Every request narrator sends is forwarded unchanged (method, path, query, body, headers but
the hop-by-hop ones) to the upstream server, and the answer is passed back unchanged. Along
the way the proxy records what crossed it, so the conformance report can say exactly what
narrator sent and read:

* one :class:`Exchange` per request: method, path, status, latency, the prompt kind of a chat
  request (its ``json_schema`` name, or ``json_object``/``text``; ``plan_subtasks`` of a
  multi-window episode is the kind ``plan_window``), images, ``max_tokens``, whether it was a
  corrective retry, the answer's ``finish_reason``;
* the first request and answer of each prompt kind, in full but for the image data (a data
  URL is shortened to its media type and size), in ``samples/<kind>.json``;
* every ``/metrics`` text narrator fetched (the last one kept, with the count of fetches);
* the bodies of every 4xx/5xx answer.

Invariants: the proxy never changes a request or an answer; a connection error upstream is
answered 502 and recorded as such; records are appended on the proxy's own event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)
_PART = re.compile(r"\(part (\d+) of (\d+)\)")
_DATA_URL = re.compile(r"^data:([^;,]+)(;base64)?,")


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    latency_s: float
    kind: str | None = None
    images: int = 0
    max_tokens: int | None = None
    corrective: bool = False
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Recording:
    """Everything one proxy saw (read it after the run)."""

    upstream: str
    exchanges: list[Exchange] = field(default_factory=list)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics_fetches: int = 0
    last_metrics: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)

    def status_counts(self) -> Counter[int]:
        return Counter(e.status for e in self.exchanges)

    def chat(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.kind is not None]

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        lines = b"".join(orjson.dumps(asdict(e)) + b"\n" for e in self.exchanges)
        (out / "exchanges.jsonl").write_bytes(lines)
        samples = out / "samples"
        samples.mkdir(exist_ok=True)
        for kind, sample in sorted(self.samples.items()):
            (samples / f"{kind}.json").write_bytes(orjson.dumps(sample, option=orjson.OPT_INDENT_2))
        (out / "metrics_last.txt").write_text(self.last_metrics, encoding="utf-8")
        (out / "errors.json").write_bytes(orjson.dumps(self.errors, option=orjson.OPT_INDENT_2))


def shorten_images(value: Any) -> Any:
    """A copy of a request body with every data URL replaced by '<media type, N bytes>'."""
    if isinstance(value, dict):
        return {k: shorten_images(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten_images(v) for v in value]
    if isinstance(value, str) and (match := _DATA_URL.match(value)):
        return f"<{match.group(1)} data URL, {len(value) - match.end()} base64 chars>"
    return value


def _texts(messages: Any) -> str:
    parts: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return "\n".join(parts)


def classify(body: dict[str, Any]) -> tuple[str, int, bool]:
    """(prompt kind, images, corrective retry) of a chat-completion request body."""
    response_format = body.get("response_format") or {}
    kind = str(response_format.get("type") or "text")
    if kind == "json_schema":
        kind = str((response_format.get("json_schema") or {}).get("name") or "json_schema")
    messages = body.get("messages") or []
    text = _texts(messages)
    if kind == "plan_subtasks" and (match := _PART.search(text)) and int(match.group(2)) > 1:
        kind = "plan_window"
    images = sum(
        1
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, dict) and p.get("type") == "image_url"
    )
    corrective = any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)
    return kind, images, corrective


class RecordingProxy:
    """Serve the proxy on 127.0.0.1:port (0 = a free port) in a thread of its own."""

    def __init__(self, upstream: str, timeout_s: float = 600.0) -> None:
        self.recording = Recording(upstream.rstrip("/"))
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RecordingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        # A fresh upstream connection per request: vLLM resets a kept-alive connection after
        # a 500, and a pooled connection reused after that would be a 502 of the proxy's own.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False
        )
        app = web.Application(client_max_size=512 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        started = time.monotonic()
        target = self.recording.upstream + request.path_qs
        try:
            async with self._session.request(
                request.method, target, data=body or None, headers=headers
            ) as upstream:
                answer = await upstream.read()
                status = upstream.status
                answer_headers = {
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
                }
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, answer, answer_headers = 502, str(exc).encode(), {}
        self._record(request.method, request.path, body, status, answer, started)
        return web.Response(status=status, body=answer, headers=answer_headers)

    def _record(
        self, method: str, path: str, body: bytes, status: int, answer: bytes, started: float
    ) -> None:
        exchange = Exchange(method, path, status, round(time.monotonic() - started, 4))
        request_json: Any = None
        if path.endswith("/chat/completions") and body:
            try:
                request_json = orjson.loads(body)
            except orjson.JSONDecodeError:
                request_json = None
            if isinstance(request_json, dict):
                exchange.kind, exchange.images, exchange.corrective = classify(request_json)
                exchange.max_tokens = request_json.get("max_tokens")
        answer_json: Any = None
        if answer[:1] in (b"{", b"["):
            try:
                answer_json = orjson.loads(answer)
            except orjson.JSONDecodeError:
                answer_json = None
        if exchange.kind is not None and status == 200 and isinstance(answer_json, dict):
            choices = answer_json.get("choices") or [{}]
            exchange.finish_reason = choices[0].get("finish_reason")
        if status >= 400:
            exchange.error = answer[:500].decode("utf-8", "replace")
            self.recording.errors.append(
                {"method": method, "path": path, "status": status, "body": exchange.error}
            )
        if path == "/metrics" and status == 200:
            self.recording.metrics_fetches += 1
            self.recording.last_metrics = answer.decode("utf-8", "replace")
        sample_key = exchange.kind if not exchange.corrective else f"{exchange.kind}.corrective"
        if exchange.kind is not None and sample_key not in self.recording.samples:
            self.recording.samples[sample_key] = {
                "status": status,
                "request": shorten_images(request_json),
                "answer": answer_json if answer_json is not None else exchange.error,
            }
        self.recording.exchanges.append(exchange)
