"""deploy/k8s: the kustomize base and the example overlay, rendered offline and validated.

The overlay is rendered by the real kustomize (``kustomize build`` or ``kubectl kustomize``);
every object is checked against the Kubernetes JSON schemas that the kubernetes-validate wheel
bundles (strict: unknown fields are errors), KEDA objects against deploy/schemas/keda. Then
the cross-object rules docs/DEPLOY.md relies on: grace period vs job timeout, the autoscaler
reading rq's real queue, Redis reachable only from narrator's roles and KEDA, one vLLM URL
per replica, resources on every container.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from narrator.common import keys
from tests.support.deploy_support.compose import REPO_ROOT
from tests.support.deploy_support.k8s import (
    all_containers,
    container,
    container_env,
    find,
    labels,
    of_kind,
    pod_spec,
    pod_template,
    selector_matches,
    workloads,
)
from tests.support.deploy_support.kustomize import render
from tests.support.deploy_support.schemas import KEDA_SCHEMAS, keda_schema, schema_errors

BASE = REPO_ROOT / "deploy" / "k8s" / "base"
OVERLAY = REPO_ROOT / "deploy" / "k8s" / "overlays" / "example"
# The oldest Kubernetes the manifests promise to fit (docs/DEPLOY.md) and the newest known.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
REDIS_CLIENT_ROLES = ("worker", "writer", "producer", "dashboard")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(OVERLAY)


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Schema errors of one rendered object (Kubernetes built-ins or KEDA)."""
    if obj["apiVersion"].startswith("keda.sh/"):
        return schema_errors(keda_schema(obj["kind"]), obj)
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"Kubernetes {version}: {exc.json_path}: {exc.message}")
    return errors


def test_base_renders_on_its_own() -> None:
    objects = render(BASE)
    assert all("namespace" not in obj["metadata"] for obj in objects), "base is namespace-less"
    assert not of_kind(objects, "Secret"), "the password Secret belongs to the overlay"


def test_every_rendered_object_matches_its_schema(rendered: list[dict[str, Any]]) -> None:
    kinds = {obj["kind"] for obj in rendered}
    assert {"ScaledObject", "TriggerAuthentication", "NetworkPolicy", "Job"} <= kinds
    assert set(KEDA_SCHEMAS) <= kinds
    problems = {
        f"{obj['kind']}/{obj['metadata']['name']}": errors
        for obj in rendered
        if (errors := validate_object(obj))
    }
    assert problems == {}


def test_schema_checks_catch_broken_objects(rendered: list[dict[str, Any]]) -> None:
    worker = copy.deepcopy(find(rendered, "Deployment", "narrator-worker"))
    pod_spec(worker)["containers"][0]["resource"] = {}
    assert validate_object(worker), "strict schemas reject unknown fields"
    scaled = copy.deepcopy(find(rendered, "ScaledObject", "narrator-worker"))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 8
    assert any("listLength" in e for e in validate_object(scaled)), "metadata values are strings"
    del scaled["spec"]["triggers"][0]["metadata"]["listName"]
    assert any("listName" in e for e in validate_object(scaled))


def test_every_container_has_cpu_and_memory_requests_and_limits(
    rendered: list[dict[str, Any]],
) -> None:
    for workload in workloads(rendered):
        for spec in all_containers(workload):
            where = f"{workload['metadata']['name']}/{spec['name']}"
            resources = spec.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where} {bound}"


