"""Locality load balancing by simulation: config and a caller in, the
assignment istiod would send out; then the proxy's own cluster (no sockets)
shows where requests go, and where they go when hosts are ejected."""

from __future__ import annotations

import random
from collections import Counter
from types import MappingProxyType
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import Locality, Node

from pilotfish.model import Instance, Proxy, Snapshot, build_snapshot
from pilotfish.model.locality import locality_from_labels
from pilotfish.model.types import Endpoint
from pilotfish.objects import Obj
from pilotfish.proxy.upstream import Cluster, compile_cluster, compile_load_assignment
from pilotfish.translate import translate_clusters, translate_endpoints
from pilotfish.translate.locality import (
    LocalityGroup,
    apply_distribute,
    apply_failover,
    apply_failover_priority,
    lb_priority,
    locality_match,
)
from pilotfish.translate.scope import Kind, scope_key
from pilotfish.xds import types
from pilotfish.xds.generate import generate
from pilotfish.xds.node import proxy_from_node

HOST = "echo.default.svc.cluster.local"
CLUSTER = f"outbound|80||{HOST}"

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "echo", "namespace": "default"},
    "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80}]},
}
PLACES = {
    "10.0.0.1": "us-east/zone-a/sub1",
    "10.0.0.2": "us-east/zone-a/sub2",
    "10.0.0.3": "us-east/zone-b/sub1",
    "10.0.0.4": "us-west/zone-a/sub1",
    "10.0.0.5": "eu-west/zone-a/sub1",
}


def rule(**policy: Any) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"host": HOST, "trafficPolicy": policy},
    }


OUTLIER = {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "30s"}


def instances(places: dict[str, str] = PLACES, labels: dict[str, Obj] | None = None) -> list[Any]:
    return [
        Instance(
            name=f"echo-{i}",
            namespace="default",
            workload="echo",
            address=address,
            ports={"http": 8080},
            labels={"app": "echo", **(labels or {}).get(address, {})},
            locality=locality,
        )
        for i, (address, locality) in enumerate(places.items())
    ]


def caller(locality: str = "us-east/zone-a/sub1", **labels: str) -> Proxy:
    return Proxy(
        node_id="sidecar~10.9.9.9~client-0.default~default.svc.cluster.local",
        namespace="default",
        labels=MappingProxyType({"app": "client", **labels}),
        locality=locality,
    )


def priorities(snapshot: Snapshot, proxy: Proxy) -> dict[str, int]:
    """address -> priority, and `weight:address` -> its locality's weight."""
    (cla,) = translate_endpoints(snapshot, proxy, [CLUSTER])
    out: dict[str, int] = {}
    for group in cla.endpoints:
        for lb in group.lb_endpoints:
            address = lb.endpoint.address.socket_address.address
            out[address] = group.priority
    return out


def test_with_outlier_detection_the_callers_locality_comes_first() -> None:
    snapshot = build_snapshot([SERVICE, rule(outlierDetection=OUTLIER)], instances())
    assert priorities(snapshot, caller()) == {
        "10.0.0.1": 0,  # same subzone
        "10.0.0.2": 1,  # same zone
        "10.0.0.3": 2,  # same region
        "10.0.0.4": 3,  # elsewhere
        "10.0.0.5": 3,
    }
    # Priorities are numbered without gaps from the caller's point of view.
    assert priorities(snapshot, caller("eu-west/zone-a/sub1")) == {
        "10.0.0.1": 1,
        "10.0.0.2": 1,
        "10.0.0.3": 1,
        "10.0.0.4": 1,
        "10.0.0.5": 0,
    }


@pytest.mark.parametrize(
    "objects",
    [
        [SERVICE],  # no outlier detection: Envoy would never leave priority 0
        [SERVICE, rule(connectionPool={"tcp": {"maxConnections": 10}})],
        [
            SERVICE,
            rule(outlierDetection=OUTLIER, loadBalancer={"localityLbSetting": {"enabled": False}}),
        ],
    ],
    ids=["no-rule", "no-outlier-detection", "disabled"],
)
def test_no_locality_preference_unless_failover_can_work(objects: list[Obj]) -> None:
    snapshot = build_snapshot(objects, instances())
    assert set(priorities(snapshot, caller()).values()) == {0}


