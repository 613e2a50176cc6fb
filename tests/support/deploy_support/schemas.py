"""JSON schemas the deployment tests validate against, all available offline.

Role: load the Compose Specification schema (shipped by the ``check-jsonschema`` wheel, which
vendors it with its licence) and narrator's bundled KEDA schemas (``deploy/schemas/keda``);
validate objects and return readable error lists.

Invariant: validators are built for the draft each schema declares, with format checking on.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema

from .compose import REPO_ROOT

KEDA_SCHEMA_DIR = REPO_ROOT / "deploy" / "schemas" / "keda"
KEDA_SCHEMAS: dict[str, Path] = {
    "ScaledObject": KEDA_SCHEMA_DIR / "scaledobject-keda-v1alpha1.json",
    "TriggerAuthentication": KEDA_SCHEMA_DIR / "triggerauthentication-keda-v1alpha1.json",
}


def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema as vendored by check-jsonschema."""
    resource = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


def keda_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(KEDA_SCHEMAS[kind].read_text(encoding="utf-8"))
    return schema


def schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    """Every violation of ``schema`` by ``instance``, as ``path: message`` lines."""
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path}: {e.message}" for e in errors]
