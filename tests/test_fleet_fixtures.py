"""The shared simulated-VLM fixtures of tests/conftest.py do what their docstring promises:
the module marker sizes and configures them, the module's ``fleet`` is one fleet for all its
tests, and each test finds it without the faults or the counts an earlier test left.

The two ``leftovers`` tests run in file order (pytest's default): the first leaves faults and
counts behind on purpose, the second checks that it does not see them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from narrator.simulator.config import DEFAULT_MODEL, SimConfig
from narrator.simulator.fleet import AsyncFleet, Fleet

pytestmark = pytest.mark.fleet(2, SimConfig(slots=3))

SEEN: list[Fleet] = []


def _chat(url: str) -> int:
    """POST one small chat request; the HTTP status."""
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps({**body, "max_tokens": 8}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def test_the_marker_sizes_and_configures_the_fleet(fleet: Fleet) -> None:
    assert len(fleet.urls) == 2
    assert [fleet.stats(i)["slots"] for i in range(2)] == [3, 3]


def test_leftovers_a_test_leaves_faults_and_counts_behind(fleet: Fleet) -> None:
    SEEN.append(fleet)
    fleet.set_faults(0, error_rate=1.0, error_status=503)
    assert _chat(fleet.urls[0]) == 503
    assert fleet.stats(0)["requests_total"] == 1


def test_leftovers_the_next_test_finds_them_cleared(fleet: Fleet) -> None:
    assert len(SEEN) == 1 and SEEN[0] is fleet  # one fleet object: started once per module
    assert fleet.stats(0)["requests_total"] == 0
    assert _chat(fleet.urls[0]) == 200


async def test_async_fleet_follows_the_marker_on_the_test_loop(async_fleet: AsyncFleet) -> None:
    assert len(async_fleet.urls) == 2
    assert async_fleet.stats(1)["slots"] == 3
    assert async_fleet.stats(0)["requests_total"] == 0
