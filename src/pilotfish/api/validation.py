"""Validation of every kind: the one entry point the store, the API and the CLI use.

An object is checked as a Kubernetes API server with Istio's webhook would:
its kind must be registered; metadata follows apimachinery's name rules; the
rest follows the kind's CRD schema (structure, then `x-kubernetes-validations`
CEL rules); and, once the object is well formed, the semantic rules of Istio's
validating webhook and of pilotfish's own kinds. istioctl analyze's
cross-object warnings, which never reject, are pilotfish.analysis.
"""

from __future__ import annotations

import base64
import copy
import functools
from typing import Any

from pilotfish.api.errors import ApiError, FieldError, Invalid
from pilotfish.api.kinds import Kind, registry, split_api_version
from pilotfish.api.names import validate_metadata
from pilotfish.api.semantic import semantic_errors
from pilotfish.api.structural import Node, apply_defaults, check_object, compile_schema

__all__ = [
    "compiled_schema",
    "validate",
    "validate_or_raise",
    "with_defaults",
]


def validate(obj: dict[str, Any]) -> list[FieldError]:
    """Every reason `obj` would be rejected; [] when it is valid."""
    if not isinstance(obj, dict):
        return [FieldError("", "object must be a mapping")]
    try:
        kind, version = registry().for_object(obj)
    except ApiError as exc:
        return [_kind_error(obj, exc)]
    errors = validate_metadata(obj.get("metadata"), kind.namespaced)
    errors += check_object(compiled_schema(kind.group, kind.kind, version), obj)
    if not errors:
        errors = semantic_errors(kind, obj)
    return errors


def validate_or_raise(obj: dict[str, Any]) -> None:
    """Raise `Invalid` naming the object and every error, if there are any."""
    errors = validate(obj)
    if errors:
        raise Invalid.of(str(obj.get("kind", "")), _name(obj), errors)


def with_defaults(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` with its schema's defaults filled in, as the API server
    stores objects; an object of an unknown kind is returned unchanged (its
    validation says why it is refused)."""
    try:
        kind, version = registry().for_object(obj)
    except ApiError:
        return obj
    out = copy.deepcopy(obj)
    apply_defaults(compiled_schema(kind.group, kind.kind, version), out)
    if (kind.group, kind.kind) == ("", "Secret"):
        _fold_string_data(out)
    return out


def _fold_string_data(secret: dict[str, Any]) -> None:
    """Kubernetes merges a Secret's write-only stringData into data on write,
    base64-encoded, over any value data has for the same key, and never
    stores stringData. A stringData that is not a map of strings is left for
    validation to refuse."""
    given = secret.get("stringData")
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        return
    data = secret.get("data")
    if given and not isinstance(data, dict | None):
        return
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in given.items()}
    del secret["stringData"]
    if encoded:
        secret["data"] = {**(data or {}), **encoded}


@functools.cache
def compiled_schema(group: str, kind: str, version: str) -> Node:
    """The schema of one (kind, version), compiled on first use and kept."""
    found = _kind(group, kind)
    return compile_schema(found.schemas.get(version) or {"type": "object"})


def compile_all_schemas() -> None:
    """Compile every served (kind, version)'s schema now: a control plane does
    it as it starts, so that no user's first write of a kind waits for it
    (0.2 s of CPU for all kinds, most of it their CEL rules)."""
    for kind in registry():
        for version in kind.versions:
            compiled_schema(kind.group, kind.kind, version)


def _kind(group: str, kind: str) -> Kind:
    return next(k for k in registry() if k.group == group and k.kind == kind)


def _kind_error(obj: dict[str, Any], exc: ApiError) -> FieldError:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return FieldError("apiVersion", "Required value")
    if not isinstance(kind, str) or not kind:
        return FieldError("kind", "Required value")
    group, _ = split_api_version(api_version)
    field = "kind" if any(k.group == group for k in registry()) else "apiVersion"
    value = kind if field == "kind" else api_version
    return FieldError(field, f'Invalid value: "{value}": {exc.message}')


def _name(obj: dict[str, Any]) -> str:
    """`namespace/name`, or the bare name of a cluster-scoped object."""
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    name = str(metadata.get("name", ""))
    try:
        namespaced = registry().for_object(obj)[0].namespaced
    except ApiError:
        namespaced = True
    return f"{metadata.get('namespace') or 'default'}/{name}" if namespaced else name