def test_the_mesh_config_can_turn_it_off_and_a_rule_back_on() -> None:
    mesh = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "localityLbSetting:\n  enabled: false\n"},
    }
    off = build_snapshot([mesh, SERVICE, rule(outlierDetection=OUTLIER)], instances())
    assert set(priorities(off, caller()).values()) == {0}
    on = rule(outlierDetection=OUTLIER, loadBalancer={"localityLbSetting": {"enabled": True}})
    back = build_snapshot([mesh, SERVICE, on], instances())
    assert priorities(back, caller())["10.0.0.1"] == 0
    assert priorities(back, caller())["10.0.0.5"] == 3


def test_failover_rules_order_other_regions() -> None:
    setting = {"failover": [{"from": "us-east", "to": "eu-west"}]}
    snapshot = build_snapshot(
        [SERVICE, rule(outlierDetection=OUTLIER, loadBalancer={"localityLbSetting": setting})],
        instances(),
    )
    got = priorities(snapshot, caller())
    assert got["10.0.0.5"] == 3  # the region failover names
    assert got["10.0.0.4"] == 4  # any other region after it
    (cluster,) = [c for c in translate_clusters(snapshot, caller()) if c.name == CLUSTER]
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")


def test_failover_priority_orders_by_shared_labels() -> None:
    labels = {
        "10.0.0.1": {"network": "n1", "tier": "gold"},
        "10.0.0.2": {"network": "n1", "tier": "silver"},
        "10.0.0.3": {"network": "n2", "tier": "gold"},
    }
    places = {a: PLACES[a] for a in labels}
    setting = {"failoverPriority": ["network", "tier"]}
    snapshot = build_snapshot(
        [SERVICE, rule(outlierDetection=OUTLIER, loadBalancer={"localityLbSetting": setting})],
        instances(places, labels),
    )
    assert priorities(snapshot, caller(network="n1", tier="gold")) == {
        "10.0.0.1": 0,  # both labels match
        "10.0.0.2": 1,  # the first matches
        "10.0.0.3": 2,  # the first differs
    }
    # `label=value` compares with the value given, whatever the caller's.
    setting = {"failoverPriority": ["network=n2"]}
    snapshot = build_snapshot(
        [SERVICE, rule(outlierDetection=OUTLIER, loadBalancer={"localityLbSetting": setting})],
        instances(places, labels),
    )
    assert priorities(snapshot, caller(network="n1")) == {
        "10.0.0.1": 1,
        "10.0.0.2": 1,
        "10.0.0.3": 0,
    }


def test_failover_priority_can_name_the_topology_labels() -> None:
    setting = {"failoverPriority": ["topology.kubernetes.io/region", "topology.kubernetes.io/zone"]}
    snapshot = build_snapshot(
        [SERVICE, rule(outlierDetection=OUTLIER, loadBalancer={"localityLbSetting": setting})],
        instances(),
    )
    assert priorities(snapshot, caller("us-west/zone-a/sub9")) == {
        "10.0.0.4": 0,
        "10.0.0.1": 1,  # other region, so the first label differs: lowest priority
        "10.0.0.2": 1,
        "10.0.0.3": 1,
        "10.0.0.5": 1,
    }


