"""Clusters from trafficPolicy, listeners per proxy type, the proxyless gRPC
shape grpcio needs, and determinism."""

from __future__ import annotations

import random
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import json_format
from translate_sim import (
    BOOKINFO_INSTANCES,
    BOOKINFO_SERVICES,
    INGRESS,
    PRODUCTPAGE,
    bookinfo,
    cluster,
    instance,
    load_file,
    route_config,
    service,
)

from pilotfish.model import Proxy, ProxyType, build_snapshot
from pilotfish.proxy.listeners import compile_listener
from pilotfish.proxy.routing import compile_route_config
from pilotfish.translate import (
    translate_clusters,
    translate_endpoints,
    translate_listeners,
    translate_routes,
)

Obj = dict[str, Any]


def rule(traffic_policy: Obj, subsets: list[Obj] | None = None) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "trafficPolicy": traffic_policy, "subsets": subsets or []},
    }


def clusters(*objects: Obj, proxy: Proxy = PRODUCTPAGE) -> dict[str, Cluster]:
    snap = build_snapshot([*BOOKINFO_SERVICES, *objects], BOOKINFO_INSTANCES)
    return {c.name: c for c in translate_clusters(snap, proxy)}


def test_subset_policy_overrides_top_level_and_port_level_replaces() -> None:
    found = clusters(
        rule(
            {
                "loadBalancer": {"simple": "RANDOM"},
                "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "2s"}},
                "portLevelSettings": [
                    {"port": {"number": 9080}, "loadBalancer": {"simple": "LEAST_REQUEST"}}
                ],
            },
            [
                {"name": "v1", "labels": {"version": "v1"}},
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
                },
            ],
        )
    )
    top = found[cluster("reviews")]
    # Port-level settings replace connectionPool too: it is back to the defaults.
    assert top.lb_policy == Cluster.LEAST_REQUEST
    (limits,) = top.circuit_breakers.thresholds
    assert limits.max_retries.value == limits.max_connections.value == 2**32 - 1
    assert top.connect_timeout.seconds == 10
    assert found[cluster("reviews", "v1")].lb_policy == Cluster.LEAST_REQUEST
    assert found[cluster("reviews", "v2")].lb_policy == Cluster.ROUND_ROBIN
    assert found[cluster("reviews", "v2")].type == Cluster.EDS
    assert found[cluster("reviews", "v2")].eds_cluster_config.service_name == cluster(
        "reviews", "v2"
    )


def test_connection_pool_and_outlier_detection() -> None:
    found = clusters(
        rule(
            {
                "connectionPool": {
                    "tcp": {"maxConnections": 100, "connectTimeout": "3s"},
                    "http": {
                        "http1MaxPendingRequests": 5,
                        "maxRequestsPerConnection": 1,
                        "idleTimeout": "30s",
                    },
                },
                "outlierDetection": {
                    "consecutive5xxErrors": 3,
                    "interval": "5s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 50,
                },
            }
        )
    )
    c = found[cluster("reviews")]
    (limits,) = c.circuit_breakers.thresholds
    assert (limits.max_connections.value, limits.max_pending_requests.value) == (100, 5)
    assert limits.max_requests.value == 2**32 - 1
    assert c.connect_timeout.seconds == 3
    options = hpo.HttpProtocolOptions()
    c.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(options)
    assert options.common_http_protocol_options.max_requests_per_connection.value == 1
    assert options.common_http_protocol_options.idle_timeout.seconds == 30
    od = c.outlier_detection
    assert (od.consecutive_5xx.value, od.enforcing_consecutive_5xx.value) == (3, 100)
    assert (od.interval.seconds, od.base_ejection_time.seconds, od.max_ejection_percent.value) == (
        5,
        30,
        50,
    )
    assert c.common_lb_config.healthy_panic_threshold.value == 0


