"""The registry over a real store: config followed by a watch, instances by
lease, snapshots rebuilt only after a change."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pilotfish.api.validation import validate_or_raise
from pilotfish.model import Instance, build_snapshot
from pilotfish.registry.mesh import INSTANCE, MeshRegistry
from pilotfish.store.resources import ResourceStore
from pilotfish.store.sqlite import SqliteBackend
from pilotfish.store.types import Key

Obj = dict[str, Any]

SERVICE: Obj = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "ratings", "namespace": "default"},
    "spec": {"selector": {"app": "ratings"}, "ports": [{"name": "http", "port": 9080}]},
}
STATIC_ENTRY: Obj = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "ServiceEntry",
    "metadata": {"name": "legacy", "namespace": "default"},
    "spec": {
        "hosts": ["legacy.internal"],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
        "workloadSelector": {"labels": {"app": "legacy"}},
    },
}
DNS_ENTRY: Obj = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "ServiceEntry",
    "metadata": {"name": "httpbin", "namespace": "default"},
    "spec": {
        "hosts": ["httpbin.org"],
        "location": "MESH_EXTERNAL",
        "resolution": "DNS",
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
    },
}
WORKLOAD_ENTRY: Obj = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "WorkloadEntry",
    "metadata": {"name": "legacy-vm", "namespace": "default"},
    "spec": {"address": "10.1.2.3", "labels": {"app": "legacy"}, "ports": {"http": 18080}},
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResourceStore]:
    s = ResourceStore(SqliteBackend(tmp_path / "store.db"), validate=validate_or_raise)
    yield s
    s.close()


class Changes:
    def __init__(self) -> None:
        self.kinds: list[frozenset[str]] = []
        self.event = threading.Event()

    def __call__(self, kinds: frozenset[str]) -> None:
        self.kinds.append(kinds)
        self.event.set()

    def wait(self, kind: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(kind in k for k in self.kinds):
                return
            time.sleep(0.02)
        raise AssertionError(f"no change of {kind} heard: {self.kinds}")


@pytest.fixture
def registry(store: ResourceStore) -> Iterator[tuple[MeshRegistry, Changes]]:
    store.apply(SERVICE, manager="test")
    mesh = MeshRegistry(store)
    changes = Changes()
    mesh.add_listener(changes)
    mesh.start()
    yield mesh, changes
    mesh.stop()


def ratings(port: int = 19090, healthy: bool = True) -> Instance:
    return Instance(
        name=f"ratings-{port}",
        namespace="default",
        workload="ratings-v1",
        address="127.0.0.1",
        ports={"http": port},
        labels={"app": "ratings", "version": "v1"},
        healthy=healthy,
    )


def ports_of(mesh: MeshRegistry, host: str, port: int) -> list[tuple[str, int]]:
    snap = mesh.snapshot()
    (service,) = [s for s in snap.services if s.hostname == host]
    return [(e.address, e.port) for e in snap.endpoints(service, port)]


def test_existing_config_is_loaded_before_start_returns(
    registry: tuple[MeshRegistry, Changes],
) -> None:
    mesh, _ = registry
    assert [s.hostname for s in mesh.snapshot().services] == ["ratings.default.svc.cluster.local"]


def test_instances_become_endpoints_and_unhealthy_ones_leave(
    registry: tuple[MeshRegistry, Changes],
) -> None:
    mesh, changes = registry
    mesh.instances.register(ratings(19090))
    mesh.instances.register(ratings(19091))
    assert INSTANCE in changes.kinds[-1]
    host = "ratings.default.svc.cluster.local"
    assert ports_of(mesh, host, 9080) == [("127.0.0.1", 19090), ("127.0.0.1", 19091)]
    mesh.instances.register(ratings(19091, healthy=False))
    assert ports_of(mesh, host, 9080) == [("127.0.0.1", 19090)]


def test_service_entries_and_workload_entries_from_the_store(
    store: ResourceStore, registry: tuple[MeshRegistry, Changes]
) -> None:
    mesh, changes = registry
    changes.kinds.clear()
    for obj in (STATIC_ENTRY, DNS_ENTRY, WORKLOAD_ENTRY):
        store.apply(obj, manager="test")
    changes.wait("WorkloadEntry")
    snap = mesh.snapshot()
    by_host = {s.hostname: s for s in snap.services}
    assert not by_host["legacy.internal"].mesh_external
    assert by_host["httpbin.org"].mesh_external and by_host["httpbin.org"].resolution == "DNS"
    assert ports_of(mesh, "legacy.internal", 8080) == [("10.1.2.3", 18080)]
    assert ports_of(mesh, "httpbin.org", 80) == [("httpbin.org", 80)]
    store.delete(store.key_of(WORKLOAD_ENTRY))
    deadline = time.monotonic() + 5
    while ports_of(mesh, "legacy.internal", 8080) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ports_of(mesh, "legacy.internal", 8080) == []


def test_other_kinds_do_not_change_the_mesh(
    store: ResourceStore, registry: tuple[MeshRegistry, Changes]
) -> None:
    mesh, changes = registry
    before = mesh.snapshot()
    changes.kinds.clear()
    store.apply(  # a ConfigMap is the mesh config only as istio-system/istio
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default"},
            "data": {"a": "b"},
        },
        manager="test",
    )
    store.apply(
        {
            "apiVersion": "flagger.app/v1beta1",
            "kind": "MetricTemplate",
            "metadata": {"name": "errors", "namespace": "default"},
            "spec": {"provider": {"type": "prometheus", "address": "http://p:9090"}, "query": "1"},
        },
        manager="test",
    )
    store.apply({**SERVICE, "metadata": {"name": "details", "namespace": "default"}}, manager="t")
    changes.wait("Service")
    assert all("MetricTemplate" not in k for k in changes.kinds)
    assert mesh.snapshot() is not before
    assert mesh.snapshot() is mesh.snapshot()  # cached until the next change


NAMESPACE: Obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
EVENT: Obj = {
    "apiVersion": "v1",
    "kind": "Event",
    "metadata": {"name": "e1", "namespace": "default"},
    "involvedObject": {"kind": "Service", "name": "ratings", "namespace": "default"},
    "reason": "Test",
    "message": "m",
}


def test_the_config_apply_analyzes_is_kept_in_memory_and_pushes_nothing(
    registry: tuple[MeshRegistry, Changes], store: ResourceStore
) -> None:
    """Apply's analysis reads every kind (Namespaces too) from here, not from
    the store; a kind proxies never see changes no snapshot."""
    mesh, changes = registry
    before = mesh.snapshot()
    written = store.apply(NAMESPACE, manager="test")
    assert mesh.caught_up(int(written["metadata"]["resourceVersion"]), 5.0)
    assert [o["metadata"]["name"] for o in mesh.listed("", "Namespace", None)] == ["shop"]
    assert mesh.listed("", "Service", "default") == store.list("", "Service", "default")[0]
    assert mesh.listed("", "Service", "elsewhere") == []
    assert mesh.snapshot() is before and not any("Namespace" in k for k in changes.kinds)

    event = store.create(EVENT, manager="test")
    assert mesh.caught_up(int(event["metadata"]["resourceVersion"]), 5.0)
    assert mesh.listed("", "Event", None) == []  # records are not kept

    gone = store.delete(Key("", "Namespace", "", "shop"))
    assert mesh.caught_up(int(gone["metadata"]["resourceVersion"]), 5.0)
    assert mesh.listed("", "Namespace", None) == []


def test_caught_up_waits_for_a_revision_not_yet_written(
    registry: tuple[MeshRegistry, Changes],
) -> None:
    mesh, _ = registry
    started = time.monotonic()
    assert not mesh.caught_up(10_000, 0.2)
    assert time.monotonic() - started >= 0.2


def test_a_snapshot_reads_again_only_the_services_that_changed(
    registry: tuple[MeshRegistry, Changes], store: ResourceStore
) -> None:
    """A VirtualService change does not read every Service again: the
    services of unchanged objects are the very ones of the last snapshot,
    and the whole equals a snapshot built from scratch."""
    mesh, changes = registry
    store.apply(STATIC_ENTRY, manager="test")
    changes.wait("ServiceEntry")
    first = mesh.snapshot()
    changes.kinds.clear()
    store.apply(
        {**SERVICE, "spec": {**SERVICE["spec"], "ports": [{"name": "http", "port": 9081}]}},
        manager="test",
    )
    changes.wait("Service")
    second = mesh.snapshot()
    (entry_before,) = [s for s in first.services if s.hostname == "legacy.internal"]
    (entry_after,) = [s for s in second.services if s.hostname == "legacy.internal"]
    assert entry_after is entry_before
    (ratings_after,) = [s for s in second.services if s.hostname.startswith("ratings.")]
    assert [p.port for p in ratings_after.ports] == [9081]
    objects = [*store.list("", "Service", None)[0]]
    objects += store.list("networking.istio.io", "ServiceEntry", None)[0]
    assert second.services == build_snapshot(objects).services
