"""deploy/docker-compose.yml, deploy/prometheus.yml, deploy/Dockerfile and .dockerignore.

Offline checks, no Docker engine: the compose file validates against the Compose
Specification schema (as vendored by check-jsonschema), and every service carries the settings
docs/DEPLOY.md promises (Redis persistence and password, GPU per vLLM replica, a scalable and
read-only worker, one read-write writer, Prometheus finding every worker).
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy_support.compose import (
    COMPOSE_FILE,
    DOCKERFILE,
    PROMETHEUS_FILE,
    REPO_ROOT,
    MissingVariableError,
    bind_mounts,
    interpolate_text,
    load_compose,
    load_compose_raw,
    service_command,
    service_environment,
)
from tests.support.deploy_support.schemas import compose_spec_schema, schema_errors

# What a user puts in deploy/.env (docs/DEPLOY.md); only REDIS_PASSWORD is required.
DOT_ENV = {"REDIS_PASSWORD": "0123abcd", "NARRATOR_DATASET": "pick_place"}
NARRATOR_ROLES = ("worker", "writer", "producer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(DOT_ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def vllm_services(services: dict[str, Any]) -> dict[str, Any]:
    return {name: svc for name, svc in services.items() if re.fullmatch(r"vllm-\d+", name)}


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = compose_spec_schema()
    assert schema_errors(schema, load_compose_raw()) == []
    assert schema_errors(schema, compose) == []


def test_schema_check_catches_a_misspelt_setting() -> None:
    broken = copy.deepcopy(load_compose_raw())
    broken["services"]["worker"]["restarts"] = "always"
    broken["services"]["redis"]["healthcheck"]["intervall"] = "5s"
    errors = schema_errors(compose_spec_schema(), broken)
    assert any("restarts" in e for e in errors), errors
    assert any("intervall" in e for e in errors), errors


def test_missing_redis_password_stops_compose_with_a_clear_message() -> None:
    with pytest.raises(MissingVariableError, match="REDIS_PASSWORD"):
        load_compose({})
    assert interpolate_text("a$${B}${C:-d}${E-f}${G:+h}", {"G": "1", "E": ""}) == "a${B}dh"


def test_redis_persists_refuses_eviction_and_requires_the_password(
    services: dict[str, Any],
) -> None:
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis" and ":" in redis["image"]
    command = service_command(redis)
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "redis-server"
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--requirepass"] == DOT_ENV["REDIS_PASSWORD"]
    probe = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in probe and "-a" in probe and "ping" in probe
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "ports" not in redis, "Redis must not be published on the host"


def test_each_vllm_replica_reserves_its_own_gpu_and_is_health_checked(
    services: dict[str, Any],
) -> None:
    replicas = vllm_services(services)
    assert len(replicas) >= 2
    devices_seen: list[str] = []
    for name, svc in replicas.items():
        image, _, tag = svc["image"].partition(":")
        assert image == "vllm/vllm-openai" and tag and tag != "latest", name
        command = service_command(svc)
        assert "--model" in command and command[command.index("--port") + 1] == "8000"
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        ids = device.get("device_ids")
        assert ids is not None or device.get("count") == 1, name
        if ids is not None:
            assert len(ids) == 1, name
            devices_seen.extend(ids)
        assert "/health" in " ".join(svc["healthcheck"]["test"])
        assert any("huggingface" in str(v) for v in svc["volumes"]), "HF cache volume"
    assert len(devices_seen) == len(set(devices_seen)), "two replicas on one GPU"


def test_workers_know_every_vllm_replica_and_its_model(services: dict[str, Any]) -> None:
    env = service_environment(services["worker"])
    urls = env["NARRATOR_VLM_URLS"].split(",")
    # OpenAI-style base URLs, as users write them (narrator also takes them without /v1).
    assert sorted(urls) == sorted(f"http://{name}:8000/v1" for name in vllm_services(services))
    for svc in vllm_services(services).values():
        command = service_command(svc)
        assert command[command.index("--model") + 1] == env["NARRATOR_MODEL"]


def test_worker_scales_and_reads_the_dataset_read_only(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert service_command(worker) == ["worker"]
    (mount,) = bind_mounts(worker)
    assert mount["target"] == "/datasets" and mount["read_only"] is True
    env = service_environment(worker)
    assert env["NARRATOR_REDIS_URL"] == f"redis://:{DOT_ENV['REDIS_PASSWORD']}@redis:6379/0"
    assert int(env["NARRATOR_WORKERS"]) >= 1
    assert env["NARRATOR_METRICS_PORT"].isdigit()
    grace = _duration_s(worker["stop_grace_period"])
    assert grace > int(env["NARRATOR_JOB_TIMEOUT_S"]), "a stop must let the job in hand finish"
    for dependency in ["redis", *vllm_services(services)]:
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"


def test_one_writer_with_the_dataset_read_write(services: dict[str, Any]) -> None:
    writer = services["writer"]
    assert service_command(writer) == ["writer"]
    assert writer.get("deploy", {}).get("replicas", 1) == 1
    (mount,) = bind_mounts(writer)
    assert mount["target"] == "/datasets" and mount["read_only"] is False
    # Every role sees the datasets at the same place: the run records the dataset root.
    sources = {bind_mounts(services[role])[0]["source"] for role in NARRATOR_ROLES}
    assert len(sources) == 1


def test_producer_is_a_one_shot_enqueue_of_the_configured_dataset(
    services: dict[str, Any],
) -> None:
    producer = services["producer"]
    assert producer["restart"] == "no"
    assert producer["profiles"] or producer["depends_on"]
    assert producer["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service_command(producer) == ["enqueue", f"/datasets/{DOT_ENV['NARRATOR_DATASET']}"]
    (mount,) = bind_mounts(producer)
    assert mount["read_only"] is True


def test_dashboard_reads_the_password_protected_redis_with_json_jobs(
    services: dict[str, Any],
) -> None:
    dashboard = services["rq-dashboard"]
    assert any(str(p).endswith(":9181:9181") or str(p) == "9181:9181" for p in dashboard["ports"])
    env = service_environment(dashboard)
    assert env["RQ_DASHBOARD_REDIS_URL"] == f"redis://:{DOT_ENV['REDIS_PASSWORD']}@redis:6379/0"
    assert "--json" in service_command(dashboard)


def test_prometheus_scrapes_every_worker_the_writer_and_each_vllm_replica(
    services: dict[str, Any],
) -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_port = int(service_environment(services["worker"])["NARRATOR_METRICS_PORT"])
    writer_port = int(service_environment(services["writer"])["NARRATOR_METRICS_PORT"])
    dns = [sd for job in jobs.values() for sd in job.get("dns_sd_configs", [])]
    assert any(
        sd["type"] == "A" and "worker" in sd["names"] and sd["port"] == worker_port for sd in dns
    ), "scaled workers are found by DNS service discovery"
    static = {
        t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]
    }
    assert f"writer:{writer_port}" in static
    assert {f"{name}:8000" for name in vllm_services(services)} <= static
    mounted = [str(v) for v in services["prometheus"]["volumes"]]
    assert any(v.startswith("./prometheus.yml:/etc/prometheus/prometheus.yml") for v in mounted)


def test_dockerfile_builds_a_non_root_narrator_image_with_every_package() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    assert re.search(r"python:3\.11-slim", text), "python:3.11-slim base"
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r'^ENTRYPOINT \["narrator"\]', final, flags=re.M)
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    targets = {
        svc["build"]["target"]
        for svc in load_compose(DOT_ENV)["services"].values()
        if "build" in svc
    }
    assert targets <= {alias for _, alias in stages}
    assert stages[-1][1] == "runtime", "the default target is the narrator CLI"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    for package in packages:
        assert re.search(rf"^COPY {package} ", text, flags=re.M), f"{package} not copied"


def test_dockerignore_keeps_the_build_context_small_and_free_of_secrets() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "tests", "**/__pycache__", "**/.env"} <= patterns
    needed = ["pyproject.toml", "README.md", "common", "producer", "workers", "writer", "narrator"]
    assert not patterns.intersection(needed)
    assert Path(COMPOSE_FILE).parent.name == "deploy"


def _duration_s(text: str) -> int:
    """Seconds in a Compose duration such as ``32m`` or ``1h30m`` or ``90s``."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)
