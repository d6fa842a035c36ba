"""What the API says about itself: discovery, /version and the OpenAPI 3 document.

All of it is derived from the kind registry, so a kind added as a CRD file
appears in discovery, in the OpenAPI paths and in its schemas at once.
Discovery has Kubernetes' shapes (APIVersions, APIGroupList, APIGroup,
APIResourceList) so tools that speak to an API server find their way.
"""

from __future__ import annotations

import platform

from pilotfish import __version__
from pilotfish.api.kinds import Kind, KindRegistry
from pilotfish.objects import Obj

OPENAPI_PATHS = ("/openapi/v3", "/openapi.json")
STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
WATCH_EVENT = "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent"
OBJECT_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
STATUS_VERBS = ["get", "patch", "update"]


def document(kinds: KindRegistry, path: str) -> Obj | None:
    """The document served at `path`, or None if `path` is not one of these."""
    if path in OPENAPI_PATHS:
        return openapi(kinds)
    if path == "/version":
        return version_info()
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups(kinds)}
    parts = path.strip("/").split("/")
    if parts == ["api", "v1"]:
        return resource_list(kinds, "", "v1")
    if len(parts) == 2 and parts[0] == "apis":
        return next((g for g in groups(kinds) if g["name"] == parts[1]), None)
    if len(parts) == 3 and parts[0] == "apis":
        return resource_list(kinds, parts[1], parts[2])
    return None


def version_info() -> Obj:
    major, minor, *_ = __version__.split(".")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": f"v{__version__}",
        "platform": f"{platform.system().lower()}/{platform.machine()}",
        "pythonVersion": platform.python_version(),
    }


def groups(kinds: KindRegistry) -> list[Obj]:
    """Every named group with its versions, the storage version preferred."""
    found: dict[str, list[str]] = {}
    for kind in kinds:
        if kind.group:
            versions = found.setdefault(kind.group, [])
            versions.extend(v for v in kind.versions if v not in versions)
    return [_group(name, versions) for name, versions in found.items()]


def _group(name: str, versions: list[str]) -> Obj:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def resource_list(kinds: KindRegistry, group: str, version: str) -> Obj | None:
    served = [k for k in kinds if k.group == group and version in k.versions]
    if not served:
        return None
    resources: list[Obj] = []
    for kind in served:
        resources.append(_resource(kind, kind.plural, OBJECT_VERBS))
        resources.append(_resource(kind, f"{kind.plural}/status", STATUS_VERBS))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def _resource(kind: Kind, name: str, verbs: list[str]) -> Obj:
    entry: Obj = {
        "name": name,
        "singularName": kind.singular if "/" not in name else "",
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": verbs,
    }
    if kind.short_names and "/" not in name:
        entry["shortNames"] = list(kind.short_names)
    if kind.categories and "/" not in name:
        entry["categories"] = list(kind.categories)
    return entry


# -- OpenAPI -------------------------------------------------------------------------------


def openapi(kinds: KindRegistry) -> Obj:
    schemas: Obj = {STATUS: _STATUS_SCHEMA, WATCH_EVENT: _WATCH_EVENT_SCHEMA}
    paths: Obj = {}
    for kind in kinds:
        seen: list[tuple[Obj, str]] = []  # Istio's versions share one schema: refer to the first
        for version in kind.versions:
            name = schema_name(kind, version)
            schema = kind.schemas.get(version) or {"type": "object"}
            alias = next((earlier for s, earlier in seen if s == schema), None)
            seen.append((schema, name))
            schemas[name] = _kind_schema(kind, version, schema, alias)
            schemas[f"{name}List"] = _list_schema(kind, version, name)
            paths.update(kind_paths(kind, version, name))
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pilotfish",
            "version": __version__,
            "description": "The pilotfish control plane API: Istio and Flagger kinds, "
            "served with Kubernetes API conventions.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"BearerToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"BearerToken": []}],
    }


def schema_name(kind: Kind, version: str) -> str:
    """Kubernetes' naming: reversed group, version, kind (`io.istio.networking.v1.Gateway`)."""
    prefix = ".".join(reversed(kind.group.split("."))) if kind.group else "io.k8s.api.core"
    return f"{prefix}.{version}.{kind.kind}"


def _kind_schema(kind: Kind, version: str, schema: Obj, alias_of: str | None) -> Obj:
    gvk = [{"group": kind.group, "version": version, "kind": kind.kind}]
    if alias_of is not None:
        return {"allOf": [_ref(alias_of)], "x-kubernetes-group-version-kind": gvk}
    return {**schema, "x-kubernetes-group-version-kind": gvk}


def _list_schema(kind: Kind, version: str, item: str) -> Obj:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string", "enum": [f"{kind.kind}List"]},
            "metadata": {
                "type": "object",
                "properties": {"resourceVersion": {"type": "string"}},
            },
            "items": {"type": "array", "items": _ref(item)},
        },
    }


