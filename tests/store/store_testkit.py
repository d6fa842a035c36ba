"""Kinds and objects the store tests use, independent of the packaged schemas,
so the store suite runs the same against every backend and every schema change."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pilotfish.api.kinds import Kind, KindRegistry
from pilotfish.store.etcd import EtcdBackend
from pilotfish.store.etcd_client import EtcdClient
from pilotfish.store.sqlite import SqliteBackend
from pilotfish.store.types import Backend

Obj = dict[str, Any]

VS_SCHEMA: Obj = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "hosts": {"type": "array", "items": {"type": "string"}},
                "gateways": {"type": "array", "items": {"type": "string"}},
                "http": {"type": "array", "items": {"type": "object"}},
                "exportTo": {"type": "array", "items": {"type": "string"}},
            },
        },
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}

SERVICE_SCHEMA: Obj = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "selector": {"type": "object", "additionalProperties": {"type": "string"}},
                "ports": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["port", "protocol"],
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "port": {"type": "integer"},
                            "protocol": {"type": "string"},
                            "targetPort": {"type": "integer"},
                        },
                    },
                },
                "labelsAtomic": {"type": "object", "x-kubernetes-map-type": "atomic"},
            },
        }
    },
}


def _kind(
    group: str,
    kind: str,
    plural: str,
    versions: tuple[str, ...],
    schema: Obj,
    namespaced: bool = True,
) -> Kind:
    return Kind(
        group=group,
        kind=kind,
        plural=plural,
        singular=kind.lower(),
        namespaced=namespaced,
        versions=versions,
        schemas={v: schema for v in versions},
    )


def kinds_registry() -> KindRegistry:
    return KindRegistry(
        [
            _kind(
                "networking.istio.io",
                "VirtualService",
                "virtualservices",
                ("v1", "v1beta1"),
                VS_SCHEMA,
            ),
            _kind("", "Service", "services", ("v1",), SERVICE_SCHEMA),
            _kind("", "ConfigMap", "configmaps", ("v1",), {"type": "object"}),
            _kind("", "Namespace", "namespaces", ("v1",), {"type": "object"}, namespaced=False),
        ]
    )


def vs(name: str = "reviews", namespace: str | None = None, **spec: Any) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta,
        "spec": spec or {"hosts": ["reviews"]},
    }


def configmap(
    name: str,
    data: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    namespace: str | None = None,
) -> Obj:
    meta: Obj = {"name": name}
    if labels is not None:
        meta["labels"] = labels
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data or {}}


def service(name: str, ports: list[Obj], **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": ports, **spec},
    }


BackendFactory = Callable[..., Backend]


def _sqlite(data_dir: Path) -> BackendFactory:
    def make(**options: Any) -> Backend:
        return SqliteBackend(data_dir / "store.db", **options)

    return make


# Where the session's etcd listens; set by conftest's `etcd` fixture, and so
# inherited by the processes a test starts (crash_writer.py).
ETCD_ENV = "PILOTFISH_TEST_ETCD"


def _etcd(data_dir: Path) -> BackendFactory:
    """One etcd serves the whole session; each test keeps its objects under a
    prefix of its own (the same one again when reopened)."""
    prefix = "/test-" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:16]

    def make(**options: Any) -> Backend:
        client = EtcdClient([os.environ[ETCD_ENV]])
        return EtcdBackend(client, prefix=prefix, kinds=kinds_registry(), **options)

    return make


BACKENDS: dict[str, Callable[[Path], BackendFactory]] = {"sqlite": _sqlite, "etcd": _etcd}
