"""The start-up check of every VLM replica, before a run is enqueued (aiohttp shell, pure verdict).

``annotate`` and ``enqueue`` call :func:`check_fleet` before they touch Redis or the dataset.
Each replica is asked ``GET <base>/v1/models`` with the API key; :func:`verdict` then decides:

* a replica that refuses the key (401/403), or has no OpenAI API at that URL (404/405), or
  does not list the model, is a :class:`~narrator.common.errors.VLMAccessError`: one line that
  names the replica, the status and what to do, and the command exits 2. Nothing of a run can
  succeed against such a replica, so it is not worth starting one;
* with no model configured, the model is the first one the first answering replica lists, and
  every other answering replica must list it too;
* a replica that does not answer (connection refused, timeout, 5xx) is reported in
  :attr:`FleetCheck.unreachable` and the run goes on with the others (the client keeps
  checking it and takes it into rotation when it comes up); when no replica answers at all,
  :class:`~narrator.common.errors.VLMUnavailableError` ("cannot reach the VLM server ...").

Invariant: the API key is sent, never printed; replicas are named by their redacted label.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from narrator.common.config import VLMSettings
from narrator.common.errors import ConfigError, VLMAccessError, VLMUnavailableError
from narrator.common.logging import get_logger, redact_text

log = get_logger(__name__)


@dataclass(frozen=True)
class ReplicaCheck:
    replica: str  # redacted base URL
    status: int | None  # HTTP status of GET /v1/models; None when there was no answer
    models: tuple[str, ...] = ()
    problem: str = ""  # why there is no model list ("" when there is one)


@dataclass(frozen=True)
class FleetCheck:
    model: str
    serving: tuple[str, ...]  # replicas that listed the model
    unreachable: tuple[ReplicaCheck, ...]


def _models_of(raw: bytes) -> tuple[str, ...] | None:
    try:
        body = orjson.loads(raw)
        return tuple(str(entry["id"]) for entry in body["data"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


async def check_replica(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout_s: float
) -> ReplicaCheck:
    label = redact_text(url)
    try:
        async with session.get(
            f"{url}/v1/models",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            raw = await response.read()
            status = response.status
    except TimeoutError:
        return ReplicaCheck(label, None, problem=f"no answer within {timeout_s:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return ReplicaCheck(label, None, problem=f"{type(exc).__name__}: {exc}")
    if status != 200:
        return ReplicaCheck(label, status, problem=f"HTTP {status}")
    models = _models_of(raw)
    if models is None:
        return ReplicaCheck(label, status, problem="the answer is not an OpenAI model list")
    return ReplicaCheck(label, status, models=models)


def verdict(checks: Sequence[ReplicaCheck], model: str | None, *, has_key: bool) -> FleetCheck:
    """The model to use and the replicas to warn about; raises for a fleet not worth a run."""
    for check in checks:
        if check.status in (401, 403):
            hint = (
                "set NARRATOR_VLM_API_KEY to the key the server was started with "
                "(vllm serve --api-key)"
                if has_key
                else "the server wants an API key: set NARRATOR_VLM_API_KEY to the key it "
                "was started with (vllm serve --api-key)"
            )
            what = "refused the API key" if has_key else "refused a request without API key"
            raise VLMAccessError(f"{check.replica} {what} (HTTP {check.status}); {hint}")
        if check.status in (404, 405) or (check.status == 200 and check.problem):
            raise VLMAccessError(
                f"{check.replica} has no OpenAI-compatible API there (GET /v1/models: "
                f"{check.problem}); give the server's base URL, e.g. http://host:8000/v1"
            )
    answering = [c for c in checks if not c.problem]
    if not answering:
        problems = "; ".join(f"{c.replica}: {c.problem}" for c in checks)
        raise VLMUnavailableError(
            f"cannot reach the VLM server ({problems}). Start vLLM there (or pass --serve to "
            "have narrator start it), then run again."
        )
    chosen = model
    if chosen is None:
        if not answering[0].models:
            raise VLMAccessError(
                f"{answering[0].replica} lists no model (GET /v1/models); pass --model NAME"
            )
        chosen = answering[0].models[0]
    for check in answering:
        if chosen not in check.models:
            served = ", ".join(check.models) or "none"
            raise VLMAccessError(
                f"{check.replica} does not serve model {chosen!r} (it serves: {served}); "
                "pass --model with a model every replica serves (HTTP 404 otherwise)"
            )
    return FleetCheck(
        model=chosen,
        serving=tuple(c.replica for c in answering),
        unreachable=tuple(c for c in checks if c.problem),
    )


async def probe_fleet(
    settings: VLMSettings, session: aiohttp.ClientSession | None = None
) -> FleetCheck:
    """Ask every replica for its models and judge the fleet (see the module docstring)."""
    if not settings.urls:
        raise ConfigError("no VLM URLs configured: pass --vlm-url (or --serve)")
    headers: dict[str, str] = {}
    if settings.api_key is not None:
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    timeout_s = settings.connect_timeout_s
    if session is None:
        async with aiohttp.ClientSession() as own:
            checks = await asyncio.gather(
                *(check_replica(own, url, headers, timeout_s) for url in settings.urls)
            )
    else:
        checks = await asyncio.gather(
            *(check_replica(session, url, headers, timeout_s) for url in settings.urls)
        )
    found = verdict(checks, settings.model, has_key=settings.api_key is not None)
    for check in found.unreachable:
        log.warning(
            "vlm_replica_unreachable_at_start", replica=check.replica, problem=check.problem
        )
    return found


def check_fleet(settings: VLMSettings) -> FleetCheck:
    """:func:`probe_fleet` from synchronous code (the CLI, before enqueueing)."""
    return asyncio.run(probe_fleet(settings))
