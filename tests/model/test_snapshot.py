"""Building the snapshot: host names, protocols, endpoints, visibility."""

from __future__ import annotations

from typing import Any

import pytest

from pilotfish.model import Instance, Protocol, Proxy, build_snapshot, resolve_host
from pilotfish.model.services import infer_protocol

Obj = dict[str, Any]


def obj(kind: str, name: str, namespace: str = "default", **spec: Any) -> Obj:
    api = "v1" if kind == "Service" else "networking.istio.io/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def svc(
    name: str, namespace: str = "default", annotations: dict[str, str] | None = None, **spec: Any
) -> Obj:
    defaults: Obj = {"selector": {"app": name}, "ports": [{"name": "http", "port": 9080}]}
    out = obj("Service", name, namespace, **{**defaults, **spec})
    if annotations:
        out["metadata"]["annotations"] = annotations
    return out


def inst(
    app: str,
    version: str = "v1",
    namespace: str = "default",
    port: int = 7000,
    healthy: bool = True,
    **ports: int,
) -> Instance:
    return Instance(
        name=f"{app}-{version}",
        namespace=namespace,
        workload=f"{app}-{version}",
        address="127.0.0.1",
        ports={"http": port, **ports},
        labels={"app": app, "version": version},
        healthy=healthy,
    )


def proxy(namespace: str = "default", **labels: str) -> Proxy:
    return Proxy(
        node_id=f"sidecar~127.0.0.1~client.{namespace}~x", namespace=namespace, labels=labels
    )


def hosts(snap: Any, p: Proxy) -> list[str]:
    return [s.hostname for s in snap.visible_services(p)]


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        ("reviews", "default", "reviews.default.svc.cluster.local"),
        ("reviews", "shop", "reviews.shop.svc.cluster.local"),
        ("reviews.default", "shop", "reviews.default"),  # Istio leaves dotted names alone
        ("*", "shop", "*"),
        ("*.example.com", "shop", "*.example.com"),
        ("Reviews", "default", "reviews.default.svc.cluster.local"),
    ],
)
def test_short_names_resolve_in_the_config_namespace(
    host: str, namespace: str, expected: str
) -> None:
    assert resolve_host(host, namespace) == expected


def test_virtual_service_hosts_and_destinations_resolve() -> None:
    vs = obj(
        "VirtualService",
        "r",
        "shop",
        hosts=["reviews"],
        http=[{"route": [{"destination": {"host": "ratings"}}], "mirror": {"host": "m"}}],
    )
    (read,) = build_snapshot([vs]).virtual_services
    assert read.hosts == ("reviews.shop.svc.cluster.local",)
    assert read.http[0]["route"][0]["destination"]["host"] == "ratings.shop.svc.cluster.local"
    assert read.http[0]["mirror"]["host"] == "m.shop.svc.cluster.local"
    assert read.gateways == ("mesh",)


@pytest.mark.parametrize(
    ("name", "app_protocol", "l4", "expected"),
    [
        ("http", "", "TCP", Protocol.HTTP),
        ("http-web", "", "TCP", Protocol.HTTP),
        ("http2", "", "TCP", Protocol.HTTP2),
        ("grpc", "", "TCP", Protocol.GRPC),
        ("grpc-web", "", "TCP", Protocol.GRPC_WEB),
        ("tcp-db", "", "TCP", Protocol.TCP),
        ("web", "http", "TCP", Protocol.HTTP),
        ("web", "kubernetes.io/h2c", "TCP", Protocol.HTTP2),
        ("", "", "TCP", Protocol.UNSUPPORTED),
        ("dns", "", "UDP", Protocol.UDP),
    ],
)
def test_protocol_inference(name: str, app_protocol: str, l4: str, expected: Protocol) -> None:
    assert infer_protocol(name, app_protocol, l4) == expected


def test_service_endpoints_follow_selector_health_and_target_port() -> None:
    named = svc("reviews", ports=[{"name": "http", "port": 9080, "targetPort": "web"}])
    snap = build_snapshot(
        [
            named,
            obj(
                "WorkloadEntry",
                "vm",
                address="10.0.0.9",
                labels={"app": "reviews", "version": "vm"},
                ports={"web": 8080},
            ),
        ],
        [
            inst("reviews", "v1", web=7001),
            inst("reviews", "v2", healthy=False, web=7002),
            inst("ratings", web=7003),
        ],
    )
    (service,) = snap.services
    found = [(e.address, e.port) for e in snap.endpoints(service, 9080)]
    assert found == [("10.0.0.9", 8080), ("127.0.0.1", 7001)]


def test_service_entry_endpoints_and_dns() -> None:
    static = obj(
        "ServiceEntry",
        "db",
        hosts=["db.internal"],
        location="MESH_INTERNAL",
        resolution="STATIC",
        ports=[{"number": 5432, "name": "tcp", "protocol": "TCP"}],
        endpoints=[{"address": "10.1.1.1", "locality": "eu/a"}],
    )
    dns = obj(
        "ServiceEntry",
        "ext",
        hosts=["api.example.com"],
        resolution="DNS",
        ports=[{"number": 443, "name": "https", "protocol": "HTTPS"}],
    )
    snap = build_snapshot([static, dns])
    by_host = {s.hostname: s for s in snap.services}
    (db,) = snap.endpoints(by_host["db.internal"], 5432)
    assert (db.address, db.port, db.locality) == ("10.1.1.1", 5432, "eu/a")
    assert not by_host["db.internal"].mesh_external and by_host["api.example.com"].mesh_external
    (ext,) = snap.endpoints(by_host["api.example.com"], 443)
    assert (ext.address, ext.port) == ("api.example.com", 443)