def test_distribute_sets_weights_and_drops_what_it_does_not_name() -> None:
    setting = {
        "distribute": [
            {"from": "us-east/zone-a/*", "to": {"us-east/zone-a/*": 80, "us-west/*": 20}}
        ]
    }
    snapshot = build_snapshot(
        [SERVICE, rule(loadBalancer={"localityLbSetting": setting})], instances()
    )
    (cla,) = translate_endpoints(snapshot, caller(), [CLUSTER])
    weights = {
        g.locality.sub_zone + "@" + g.locality.region + "/" + g.locality.zone: (
            g.load_balancing_weight.value,
            len(g.lb_endpoints),
        )
        for g in cla.endpoints
    }
    assert weights == {
        "sub1@us-east/zone-a": (40, 1),  # 80 over two matching localities of weight 1
        "sub2@us-east/zone-a": (40, 1),
        "sub1@us-east/zone-b": (1, 0),
        "sub1@us-west/zone-a": (20, 1),
        "sub1@eu-west/zone-a": (1, 0),
    }
    (cluster,) = [c for c in translate_clusters(snapshot, caller()) if c.name == CLUSTER]
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")
    # A caller no rule is from keeps the plain weights.
    (cla,) = translate_endpoints(snapshot, caller("eu-west/zone-a/sub1"), [CLUSTER])
    assert all(len(g.lb_endpoints) == 1 for g in cla.endpoints)


def test_the_caller_without_a_node_locality_takes_its_instances() -> None:
    own = Instance(
        name="client-0",
        namespace="default",
        workload="client",
        address="10.9.9.9",
        ports={"http": 9000},
        labels={"app": "client"},
        locality="us-west/zone-a/sub1",
    )
    snapshot = build_snapshot([SERVICE, rule(outlierDetection=OUTLIER)], [*instances(), own])
    assert priorities(snapshot, caller(""))["10.0.0.4"] == 0


def test_proxies_in_different_places_get_their_own_assignments() -> None:
    snapshot = build_snapshot([SERVICE, rule(outlierDetection=OUTLIER)], instances())
    east, west, east_too = caller(), caller("us-west/zone-a/sub1"), caller()
    names = frozenset([CLUSTER])
    assert scope_key(snapshot, east, Kind.ENDPOINTS) != scope_key(snapshot, west, Kind.ENDPOINTS)
    assert scope_key(snapshot, east, Kind.ENDPOINTS) == scope_key(
        snapshot, east_too, Kind.ENDPOINTS
    )
    assert (
        generate(snapshot, east, types.ENDPOINT, names).version
        != generate(snapshot, west, types.ENDPOINT, names).version
    )
    # Routes and clusters do not depend on where the caller is.
    assert scope_key(snapshot, east, Kind.ROUTES) == scope_key(snapshot, west, Kind.ROUTES)


def test_failover_priority_labels_enter_the_scope() -> None:
    setting = {"failoverPriority": ["network"]}
    snapshot = build_snapshot(
        [SERVICE, rule(outlierDetection=OUTLIER, loadBalancer={"localityLbSetting": setting})],
        instances(),
    )
    a, b = caller(network="n1"), caller(network="n2")
    assert scope_key(snapshot, a, Kind.ENDPOINTS) != scope_key(snapshot, b, Kind.ENDPOINTS)


def test_the_node_locality_is_the_callers() -> None:
    node = Node(id="sidecar~10.0.0.9~c-0.default~default.svc.cluster.local")
    node.locality.CopyFrom(Locality(region="us-east", zone="zone-a", sub_zone="sub1"))
    assert proxy_from_node(node).locality == "us-east/zone-a/sub1"
    node.locality.CopyFrom(Locality(region="us-east"))
    assert proxy_from_node(node).locality == "us-east"


# --- the proxy's side: priorities in, picks out, without sockets ----------


def proxy_cluster(snapshot: Snapshot, proxy: Proxy) -> Cluster:
    (proto,) = [c for c in translate_clusters(snapshot, proxy) if c.name == CLUSTER]
    (cla,) = translate_endpoints(snapshot, proxy, [CLUSTER])
    cluster = Cluster(compile_cluster(proto), random.Random(7))
    cluster.set_assignment(compile_load_assignment(cla))
    return cluster


def picks(cluster: Cluster, n: int = 400) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        host = cluster.pick()
        out[host.address if host else "none"] += 1
    return out