def test_every_object_carries_the_recommended_labels(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/component"):
            assert key in labels(obj), f"{obj['kind']}/{obj['metadata']['name']} lacks {key}"
    for workload in workloads(rendered):
        template_labels = labels(pod_template(workload))
        assert template_labels["app.kubernetes.io/name"] == "narrator"
        assert "app.kubernetes.io/component" in template_labels


def test_worker_outlives_its_longest_job_on_scale_down(rendered: list[dict[str, Any]]) -> None:
    worker = find(rendered, "Deployment", "narrator-worker")
    env = container_env(rendered, container(worker, "worker"))
    job_timeout_s = int(env["NARRATOR_JOB_TIMEOUT_S"] or 0)
    assert job_timeout_s > 0
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= job_timeout_s
    assert "replicas" not in worker["spec"], "KEDA owns the worker replica count"
    assert container(worker, "worker")["args"] == ["worker"]


def test_keda_scales_workers_on_rqs_module_queue(rendered: list[dict[str, Any]]) -> None:
    (scaled,) = of_kind(rendered, "ScaledObject")
    spec = scaled["spec"]
    worker = find(rendered, "Deployment", spec["scaleTargetRef"]["name"])
    assert spec["maxReplicaCount"] >= max(1, spec.get("minReplicaCount", 0))
    assert spec.get("minReplicaCount", 0) in (0, 1)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == f"rq:queue:{keys.MODULE_QUEUE}"
    # KEDA reads the address from the worker container's environment.
    env = container_env(rendered, pod_spec(worker)["containers"][0])
    job_slots = int(env["NARRATOR_WORKERS"] or 0) * int(env["NARRATOR_JOBS_PER_WORKER"] or 0)
    assert int(meta["listLength"]) == job_slots, "one queued job per job slot of a pod"
    address = env[meta["addressFromEnv"]]
    assert address is not None
    host, _, port = address.partition(":")
    redis_service = find(rendered, "Service", host)
    assert int(port) in [p["port"] for p in redis_service["spec"]["ports"]]
    auth = find(rendered, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password"
    assert ref["key"] in find(rendered, "Secret", ref["name"])["stringData"]


def test_redis_is_persistent_and_password_protected(rendered: list[dict[str, Any]]) -> None:
    (redis,) = [w for w in of_kind(rendered, "StatefulSet") if "redis" in w["metadata"]["name"]]
    assert redis["spec"]["volumeClaimTemplates"]
    spec = container(redis, "redis")
    args = spec["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)"
    (password,) = [e for e in spec["env"] if e["name"] == "REDIS_PASSWORD"]
    assert "secretKeyRef" in password["valueFrom"]
    assert spec["readinessProbe"]


def test_network_policy_admits_only_narrator_roles_and_keda_to_redis(
    rendered: list[dict[str, Any]],
) -> None:
    redis = find(rendered, "StatefulSet", "narrator-redis")
    redis_labels = labels(pod_template(redis))
    policies = [
        p
        for p in of_kind(rendered, "NetworkPolicy")
        if selector_matches(p["spec"]["podSelector"], redis_labels)
    ]
    assert len(policies) == 1
    (policy,) = policies
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    pod_peers = [
        p["podSelector"] for p in peers if "podSelector" in p and "namespaceSelector" not in p
    ]
    admitted = {
        labels(pod_template(w))["app.kubernetes.io/component"]
        for w in workloads(rendered)
        if any(selector_matches(sel, labels(pod_template(w))) for sel in pod_peers)
    }
    assert admitted == set(REDIS_CLIENT_ROLES)
    namespace_peers = [p["namespaceSelector"] for p in peers if "namespaceSelector" in p]
    assert any(
        selector_matches(sel, {"kubernetes.io/metadata.name": "keda"}) for sel in namespace_peers
    )
    assert not any(
        selector_matches(sel, {"kubernetes.io/metadata.name": "default"}) for sel in namespace_peers
    )


def test_each_vllm_replica_has_a_url_a_gpu_and_a_patient_startup_probe(
    rendered: list[dict[str, Any]],
) -> None:
    vllm = find(rendered, "StatefulSet", "narrator-vllm")
    service = find(rendered, "Service", vllm["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "headless: one DNS name per replica"
    spec = container(vllm, "vllm")
    assert spec["image"].startswith("vllm/vllm-openai:") and not spec["image"].endswith(":latest")
    assert spec["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    startup = spec["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 1200
    assert spec["readinessProbe"]["httpGet"]["path"] == "/health"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/health"
    port = service["spec"]["ports"][0]["port"]
    name = vllm["metadata"]["name"]
    expected = [
        f"http://{name}-{i}.{service['metadata']['name']}:{port}/v1"
        for i in range(vllm["spec"]["replicas"])
    ]
    config = find(rendered, "ConfigMap", "narrator-config")["data"]
    assert config["NARRATOR_VLM_URLS"].split(",") == expected


def test_writer_is_single_recreated_and_the_only_read_write_mount(
    rendered: list[dict[str, Any]],
) -> None:
    writer = find(rendered, "Deployment", "narrator-writer")
    assert writer["spec"]["replicas"] == 1 and writer["spec"]["strategy"]["type"] == "Recreate"
    (claim,) = of_kind(rendered, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for workload in workloads(rendered):
        for volume in pod_spec(workload).get("volumes", []):
            if (
                volume.get("persistentVolumeClaim", {}).get("claimName")
                != claim["metadata"]["name"]
            ):
                continue
            mounts = [
                m
                for c in all_containers(workload)
                for m in c.get("volumeMounts", [])
                if m["name"] == volume["name"]
            ]
            writable = any(not m.get("readOnly", False) for m in mounts)
            assert writable == (
                workload is writer or workload["metadata"]["name"] == "narrator-writer"
            )
            assert {m["mountPath"] for m in mounts} == {"/datasets"}


def test_roles_get_redis_url_from_the_secret_and_metrics_are_scraped(
    rendered: list[dict[str, Any]],
) -> None:
    config = find(rendered, "ConfigMap", "narrator-config")["data"]
    for name in ("narrator-worker", "narrator-writer"):
        workload = find(rendered, "Deployment", name)
        spec = pod_spec(workload)["containers"][0]
        env = container_env(rendered, spec)
        assert env["NARRATOR_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@$(NARRATOR_REDIS_ADDRESS)/0"
        annotations = pod_template(workload)["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == config["NARRATOR_METRICS_PORT"]
        assert int(config["NARRATOR_METRICS_PORT"]) in [p["containerPort"] for p in spec["ports"]]
    job = find(rendered, "Job", "narrator-enqueue")
    assert container(job, "producer")["args"] == ["enqueue", "/datasets/$(NARRATOR_DATASET)"]
    find(rendered, "Service", "narrator-dashboard")


def test_every_referenced_configmap_and_secret_key_exists(rendered: list[dict[str, Any]]) -> None:
    for workload in workloads(rendered):
        for spec in all_containers(workload):
            for entry in spec.get("env", []):
                source = entry.get("valueFrom", {})
                for kind, ref_key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    ref = source.get(ref_key)
                    if ref is None or ref.get("optional"):
                        continue
                    obj = find(rendered, kind, ref["name"])
                    values = {**obj.get("data", {}), **obj.get("stringData", {})}
                    assert ref["key"] in values, (
                        f"{spec['name']}: {kind} {ref['name']} lacks {ref['key']}"
                    )
            container_env(rendered, spec)  # raises if an envFrom ConfigMap is missing


def test_overlay_namespaces_everything_and_points_images_at_a_registry(
    rendered: list[dict[str, Any]],
) -> None:
    (namespace,) = of_kind(rendered, "Namespace")
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"]
    for workload in workloads(rendered):
        for spec in all_containers(workload):
            image = spec["image"]
            assert ":" in image and not image.endswith(":latest"), image
            if "narrator" in image:
                assert "." in image.split("/")[0], f"{image}: push narrator images to a registry"
