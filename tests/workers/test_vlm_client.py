"""VLMClient and ReplicaPool against the simulated fleet, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import random
from typing import Any

import jsonschema
import pytest
from PIL import Image
from prometheus_client import REGISTRY
from pydantic import SecretStr
from structlog.testing import capture_logs

from narrator.common.config import VLMSettings
from narrator.common.errors import (
    BadAnswerError,
    VLMAccessError,
    VLMRequestRejectedError,
    VLMUnavailableError,
)
from narrator.simulator import SimConfig, start_fleet_async
from narrator.simulator.fleet import AsyncFleet
from narrator.workers.replicas import ReplicaPool
from narrator.workers.vlm_api import ChatRequest
from narrator.workers.vlm_client import VLMClient
from narrator.workers.vlm_protocol import backoff_delay
from tests.support.processes import wait_until_async

MODEL = "narrator-sim-vlm"
pytestmark = pytest.mark.fleet(3, SimConfig(slots=8))
SPATIAL = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "relation": {"enum": ["left_of", "right_of", "on", "in", "above", "below", "near"]},
        "object": {"type": "string"},
    },
    "required": ["subject", "relation", "object"],
    "additionalProperties": False,
}


def jpeg_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = jpeg_url()


def messages(question: str = "Where is the cube?") -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": IMAGE}},
            ],
        }
    ]


def settings(fleet: AsyncFleet, **overrides: Any) -> VLMSettings:
    values: dict[str, Any] = {
        "urls": tuple(fleet.urls),
        "timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "max_in_flight_per_replica": 4,
        "max_attempts": 6,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "health_interval_s": 0.2,
    }
    return VLMSettings(**{**values, **overrides})


def strict_check(data: dict[str, Any]) -> None:
    try:
        jsonschema.validate(data, SPATIAL)
    except jsonschema.ValidationError as exc:
        raise ValueError(f"answer does not match the schema: {exc.message}") from exc


def strict_parse(data: dict[str, Any]) -> dict[str, Any]:
    strict_check(data)
    return data


async def ask(client: VLMClient, question: str = "Where is the cube?", **kw: Any) -> Any:
    """One request through the client's :meth:`VLMClient.ask`; ``check`` (a function that
    raises ``ValueError``, or None) becomes the parser."""
    check = kw.pop("check", strict_check)
    values: dict[str, Any] = {
        "module": "vqa",
        "item": question,
        "messages": messages(question),
        "schema": SPATIAL,
        "schema_name": "vqa_spatial",
        "model": MODEL,
        "max_tokens": 256,
        "temperature": 0.0,
        "seed": 1,
    }

    def parse(data: dict[str, Any]) -> dict[str, Any]:
        if check is not None:
            check(data)
        return data

    return await client.ask(ChatRequest(**{**values, **kw}), parse)


def total(fleet: AsyncFleet, key: str = "requests_total") -> int:
    return sum(fleet.stats(i)[key] for i in range(len(fleet.replicas)))


async def test_happy_path_returns_parsed_json_and_counts(async_fleet: AsyncFleet) -> None:
    before = REGISTRY.get_sample_value(
        "narrator_vlm_requests_total",
        {"replica": async_fleet.urls[0], "module": "vqa", "outcome": "ok"},
    )
    async with VLMClient(settings(async_fleet)) as client:
        answer = await ask(client, chat_template_kwargs={"enable_thinking": False})
        strict_check(answer.data)
        assert answer.replica in async_fleet.urls and answer.attempts == 1
        assert answer.finish_reason == "stop" and answer.images == 1
        assert answer.prompt_tokens > 0 and answer.completion_tokens > 0
        counters = client.counters()
    assert counters["vqa:requests"] == 1 and counters["vqa:attempts"] == 1
    assert counters["vqa:ok"] == 1 and counters["vqa:images"] == 1
    assert counters["vqa:prompt_tokens"] == answer.prompt_tokens
    assert counters["vqa:completion_tokens"] == answer.completion_tokens
    assert "vqa:retries" not in counters
    assert sum(async_fleet.stats(i)["by_schema"].get("vqa_spatial", 0) for i in range(3)) == 1
    after = REGISTRY.get_sample_value(
        "narrator_vlm_requests_total",
        {"replica": async_fleet.urls[0], "module": "vqa", "outcome": "ok"},
    )
    assert (after or 0) - (before or 0) == (1 if answer.replica == async_fleet.urls[0] else 0)


async def test_resolve_model_asks_the_server_unless_configured(async_fleet: AsyncFleet) -> None:
    async with VLMClient(settings(async_fleet)) as client:
        assert await client.resolve_model() == MODEL
    async with VLMClient(settings(async_fleet, model="served-name")) as client:
        assert await client.resolve_model() == "served-name"


async def test_wrapped_answers_are_parsed_without_retry(async_fleet: AsyncFleet) -> None:
    for index in range(3):
        async_fleet.set_faults(index, think_tags=True, prose=True, fences=True)
    async with VLMClient(settings(async_fleet)) as client:
        answers = await asyncio.gather(*(ask(client, f"q{i}") for i in range(6)))
    assert all(a.attempts == 1 for a in answers)
    assert "vqa:corrective_retries" not in client.counters()


async def test_server_errors_are_retried_on_another_replica(async_fleet: AsyncFleet) -> None:
    async_fleet.set_faults(0, error_rate=1.0, error_status=503)
    async with VLMClient(settings(async_fleet)) as client:
        answers = await asyncio.gather(*(ask(client, f"q{i}") for i in range(12)))
        assert all(a.replica != async_fleet.urls[0] for a in answers)
        assert async_fleet.stats(0)["by_status"].get("503", 0) >= 1
        assert client.counters()["vqa:retries"] >= 1
        assert not client.pool.replicas[0].healthy or client.pool.replicas[0].failure_streak > 0


async def test_hanging_replica_times_out_and_the_request_moves_on(async_fleet: AsyncFleet) -> None:
    async_fleet.set_faults(0, hang_rate=1.0)
    async with VLMClient(settings(async_fleet, timeout_s=0.4)) as client:
        answers = await asyncio.gather(*(ask(client, f"q{i}") for i in range(6)))
    assert all(a.replica != async_fleet.urls[0] for a in answers)
    assert async_fleet.stats(0)["hung"] >= 1


async def test_dead_replica_is_taken_out_and_requests_still_succeed(
    async_fleet: AsyncFleet,
) -> None:
    await async_fleet.stop_replica(1)
    async with VLMClient(settings(async_fleet)) as client:
        answers = await asyncio.gather(*(ask(client, f"q{i}") for i in range(20)))
        assert len(answers) == 20 and all(a.replica != async_fleet.urls[1] for a in answers)
        await wait_until_async(
            lambda: [r.healthy for r in client.pool.replicas] == [True, False, True],
            30,
            "the dead replica was not taken out",
        )
        label = {"replica": async_fleet.urls[1]}
        assert REGISTRY.get_sample_value("narrator_vlm_replica_healthy", label) == 0
        await async_fleet.start_replica(1)
        await wait_until_async(
            lambda: client.pool.replicas[1].healthy, 30, "the replica did not come back"
        )


async def test_all_replicas_down_gives_unavailable_after_the_attempt_budget(
    async_fleet: AsyncFleet,
) -> None:
    for index in range(3):
        await async_fleet.stop_replica(index)
    async with VLMClient(settings(async_fleet, max_attempts=4)) as client:
        with pytest.raises(VLMUnavailableError, match="after 4 attempts"):
            await ask(client)
        counters = client.counters()
    assert counters["vqa:attempts"] == 4 and counters["vqa:failures:unavailable"] == 1


async def test_requests_survive_a_short_outage_of_every_replica(async_fleet: AsyncFleet) -> None:
    for index in range(3):
        await async_fleet.stop_replica(index)
    async with VLMClient(settings(async_fleet, backoff_base_s=0.05, backoff_max_s=0.2)) as client:

        async def restart() -> None:
            await asyncio.sleep(0.15)
            for index in range(3):
                await async_fleet.start_replica(index)

        answer, _ = await asyncio.gather(ask(client), restart())
    assert answer.attempts > 1


async def test_corrective_retry_fixes_a_bad_answer(async_fleet: AsyncFleet) -> None:
    calls: list[dict[str, Any]] = []

    def picky(data: dict[str, Any]) -> None:
        calls.append(data)
        if len(calls) == 1:
            raise ValueError("relation must describe the cube")

    async with VLMClient(settings(async_fleet)) as client:
        answer = await ask(client, check=picky)
        counters = client.counters()
    assert answer.attempts == 2 and len(calls) == 2
    assert counters["vqa:corrective_retries"] == 1 and total(async_fleet) == 2


@pytest.mark.parametrize("fault", ["wrong_shape_rate", "garbage_rate"])
async def test_persistently_bad_answers_end_in_bad_answer_error(
    async_fleet: AsyncFleet, fault: str
) -> None:
    for index in range(3):
        async_fleet.set_faults(index, **{fault: 1.0})
    async with VLMClient(settings(async_fleet)) as client:
        with pytest.raises(BadAnswerError, match="after a corrective retry"):
            await ask(client)
        counters = client.counters()
    assert total(async_fleet) == 2
    assert counters["vqa:corrective_retries"] == 1 and counters["vqa:failures:bad_answer"] == 1


async def test_ignored_schema_is_caught_by_the_check(async_fleet: AsyncFleet) -> None:
    for index in range(3):
        async_fleet.set_faults(index, ignore_schema=True)
    async with VLMClient(settings(async_fleet)) as client:
        with pytest.raises(BadAnswerError, match="Additional properties"):
            await ask(client)
        answer = await ask(client, check=None)
    assert answer.data["confidence_note"]


@pytest.mark.parametrize(
    ("change", "status", "error", "counter"),
    [
        ({"model": "not-served"}, "404", VLMAccessError, "access"),
        ({"max_tokens": 40_000}, "400", VLMRequestRejectedError, "rejected"),
    ],
)
async def test_refused_requests_are_not_retried(
    async_fleet: AsyncFleet,
    change: dict[str, Any],
    status: str,
    error: type[Exception],
    counter: str,
) -> None:
    """A wrong model (404) refuses every request: VLMAccessError, which fails the job; a
    request too long for the model (400) is refused alone: VLMRequestRejectedError, which
    fails the item. Neither is retried."""
    async with VLMClient(settings(async_fleet)) as client:
        with pytest.raises(error, match=f"HTTP {status}"):
            await ask(client, **change)
        counters = client.counters()
    assert total(async_fleet) == 1 and counters[f"vqa:failures:{counter}"] == 1
    assert "vqa:retries" not in counters


def test_access_errors_are_not_item_errors() -> None:
    from narrator.common.errors import PermanentError
    from narrator.workers.modules.asking import ITEM_ERRORS

    assert issubclass(VLMAccessError, PermanentError)
    assert not issubclass(VLMAccessError, ITEM_ERRORS)
    assert issubclass(VLMRequestRejectedError, ITEM_ERRORS)


async def test_cut_answer_is_retried_once_with_doubled_max_tokens(async_fleet: AsyncFleet) -> None:
    async with VLMClient(settings(async_fleet)) as client:
        full = await ask(client, max_tokens=1000)
        needed = full.completion_tokens
        fixed = await ask(client, max_tokens=math.ceil(needed * 0.6))
        assert fixed.data == full.data and fixed.attempts == 2
        assert client.counters()["vqa:length_retries"] == 1
        with pytest.raises(BadAnswerError, match="max_tokens"):
            await ask(client, max_tokens=max(1, needed // 3))
    assert client.counters()["vqa:length_retries"] == 2


async def test_truncating_server_ends_in_bad_answer_error(async_fleet: AsyncFleet) -> None:
    for index in range(3):
        async_fleet.set_faults(index, truncate_rate=1.0)
    async with VLMClient(settings(async_fleet)) as client:
        with pytest.raises(BadAnswerError, match="cut at max_tokens=512"):
            await ask(client)
    assert total(async_fleet) == 2


async def test_in_flight_budget_is_never_exceeded_and_load_spreads(async_fleet: AsyncFleet) -> None:
    for index in range(3):
        async_fleet.set_faults(index, base_s=0.05)
    async with VLMClient(settings(async_fleet, max_in_flight_per_replica=2)) as client:
        answers = await asyncio.gather(*(ask(client, f"q{i}") for i in range(30)))
    assert len(answers) == 30
    for index in range(3):
        stats = async_fleet.stats(index)
        assert stats["max_in_flight"] <= 2
        assert stats["requests_total"] >= 5, stats["requests_total"]


async def test_least_loaded_choice_sends_less_to_a_slow_replica(async_fleet: AsyncFleet) -> None:
    async_fleet.set_faults(0, base_s=0.6)
    async_fleet.set_faults(1, base_s=0.01)
    async_fleet.set_faults(2, base_s=0.01)
    async with VLMClient(settings(async_fleet, max_in_flight_per_replica=8)) as client:

        async def staggered(i: int) -> Any:
            await asyncio.sleep(0.025 * i)
            return await ask(client, f"q{i}")

        await asyncio.gather(*(staggered(i) for i in range(20)))
    counts = [async_fleet.stats(i)["requests_total"] for i in range(3)]
    # the slow replica holds its first request for 0.6 s, so the fast ones (idle again long
    # before the next arrival) have fewer in flight and take nearly everything meanwhile
    assert counts[0] <= 3 and min(counts[1:]) >= 7, counts


async def test_api_key_is_sent_and_never_logged() -> None:
    secret = "sk-test-very-secret"
    async with await start_fleet_async(1, SimConfig(api_key=secret)) as fleet:
        with capture_logs() as logs:
            async with VLMClient(settings(fleet, api_key=SecretStr(secret))) as client:
                assert (await ask(client)).attempts == 1
                assert await client.resolve_model() == MODEL
        assert secret not in repr(logs)
        async with VLMClient(settings(fleet)) as anonymous:
            with pytest.raises(VLMAccessError, match="HTTP 401"):
                await ask(anonymous)


async def test_retries_are_logged_with_replica_status_and_attempt(async_fleet: AsyncFleet) -> None:
    for index in range(3):
        async_fleet.set_faults(index, error_rate=1.0, error_status=500)
    with capture_logs() as logs:
        async with VLMClient(settings(async_fleet, max_attempts=2)) as client:
            with pytest.raises(VLMUnavailableError):
                await ask(client)
    retries = [e for e in logs if e["event"] == "vlm_attempt_failed_will_retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(e["outcome"] == "http_500" and e["replica"] in async_fleet.urls for e in retries)


def test_backoff_is_full_jitter_capped() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(a, 0.5, 4.0, rng) for a in range(10) for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(backoff_delay(0, 0.5, 4.0, rng) for _ in range(100)) <= 0.5
    assert max(delays) > 3.0


def test_client_without_urls_is_a_config_error() -> None:
    from narrator.common.errors import ConfigError

    with pytest.raises(ConfigError, match="no VLM URLs"):
        VLMClient(VLMSettings())


async def test_pool_waits_when_full_prefers_untried_and_probes_when_all_down() -> None:
    pool = ReplicaPool(["http://pool-a", "http://pool-b"], budget=1)
    a, b = pool.replicas
    assert {(await pool.acquire()).url, (await pool.acquire()).url} == {a.url, b.url}
    waiter = asyncio.create_task(pool.acquire())
    for _ in range(10):  # the waiter runs until it waits on the pool (one turn is enough)
        await asyncio.sleep(0)
    assert not waiter.done(), "both replicas are at their budget"
    await pool.release(a)
    assert await asyncio.wait_for(waiter, 1) is a
    await pool.release(a)
    await pool.release(b)
    assert await pool.acquire(avoid=[a]) is b
    await pool.release(b)
    for _ in range(3):
        await pool.record_failure(a, "connection refused")
    assert not a.healthy and pool.healthy_count == 1
    assert await pool.acquire() is b
    await pool.release(b)
    await pool.set_healthy(b, False, "GET /health failed")
    probe = await pool.acquire()
    assert probe in (a, b), "with no healthy replica an unhealthy one is tried"
    await pool.release(probe)
    await pool.record_success(a)
    assert a.healthy and a.failure_streak == 0