def kind_paths(kind: Kind, version: str, schema: str) -> Obj:
    """Every path of one kind at one version, with its operations."""
    collection = kind.path(version, "{namespace}" if kind.namespaced else None)
    item = f"{collection}/{{name}}"
    ids = _OperationIds(kind, version)
    paths: Obj = {
        collection: {
            "get": _list_op(ids("list"), schema),
            "post": _write_op(ids("create"), schema, "201", _JSON_BODY),
        },
        item: {
            "get": _op(ids("read"), schema, []),
            "put": _write_op(ids("replace"), schema, "200", _JSON_BODY),
            "patch": _patch_op(ids("patch"), schema),
            "delete": _write_op(ids("delete"), schema, "200", None),
        },
        f"{item}/status": {
            "get": _op(ids("read", "Status"), schema, []),
            "put": _write_op(ids("replace", "Status"), schema, "200", _JSON_BODY),
            "patch": _write_op(ids("patch", "Status"), schema, "200", [MERGE_TYPE]),
        },
    }
    for path in (collection, item, f"{item}/status"):
        paths[path]["parameters"] = _path_params(path)
    if kind.namespaced:
        every = kind.path(version, None)
        paths[every] = {"get": _list_op(ids("list", "ForAllNamespaces", False), schema)}
    return paths


class _OperationIds:
    """Kubernetes-style operation ids: listNetworkingIstioIoV1NamespacedVirtualService."""

    def __init__(self, kind: Kind, version: str) -> None:
        group = "".join(p.capitalize() for p in kind.group.split(".")) if kind.group else "Core"
        self._stem = f"{group}{version.capitalize()}"
        self._kind = kind

    def __call__(self, verb: str, suffix: str = "", scoped: bool = True) -> str:
        namespaced = "Namespaced" if self._kind.namespaced and scoped else ""
        return f"{verb}{self._stem}{namespaced}{self._kind.kind}{suffix}"


MERGE_TYPE = "application/merge-patch+json"
APPLY_TYPE = "application/apply-patch+yaml"
_JSON_BODY = ["application/json", "application/yaml"]


def _ref(name: str) -> Obj:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, description: str, kind: str = "string") -> Obj:
    return {"name": name, "in": "query", "description": description, "schema": {"type": kind}}


_DRY_RUN = {
    **_query("dryRun", "All: validate and compute the result, store nothing"),
    "schema": {"type": "string", "enum": ["All"]},
}
_FIELD_MANAGER = {
    **_query("fieldManager", "who is writing, in printable characters; required for apply"),
    "schema": {"type": "string", "maxLength": 128},
}
# Kubernetes' query booleans: given without a value (`?watch`) means true.
_FORCE = {
    **_query("force", "apply: take fields other managers own", "boolean"),
    "allowEmptyValue": True,
}
_LIST_PARAMS = [
    _query("labelSelector", "e.g. app=reviews,version!=v1"),
    _query("fieldSelector", "metadata.name or metadata.namespace, with =, == or !="),
    {
        **_query("watch", "stream ADDED/MODIFIED/DELETED events as JSON lines", "boolean"),
        "allowEmptyValue": True,
    },
    _query("resourceVersion", "watch: the resourceVersion to resume after"),
    _query("timeoutSeconds", "watch: end the stream after this long", "integer"),
]


def _path_params(path: str) -> list[Obj]:
    names = [p[1:-1] for p in path.split("/") if p.startswith("{")]
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


def _responses(schema: str, code: str, media: str = "application/json") -> Obj:
    return {
        code: {"description": "OK", "content": {media: {"schema": _ref(schema)}}},
        "default": {
            "description": "an error, as a Status",
            "content": {"application/json": {"schema": _ref(STATUS)}},
        },
    }


def _op(operation_id: str, schema: str, parameters: list[Obj], code: str = "200") -> Obj:
    return {
        "operationId": operation_id,
        "parameters": parameters,
        "responses": _responses(schema, code),
    }


def _list_op(operation_id: str, schema: str) -> Obj:
    op = _op(operation_id, f"{schema}List", _LIST_PARAMS)
    op["responses"]["200"]["content"]["application/jsonl"] = {"schema": _ref(WATCH_EVENT)}
    return op


def _write_op(operation_id: str, schema: str, code: str, media: list[str] | None) -> Obj:
    op = _op(operation_id, schema, [_DRY_RUN, _FIELD_MANAGER], code)
    if media:
        content = {m: {"schema": _ref(schema)} for m in media}
        op["requestBody"] = {"required": True, "content": content}
    return op


def _patch_op(operation_id: str, schema: str) -> Obj:
    op = _write_op(operation_id, schema, "200", [APPLY_TYPE, MERGE_TYPE])
    op["parameters"] = [*op["parameters"], _FORCE]
    return op


_STATUS_SCHEMA: Obj = {
    "type": "object",
    "properties": {
        "kind": {"type": "string"},
        "apiVersion": {"type": "string"},
        "status": {"type": "string"},
        "message": {"type": "string"},
        "reason": {"type": "string"},
        "code": {"type": "integer"},
    },
}
_WATCH_EVENT_SCHEMA: Obj = {
    "type": "object",
    "required": ["type", "object"],
    "properties": {
        "type": {"type": "string", "enum": ["ADDED", "MODIFIED", "DELETED", "ERROR"]},
        "object": {"type": "object"},
    },
}
