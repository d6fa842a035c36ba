"""Pushes by simulation (Istio's pilot/pkg/simulation, without sockets): random
config changes, each pushed as the ADS server pushes it (the shared
Generator, the kinds' affected types, version skipping, shared serialized
responses), and after every push each proxy holds exactly what translating it
afresh gives, and only proxies whose resources moved were sent anything."""

from __future__ import annotations

import copy
from typing import Any

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.model import Proxy, build_snapshot
from pilotfish.model.snapshot import Snapshot
from pilotfish.model.types import Instance
from pilotfish.translate import route_names_for
from pilotfish.xds import types
from pilotfish.xds.connection import Connection
from pilotfish.xds.generate import generate
from pilotfish.xds.server import AdsServer, _Push

Obj = dict[str, Any]
NAMESPACES = ("ns-a", "ns-b")
SERVICES = ("one", "two")


def _service(name: str, ns: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 9080}]},
    }


def _virtual_service(name: str, ns: str, weight: int, export_to: list[str]) -> Obj:
    spec: Obj = {
        "hosts": [name],
        "http": [
            {
                "route": [
                    {"destination": {"host": name, "subset": "v1"}, "weight": weight},
                    {"destination": {"host": name, "subset": "v2"}, "weight": 100 - weight},
                ]
            }
        ],
    }
    if export_to:
        spec["exportTo"] = export_to
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def _destination_rule(name: str, ns: str, subsets: int, pending: int) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "host": name,
            "trafficPolicy": {"connectionPool": {"http": {"http1MaxPendingRequests": pending}}},
            "subsets": [
                {"name": f"v{k}", "labels": {"version": f"v{k}"}} for k in range(1, subsets + 1)
            ],
        },
    }


def _sidecar(ns: str) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {"egress": [{"hosts": ["./*"]}]},
    }


def _instance(service: str, ns: str, k: int) -> Instance:
    return Instance(
        name=f"{service}-{k}",
        namespace=ns,
        workload=f"{service}-v{k}",
        address=f"10.0.{NAMESPACES.index(ns)}.{10 * SERVICES.index(service) + k}",
        ports={"http": 9080},
        labels={"app": service, "version": f"v{k}"},
    )