def test_export_to_limits_services_and_virtual_services() -> None:
    private = svc("secret", "team-a", annotations={"networking.istio.io/exportTo": "."})
    vs = obj(
        "VirtualService",
        "pub",
        "team-a",
        hosts=["public"],
        exportTo=["team-a"],
        http=[{"route": [{"destination": {"host": "public"}}]}],
    )
    snap = build_snapshot([private, svc("public", "team-a"), vs])
    assert hosts(snap, proxy("team-a")) == [
        "public.team-a.svc.cluster.local",
        "secret.team-a.svc.cluster.local",
    ]
    assert hosts(snap, proxy("team-b")) == ["public.team-a.svc.cluster.local"]
    assert snap.virtual_service_for(proxy("team-a"), "public.team-a.svc.cluster.local") is not None
    assert snap.virtual_service_for(proxy("team-b"), "public.team-a.svc.cluster.local") is None


def test_sidecar_egress_filters_what_a_proxy_sees() -> None:
    objects = [
        svc("a", "front"),
        svc("b", "back"),
        svc("c", "other"),
        obj("Sidecar", "default", "front", egress=[{"hosts": ["./*", "back/*"]}]),
        obj(
            "Sidecar",
            "narrow",
            "front",
            workloadSelector={"labels": {"app": "x"}},
            egress=[{"hosts": ["./*"]}],
        ),
    ]
    snap = build_snapshot(objects)
    assert hosts(snap, proxy("front")) == ["a.front.svc.cluster.local", "b.back.svc.cluster.local"]
    assert hosts(snap, proxy("front", app="x")) == ["a.front.svc.cluster.local"]
    assert len(hosts(snap, proxy("other"))) == 3


def test_root_namespace_sidecar_applies_mesh_wide() -> None:
    objects = [
        svc("a", "front"),
        svc("b", "back"),
        obj("Sidecar", "default", "istio-system", egress=[{"hosts": ["./*"]}]),
    ]
    assert hosts(build_snapshot(objects), proxy("back")) == ["b.back.svc.cluster.local"]


def dr(namespace: str, host: str, subset: str, export: list[str] | None = None) -> Obj:
    spec: Obj = {"host": host, "subsets": [{"name": subset, "labels": {"v": subset}}]}
    if export is not None:
        spec["exportTo"] = export
    return obj("DestinationRule", f"dr-{namespace}-{subset}", namespace, **spec)


def test_destination_rule_lookup_order() -> None:
    host = "reviews.back.svc.cluster.local"
    base = [svc("reviews", "back")]
    in_root = dr("istio-system", host, "root")
    in_service_ns = dr("back", "reviews", "svc")
    in_proxy_ns = dr("front", host, "mine")
    hidden = dr("back", "reviews", "hidden", export=["."])

    def subset(objects: list[Obj], ns: str = "front") -> str | None:
        found = build_snapshot(objects).destination_rule(proxy(ns), host)
        return found.subsets[0].name if found else None

    assert subset([*base, in_root, in_service_ns, in_proxy_ns]) == "mine"
    assert subset([*base, in_root, in_service_ns]) == "svc"
    assert subset([*base, in_root]) == "root"
    assert subset([*base, in_root, hidden]) == "root"
    assert subset([*base, hidden], ns="back") == "hidden"


def test_wildcard_destination_rule_and_merge() -> None:
    first = obj(
        "DestinationRule",
        "a",
        host="*.default.svc.cluster.local",
        subsets=[{"name": "v1", "labels": {"version": "v1"}}],
    )
    snap = build_snapshot([svc("reviews"), first])
    found = snap.destination_rule(proxy(), "reviews.default.svc.cluster.local")
    assert found is not None and found.name == "a"
    second = obj(
        "DestinationRule",
        "b",
        host="reviews",
        subsets=[{"name": "v2", "labels": {"version": "v2"}}],
    )
    third = obj(
        "DestinationRule",
        "c",
        host="reviews",
        subsets=[{"name": "v3", "labels": {"version": "v3"}}],
    )
    merged = build_snapshot([svc("reviews"), first, second, third]).destination_rule(
        proxy(), "reviews.default.svc.cluster.local"
    )
    assert merged is not None and [s.name for s in merged.subsets] == ["v2", "v3"]


def test_own_instances_by_name_then_workload() -> None:
    snap = build_snapshot([], [inst("reviews", "v1"), inst("reviews", "v2")])
    by_node = Proxy(node_id="sidecar~127.0.0.1~reviews-v2.default~x", namespace="default")
    assert [i.name for i in snap.own_instances(by_node)] == ["reviews-v2"]
    by_workload = Proxy(node_id="n1", namespace="default", workload="reviews-v1")
    assert [i.name for i in snap.own_instances(by_workload)] == ["reviews-v1"]


def test_gateway_bindings_resolve_names() -> None:
    gw = obj(
        "Gateway",
        "gw",
        "edge",
        selector={"istio": "ingress"},
        servers=[{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
    )
    vs = obj(
        "VirtualService",
        "v",
        "default",
        hosts=["*"],
        gateways=["edge/gw"],
        http=[{"route": [{"destination": {"host": "a"}}]}],
    )
    snap = build_snapshot([gw, vs])
    ingress = Proxy(node_id="router~1", namespace="edge", labels={"istio": "ingress"})
    assert [g.key for g in snap.gateways_for(ingress)] == ["edge/gw"]
    assert [v.name for v in snap.gateway_virtual_services(ingress, "edge/gw")] == ["v"]
    assert snap.virtual_service_for(proxy(), "a.default.svc.cluster.local") is None
