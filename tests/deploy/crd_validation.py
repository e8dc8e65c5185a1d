"""Validating custom resources offline against their published CRDs (deploy/schemas).

The API server validates a custom resource with the CRD's OpenAPI v3 schema and, with strict
field validation (kubectl's default since 1.27: `--validate=strict`), rejects fields the schema
does not declare. The same here: the schema is taken from the vendored CRD, every object schema
that lists its properties is closed (`additionalProperties: false`) unless it says otherwise,
and the resource is validated with jsonschema (draft 4, the dialect OpenAPI v3 schemas follow).
Not evaluated: CEL rules (`x-kubernetes-validations`) and `format`s.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.deploy.tools import REPO

__all__ = ["SCHEMAS", "CustomResourceSchema", "crd_schemas", "validate_custom_resource"]

SCHEMAS = REPO / "deploy" / "schemas"


@dataclass(frozen=True)
class CustomResourceSchema:
    kind: str
    group: str
    versions: dict[str, dict[str, Any]]  # served version → strict JSON schema
    source: Path


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def crd_schemas() -> dict[str, tuple[CustomResourceSchema, ...]]:
    """Kind → its schemas (one per API group), from every vendored CRD listed in
    deploy/schemas/sources.yaml."""
    result: dict[str, tuple[CustomResourceSchema, ...]] = {}
    for source in yaml.safe_load((SCHEMAS / "sources.yaml").read_text()):
        path = SCHEMAS / source["file"]
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        spec = crd["spec"]
        versions = {
            version["name"]: _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            for version in spec["versions"]
            if version.get("served")
        }
        kind = spec["names"]["kind"]
        result[kind] = (
            *result.get(kind, ()), CustomResourceSchema(kind, spec["group"], versions, path)
        )
    return result


class CustomResourceInvalid(ValueError):
    """A custom resource its CRD would reject."""


def validate_custom_resource(resource: dict[str, Any]) -> None:
    kind = resource.get("kind")
    schemas = crd_schemas()
    if kind not in schemas:
        raise CustomResourceInvalid(f"no vendored CRD for kind {kind!r}")
    group, _, version = str(resource.get("apiVersion", "")).rpartition("/")
    served = [crd for crd in schemas[kind] if crd.group == group and version in crd.versions]
    if not served:
        raise CustomResourceInvalid(
            f"{kind}: apiVersion {resource.get('apiVersion')!r} is not served by the CRD ("
            + "; ".join(f"group {c.group}, versions {sorted(c.versions)}" for c in schemas[kind])
            + ")"
        )
    (crd,) = served
    name = resource.get("metadata", {}).get("name")
    if not name:
        raise CustomResourceInvalid(f"{kind}: metadata.name is required")
    errors = sorted(
        jsonschema.Draft4Validator(crd.versions[version]).iter_errors(resource),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        raise CustomResourceInvalid(
            f"{kind}/{name} against {crd.source.name}:\n"
            + "\n".join(f"  {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        )