class Mesh:
    """The config a run changes, keyed by (kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        for ns in NAMESPACES:
            for name in SERVICES:
                self.objects["Service", ns, name] = _service(name, ns)
                self.objects["VirtualService", ns, name] = _virtual_service(name, ns, 90, [])
                self.objects["DestinationRule", ns, name] = _destination_rule(name, ns, 2, 10)
                for k in (1, 2):
                    self.instances[ns, f"{name}-{k}"] = _instance(name, ns, k)

    def snapshot(self) -> Snapshot:
        return build_snapshot(copy.deepcopy(list(self.objects.values())), self.instances.values())

    def apply(self, change: tuple[str, str, str, int]) -> str:
        """One change; the kind it changed, as the registry reports it."""
        kind, ns, name, value = change
        key = (kind, ns, name)
        if kind == "VirtualService":
            export = ["."] if value % 2 else []
            self.objects[key] = _virtual_service(name, ns, 10 * (value % 10), export)
        elif kind == "DestinationRule":
            self.objects[key] = _destination_rule(name, ns, 1 + value % 2, value)
        elif kind == "Sidecar":
            key = ("Sidecar", ns, "default")
            if self.objects.pop(key, None) is None:
                self.objects[key] = _sidecar(ns)
        else:
            instance = _instance(name, ns, 1 + value % 2)
            if self.instances.pop((ns, instance.name), None) is None:
                self.instances[ns, instance.name] = instance
            return "Instance"
        return kind


CHANGES = st.tuples(
    st.sampled_from(("VirtualService", "DestinationRule", "Sidecar", "Instance")),
    st.sampled_from(NAMESPACES),
    st.sampled_from(SERVICES),
    st.integers(1, 99),
)


def _proxies() -> list[Proxy]:
    """A sidecar in front of each instance, and a caller fronting nothing, per namespace."""
    out = []
    for ns in NAMESPACES:
        for name in SERVICES:
            for k in (1, 2):
                i = _instance(name, ns, k)
                out.append(
                    Proxy(
                        f"sidecar~{i.address}~{i.name}.{ns}~{ns}.svc.cluster.local",
                        ns,
                        labels=i.labels,
                        workload=i.workload,
                        ip=i.address,
                        metadata={"NAME": i.name},
                    )
                )
        out.append(Proxy(f"sidecar~127.0.0.1~caller.{ns}~{ns}.svc.cluster.local", ns))
    return out


def _wanted_names(snapshot: Snapshot, proxy: Proxy) -> dict[str, frozenset[str]]:
    """What a proxy subscribes to, as Envoy does: LDS and CDS wildcard, EDS
    for the clusters, RDS for the routes its listeners name."""
    clusters = generate(snapshot, proxy, types.CLUSTER, frozenset()).names
    return {
        types.CLUSTER: frozenset(),
        types.ENDPOINT: frozenset(clusters),
        types.LISTENER: frozenset(),
        types.ROUTE: frozenset(route_names_for(snapshot, proxy)),
    }


def _subscribe(server: AdsServer, conn: Connection, snapshot: Snapshot) -> None:
    """ACK what was sent, asking for the names the proxy now needs; answer
    a changed list as the server answers a request."""
    assert conn.proxy is not None
    for type_url, names in _wanted_names(snapshot, conn.proxy).items():
        watched = conn.watched.get(type_url)
        request = DiscoveryRequest(type_url=type_url, resource_names=sorted(names))
        if watched is not None:
            request.response_nonce = watched.sent_nonce
            request.version_info = watched.sent.version if watched.sent else ""
        if conn.on_request(request):
            generated = server._generator.generate(snapshot, conn.proxy, type_url, names)
            conn.response(type_url, generated)


def _check_fresh(conn: Connection, snapshot: Snapshot) -> None:
    assert conn.proxy is not None
    for type_url, watched in conn.watched.items():
        fresh = generate(snapshot, conn.proxy, type_url, watched.names)
        assert watched.sent is not None
        assert watched.sent.version == fresh.version, (conn.proxy.node_id, type_url)
        sent = [r.SerializeToString() for r in watched.sent.resources]
        assert sent == [r.SerializeToString() for r in fresh.resources]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CHANGES, min_size=1, max_size=6))
def test_after_each_push_every_proxy_holds_a_fresh_translation(
    changes: list[tuple[str, str, str, int]],
) -> None:
    mesh = Mesh()
    snapshot = mesh.snapshot()
    server = AdsServer(lambda: snapshot)
    conns = []
    for n, proxy in enumerate(_proxies()):
        conn = Connection(f"c{n}", "127.0.0.1", proxy)
        _subscribe(server, conn, snapshot)
        conns.append(conn)
    for change in changes:
        kind = mesh.apply(change)
        snapshot = mesh.snapshot()
        kinds = frozenset({kind})
        sidecars = types.affected_types(kinds, sidecar=True)
        push = _Push(snapshot, types.affected_types(kinds), sidecars)
        for conn in conns:
            assert conn.proxy is not None
            before = {t: w.sent.version for t, w in conn.watched.items() if w.sent}
            sent = {DiscoveryResponse.FromString(r).type_url for r in server._push(conn, push)}
            moved = {
                t
                for t, w in conn.watched.items()
                if generate(snapshot, conn.proxy, t, w.names).version != before[t]
            }
            # A proxy is sent exactly the types whose resources moved for it.
            assert sent == moved, (conn.proxy.node_id, change)
            _subscribe(server, conn, snapshot)
            _check_fresh(conn, snapshot)


def test_a_response_is_the_shared_body_plus_the_streams_own_nonce() -> None:
    snapshot = Mesh().snapshot()
    proxy = _proxies()[0]
    generated = generate(snapshot, proxy, types.CLUSTER, frozenset())
    one, two = (Connection(c, "127.0.0.1", proxy) for c in ("a", "b"))
    sent = []
    for conn in (one, two):
        conn.on_request(DiscoveryRequest(type_url=types.CLUSTER))
        sent.append(DiscoveryResponse.FromString(conn.response(types.CLUSTER, generated)))
    for conn, response in zip((one, two), sent, strict=True):
        assert response.nonce == conn.watched[types.CLUSTER].sent_nonce
        assert response.version_info == generated.version
        assert response.type_url == types.CLUSTER
        assert list(response.resources) == list(generated.resources)
    assert sent[0].nonce != sent[1].nonce
