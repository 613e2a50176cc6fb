"""Read rendered Kubernetes objects: find them, reach their pod specs, match label selectors.

Role: small pure functions over the dicts that kustomize renders, so the deployment tests can
state cross-object rules (a NetworkPolicy selects these pods, a ScaledObject names that
Deployment) without a cluster.

Invariant: label selectors are evaluated with Kubernetes' semantics (``matchLabels`` and
``matchExpressions`` with In, NotIn, Exists, DoesNotExist, all terms ANDed; an empty selector
matches everything).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


class ObjectNotFoundError(LookupError):
    """The rendered output holds no object of that kind and name."""


def find(objects: Sequence[Mapping[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return dict(obj)
    raise ObjectNotFoundError(f"no {kind} named {name!r} in the rendered output")


def of_kind(objects: Sequence[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(obj) for obj in objects if obj.get("kind") == kind]


def workloads(objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(obj) for obj in objects if obj.get("kind") in WORKLOAD_KINDS]


def pod_template(workload: Mapping[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = workload["spec"]["template"]
    return template


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(workload)["spec"]
    return spec


def all_containers(workload: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def container(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    for candidate in all_containers(workload):
        if candidate["name"] == name:
            return candidate
    raise ObjectNotFoundError(f"{workload['metadata']['name']} has no container {name!r}")


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = obj.get("metadata", {}).get("labels", {}) or {}
    return found


def selector_matches(selector: Mapping[str, Any], pod_labels: Mapping[str, str]) -> bool:
    """True when a LabelSelector selects a pod with ``pod_labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if pod_labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in pod_labels
        if operator == "In" and not (present and pod_labels[key] in values):
            return False
        if operator == "NotIn" and present and pod_labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {operator!r}")
    return True


def container_env(
    objects: Sequence[Mapping[str, Any]], spec: Mapping[str, Any]
) -> dict[str, str | None]:
    """A container's environment: ConfigMap ``envFrom`` values, then ``env`` entries.

    Values that come from Secrets or other references are None (their names are present).
    """
    env: dict[str, str | None] = {}
    for source in spec.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(find(objects, "ConfigMap", ref["name"]).get("data", {}))
        elif source.get("secretRef"):
            secret = find(objects, "Secret", source["secretRef"]["name"])
            env.update(
                {key: None for key in {**secret.get("data", {}), **secret.get("stringData", {})}}
            )
    for entry in spec.get("env", []):
        env[entry["name"]] = entry.get("value")
    return env
