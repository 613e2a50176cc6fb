"""The simulated replica's latency model (pure), including the occupancy slowdown."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from narrator.simulator import SimConfig, start_fleet_async
from narrator.simulator.capacity import service_time_s
from narrator.simulator.config import apply_updates

CALIBRATED = {"base_s": 0.05, "per_image_s": 0.04, "per_output_token_s": 0.02}


def test_without_the_occupancy_term_service_time_is_linear_in_images_and_tokens() -> None:
    for busy in (1, 4, 8):
        seconds = service_time_s(
            **CALIBRATED, occupancy_slowdown=0.0, images=2, completion_tokens=10, busy=busy, slots=8
        )
        assert seconds == pytest.approx(0.05 + 0.08 + 0.2)


def test_calibrated_model_grows_with_the_busy_share_of_the_slots() -> None:
    work = 0.05 + 0.04 * 1 + 0.02 * 30

    def at(busy: int) -> float:
        return service_time_s(
            **CALIBRATED, occupancy_slowdown=0.2, images=1, completion_tokens=30, busy=busy, slots=8
        )

    assert at(1) == pytest.approx(work * (1 + 0.2 / 8))  # alone: 1 of 8 slots busy
    assert at(4) == pytest.approx(work * 1.1)
    assert at(8) == pytest.approx(work * 1.2)  # full replica
    assert [at(b) for b in range(1, 9)] == sorted(at(b) for b in range(1, 9))


def test_occupancy_is_bounded_to_the_slots() -> None:
    common = {**CALIBRATED, "occupancy_slowdown": 0.5, "images": 0, "completion_tokens": 0}
    assert service_time_s(**common, busy=20, slots=4) == pytest.approx(0.05 * 1.5)
    assert service_time_s(**common, busy=-1, slots=4) == pytest.approx(0.05)
    assert service_time_s(**common, busy=1, slots=0) == pytest.approx(0.05 * 1.5)


def test_occupancy_slowdown_is_a_setting_default_off() -> None:
    assert SimConfig().occupancy_slowdown == 0.0
    assert apply_updates(SimConfig(), {"occupancy_slowdown": 0.2}).occupancy_slowdown == 0.2
    with pytest.raises(ValueError):
        apply_updates(SimConfig(), {"occupancy_slowdown": -1})


async def test_a_full_replica_holds_each_slot_longer() -> None:
    config = SimConfig(slots=2, base_s=0.2, occupancy_slowdown=1.0)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    async with await start_fleet_async(1, config) as fleet:
        url = fleet.urls[0] + "/v1/chat/completions"
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(url, json=body) as response:
                assert response.status == 200
            alone = time.monotonic() - started
            fleet.reset()

            async def one() -> int:
                async with session.post(url, json=body) as response:
                    return response.status

            assert await asyncio.gather(one(), one()) == [200, 200]
            timeline = fleet.timeline(0)
        # alone: 0.2 x (1 + 1/2); each of the two: 0.2 x (1 + busy/2), busy counted at its start
        assert alone >= 0.3
        assert len(timeline) == 2
        for entry in timeline:
            busy = sum(1 for o in timeline if o["start_s"] <= entry["start_s"] < o["end_s"])
            assert entry["end_s"] - entry["start_s"] >= 0.2 * (1 + busy / 2) - 0.005