def test_the_proxy_sends_everything_local_then_spills_over_when_ejected() -> None:
    # Envoy ejects at most 10% of hosts unless told otherwise (but always one).
    od = {**OUTLIER, "maxEjectionPercent": 100}
    snapshot = build_snapshot([SERVICE, rule(outlierDetection=od)], instances())
    cluster = proxy_cluster(snapshot, caller())
    assert picks(cluster) == {"10.0.0.1": 400}
    local = cluster.host("10.0.0.1", 8080)
    assert local is not None
    cluster.report(local, 503, now=100.0)  # consecutive5xxErrors: 1 ejects it
    assert local.ejected
    assert picks(cluster) == {"10.0.0.2": 400}  # the same zone next
    second = cluster.host("10.0.0.2", 8080)
    assert second is not None
    cluster.report(second, 503, now=100.0)
    assert picks(cluster) == {"10.0.0.3": 400}  # then the same region
    cluster.tick(200.0)  # base ejection time over: back home
    assert picks(cluster) == {"10.0.0.1": 400}


def test_partial_health_spills_by_the_overprovisioning_factor() -> None:
    """Envoy's 1.4 factor: a priority with 2 of 3 hosts healthy keeps 93%."""
    places = {"10.0.0.1": "r/z/a", "10.0.1.1": "r/z/a", "10.0.2.1": "r/z/a", "10.0.0.9": "r/z/b"}
    snapshot = build_snapshot(
        [SERVICE, rule(outlierDetection={**OUTLIER, "maxEjectionPercent": 100})],
        instances(places),
    )
    cluster = proxy_cluster(snapshot, caller("r/z/a"))
    host = cluster.host("10.0.0.1", 8080)
    assert host is not None
    cluster.report(host, 503, now=1.0)
    load = cluster.priority_load
    assert load is not None
    assert load.healthy == (93, 7)


# --- the pure functions, against Istio's own cases -----------------------


def group(locality: str, weight: int = 1, priority: int = 0) -> LocalityGroup:
    e = Endpoint(address=locality, port=1, locality=locality)
    return LocalityGroup(locality, (e,), weight, priority)


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [("a/b/c", "a/b/c", 0), ("a/b/c", "a/b/d", 1), ("a/b/c", "a/x/c", 2), ("a/b/c", "x/b/c", 3)],
)
def test_lb_priority(mine: str, theirs: str, expected: int) -> None:
    assert lb_priority(mine, theirs) == expected


@pytest.mark.parametrize(
    ("locality", "rule_text", "expected"),
    [
        ("a/b/c", "a", True),
        ("a/b/c", "a/*", True),
        ("a/b/c", "a/b/*", True),
        ("a/b/c", "a/x/*", False),
        ("a/b/c", "*", True),
        ("a/b/c", "b", False),
    ],
)
def test_locality_match(locality: str, rule_text: str, expected: bool) -> None:
    assert locality_match(locality, rule_text) is expected


def test_failover_on_top_of_failover_priority_keeps_the_label_order() -> None:
    groups = [group("a/z/s", priority=0), group("b/z/s", priority=0), group("a/z/s", priority=1)]
    got = apply_failover(groups, "a/z/s", [])
    assert [g.priority for g in got] == [0, 1, 2]


def test_failover_priority_without_caller_labels_changes_nothing() -> None:
    groups = [group("a/z/s"), group("b/z/s")]
    assert apply_failover_priority(groups, {}, ["network"]) == groups


def test_distribute_from_no_matching_rule_changes_nothing() -> None:
    groups = [group("a/z/s"), group("b/z/s")]
    assert apply_distribute(groups, "c/z/s", [{"from": "a/*", "to": {"a/*": 100}}]) == groups


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"istio-locality": "us-east.zone-a.sub1"}, "us-east/zone-a/sub1"),
        (
            {"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "z"},
            "r/z",
        ),
        ({"topology.kubernetes.io/zone": "z"}, ""),
        ({}, ""),
    ],
)
def test_locality_from_labels(labels: dict[str, str], expected: str) -> None:
    assert locality_from_labels(labels) == expected
