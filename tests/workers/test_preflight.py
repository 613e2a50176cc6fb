"""The start-up check of every replica (workers/preflight.py), over real HTTP with the
simulated server: model chosen or checked, key refused, wrong URL, unreachable replicas."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from narrator.common.config import VLMSettings
from narrator.common.errors import VLMAccessError, VLMUnavailableError
from narrator.local.redis_server import free_port
from narrator.simulator import SimConfig
from narrator.simulator.fleet import AsyncFleet
from narrator.workers.preflight import ReplicaCheck, probe_fleet, verdict

MODEL = "narrator-sim-vlm"
SECRET = "sk-preflight-secret"

pytestmark = pytest.mark.fleet(2, SimConfig(api_key=SECRET))


def vlm(urls: list[str], **values: object) -> VLMSettings:
    return VLMSettings.model_validate(
        {"urls": urls, "api_key": SECRET, "connect_timeout_s": 2.0, **values}
    )


async def test_the_model_is_taken_from_the_servers_or_checked(async_fleet: AsyncFleet) -> None:
    found = await probe_fleet(vlm(async_fleet.urls))
    assert found.model == MODEL and found.serving == tuple(async_fleet.urls)
    assert not found.unreachable
    assert (await probe_fleet(vlm(async_fleet.urls, model=MODEL))).model == MODEL


async def test_a_model_no_replica_serves_is_one_clear_line(async_fleet: AsyncFleet) -> None:
    with pytest.raises(VLMAccessError) as caught:
        await probe_fleet(vlm([u + "/v1" for u in async_fleet.urls], model="no-such-model"))
    message = str(caught.value)
    assert async_fleet.urls[0] in message and "'no-such-model'" in message
    assert f"it serves: {MODEL}" in message and "--model" in message
    assert "\n" not in message


@pytest.mark.parametrize("key", [None, "sk-wrong-key"])
async def test_a_refused_key_names_the_replica_the_status_and_the_fix(
    async_fleet: AsyncFleet, key: str | None
) -> None:
    settings = vlm(async_fleet.urls, api_key=SecretStr(key) if key else None)
    with pytest.raises(VLMAccessError) as caught:
        await probe_fleet(settings)
    message = str(caught.value)
    assert async_fleet.urls[0] in message and "HTTP 401" in message
    assert "NARRATOR_VLM_API_KEY" in message and "vllm serve --api-key" in message
    assert SECRET not in message and (key is None or key not in message)
    assert "\n" not in message


async def test_a_url_without_an_openai_api_is_refused(async_fleet: AsyncFleet) -> None:
    with pytest.raises(VLMAccessError, match=r"HTTP 404.*base URL, e\.g\. http://host:8000/v1"):
        await probe_fleet(vlm([async_fleet.urls[0] + "/not-here/v1"]))


async def test_unreachable_replicas_are_reported_and_the_others_used(
    async_fleet: AsyncFleet,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    found = await probe_fleet(vlm([dead, *async_fleet.urls]))
    assert found.model == MODEL and found.serving == tuple(async_fleet.urls)
    assert [c.replica for c in found.unreachable] == [dead]
    assert found.unreachable[0].status is None and found.unreachable[0].problem


async def test_no_replica_answering_is_unavailable() -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with pytest.raises(VLMUnavailableError, match="cannot reach the VLM server"):
        await probe_fleet(vlm(dead))


def test_verdict_rules() -> None:
    a, b = "http://a:8000", "http://b:8000"
    both = [ReplicaCheck(a, 200, ("m1", "m2")), ReplicaCheck(b, 200, ("m2",))]
    with pytest.raises(VLMAccessError, match="http://b:8000 does not serve model 'm1'"):
        verdict(both, None, has_key=False)  # the first model listed is not everywhere
    assert verdict(both, "m2", has_key=False).model == "m2"
    with pytest.raises(VLMAccessError, match="refused a request without API key"):
        verdict([ReplicaCheck(a, 403, problem="HTTP 403")], "m", has_key=False)
    with pytest.raises(VLMAccessError, match="not an OpenAI model list"):
        verdict([ReplicaCheck(a, 200, problem="the answer is not an OpenAI model list")], None,
                has_key=False)  # fmt: skip
    flaky = [ReplicaCheck(a, 503, problem="HTTP 503"), ReplicaCheck(b, 200, ("m",))]
    assert verdict(flaky, None, has_key=False).unreachable == (flaky[0],)