def test_consistent_hash_sets_ring_and_route_hash_policy() -> None:
    dr = rule({"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})
    assert clusters(dr)[cluster("reviews")].lb_policy == Cluster.RING_HASH
    assert clusters(dr)[cluster("reviews")].ring_hash_lb_config.minimum_ring_size.value == 1024
    snap = build_snapshot([*BOOKINFO_SERVICES, dr], BOOKINFO_INSTANCES)
    config = route_config(snap, PRODUCTPAGE, "http_proxy")
    (vhost,) = [v for v in config.virtual_hosts if v.name.startswith("reviews.")]
    action = vhost.routes[0].route
    assert [h.header.header_name for h in action.hash_policy] == ["x-user"]
    # Hashing wants the same host again: no retry on other hosts.
    assert not action.retry_policy.retry_host_predicate


def test_grpc_ports_speak_http2_upstream() -> None:
    grpc = service("reviews", ports=[{"name": "grpc", "port": 9080}])
    snap = build_snapshot([grpc], BOOKINFO_INSTANCES)
    (c,) = [c for c in translate_clusters(snap, PRODUCTPAGE) if c.name == cluster("reviews")]
    options = hpo.HttpProtocolOptions()
    c.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


def test_sidecar_listeners_and_inbound_cluster() -> None:
    snap = bookinfo("virtual-service-all-v1.yaml", "destination-rule-all.yaml")
    listeners = {x.name: x for x in translate_listeners(snap, PRODUCTPAGE)}
    assert sorted(listeners) == ["127.0.0.1_15001", "inbound_127.0.0.1_19080"]
    outbound = compile_listener(listeners["127.0.0.1_15001"])
    assert (outbound.host, outbound.port, outbound.http.rds_name) == (
        "127.0.0.1",
        15001,
        "http_proxy",
    )
    assert not outbound.inbound
    inbound = compile_listener(listeners["inbound_127.0.0.1_19080"])
    assert inbound.inbound and inbound.http.routes is not None
    own = PRODUCTPAGE
    found = {c.name: c for c in translate_clusters(snap, own)}
    app = found["inbound|19080||"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (app.socket_address.address, app.socket_address.port_value) == ("127.0.0.1", 19080)


def test_inbound_cluster_points_at_the_application_port() -> None:
    inst = instance("reviews", "v1", 19083, app_ports={"http": 29083})
    snap = build_snapshot(BOOKINFO_SERVICES, [inst])
    proxy = Proxy(node_id="sidecar~127.0.0.1~reviews-v1-0.default~x", namespace="default")
    found = {c.name: c for c in translate_clusters(snap, proxy)}
    app = found["inbound|19083||"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert app.socket_address.port_value == 29083


def test_inbound_cluster_names_its_service_in_istio_metadata() -> None:
    """Istio's `istio.services`: how the callee's sidecar knows destination_service."""
    inst = instance("reviews", "v1", 19083, app_ports={"http": 29083})
    snap = build_snapshot(BOOKINFO_SERVICES, [inst])
    proxy = Proxy(node_id="sidecar~127.0.0.1~reviews-v1-0.default~x", namespace="default")
    found = {c.name: c for c in translate_clusters(snap, proxy)}
    istio = json_format.MessageToDict(found["inbound|19083||"].metadata)["filterMetadata"]["istio"]
    assert istio == {
        "services": [
            {"host": "reviews.default.svc.cluster.local", "name": "reviews", "namespace": "default"}
        ]
    }


def test_gateway_listener() -> None:
    snap = bookinfo("bookinfo-gateway.yaml")
    (listener,) = translate_listeners(snap, INGRESS)
    compiled = compile_listener(listener)
    assert (compiled.port, compiled.http.rds_name, compiled.http.use_remote_address) == (
        8080,
        "http.8080",
        True,
    )
    assert translate_listeners(snap, PRODUCTPAGE)[0].name == "127.0.0.1_15001"


def test_every_route_config_compiles_in_the_proxy() -> None:
    """Nothing the pilotfish proxy would have to reject or ignore."""
    files = [
        "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-ratings-test-delay.yaml",
        "destination-rule-all.yaml",
        "bookinfo-gateway.yaml",
        "egress-rule-google-apis.yaml",
    ]
    snap = bookinfo(*files)
    for proxy in (PRODUCTPAGE, INGRESS):
        configs = translate_routes(snap, proxy)
        assert configs
        for config in configs:
            compile_route_config(config)


GRPC_CLIENT = Proxy(
    node_id="sidecar~127.0.0.1~client-0.default~default.svc.cluster.local",
    namespace="default",
    type=ProxyType.GRPC,
)


def test_proxyless_grpc_shape() -> None:
    located = [
        instance("reviews", "v1", 19083, locality="us-east/zone-a"),
        instance("reviews", "v2", 19084, locality="us-east/zone-b"),
    ]
    snap = build_snapshot(
        [
            *BOOKINFO_SERVICES,
            *load_file("destination-rule-all.yaml"),
            *load_file("virtual-service-reviews-90-10.yaml"),
        ],
        located,
    )
    listeners = {x.name: x for x in translate_listeners(snap, GRPC_CLIENT)}
    name = "reviews.default.svc.cluster.local:9080"
    assert name in listeners
    manager = hcm_pb2.HttpConnectionManager()
    assert listeners[name].api_listener.api_listener.Unpack(manager)
    assert manager.http_filters and manager.http_filters[-1].name == "envoy.filters.http.router"
    route_name = manager.rds.route_config_name
    assert route_name == cluster("reviews") and manager.rds.config_source.HasField("ads")
    (config,) = translate_routes(snap, GRPC_CLIENT, [route_name])
    (vhost,) = config.virtual_hosts
    assert name in vhost.domains
    weighted = vhost.routes[0].route.weighted_clusters.clusters
    assert [(w.name, w.weight.value) for w in weighted] == [
        (cluster("reviews", "v1"), 90),
        (cluster("reviews", "v2"), 10),
    ]
    assert vhost.routes[0].route.HasField("max_stream_duration")
    names = [
        c.name
        for c in translate_clusters(snap, GRPC_CLIENT)
        if c.name.endswith("reviews.default.svc.cluster.local")
    ]
    assignments = translate_endpoints(snap, GRPC_CLIENT, names)
    for cla in assignments:
        for locality in cla.endpoints:
            assert locality.load_balancing_weight.value > 0
    (all_reviews,) = [a for a in assignments if a.cluster_name == cluster("reviews")]
    assert [loc.locality.zone for loc in all_reviews.endpoints] == ["zone-a", "zone-b"]


def test_translation_is_deterministic() -> None:
    objects = [
        *BOOKINFO_SERVICES,
        *load_file("destination-rule-all.yaml"),
        *load_file("virtual-service-all-v1.yaml"),
        *load_file("bookinfo-gateway.yaml"),
    ]

    def everything(objs: list[Obj]) -> list[bytes]:
        snap = build_snapshot(objs, list(reversed(BOOKINFO_INSTANCES)))
        out: list[Any] = []
        for proxy in (PRODUCTPAGE, INGRESS, GRPC_CLIENT):
            out += translate_listeners(snap, proxy) + translate_routes(snap, proxy)
            out += translate_clusters(snap, proxy) + translate_endpoints(snap, proxy)
        return [m.SerializeToString(deterministic=True) for m in out]

    shuffled = list(objects)
    random.Random(4).shuffle(shuffled)
    assert everything(objects) == everything(shuffled)
