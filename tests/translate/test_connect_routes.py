"""CONNECT in translation, by simulation: the sidecar's outbound table,
compiled by the proxy's real route table, sends a CONNECT for each service
port to its cluster (a TCP port's `tcp` route weights included), and any
other target by the outbound traffic policy; plain requests are routed as
before; the proxy refuses a connect route that does not terminate CONNECT."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format
from translate_sim import PRODUCTPAGE, request, service, sidecar_table

from pilotfish.model import build_snapshot
from pilotfish.proxy.listeners import compile_listener
from pilotfish.proxy.routing import (
    Forward,
    Request,
    RouteConfigError,
    RouteTable,
    compile_route_config,
)
from pilotfish.proxy.upstream.compile import compile_cluster
from pilotfish.translate import translate_clusters, translate_listeners

Obj = dict[str, Any]
REDIS = "redis.default.svc.cluster.local"


def redis(weights: list[Obj] | None = None) -> list[Obj]:
    objects: list[Obj] = [
        service("reviews"),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "redis", "namespace": "default"},
            "spec": {"selector": {"app": "redis"}, "ports": [{"name": "tcp-redis", "port": 6379}]},
        },
    ]
    if weights:
        objects.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "redis", "namespace": "default"},
                "spec": {"hosts": ["redis"], "tcp": [{"route": weights}]},
            }
        )
    return objects


def connect(table: RouteTable, target: str, rand: int = 0) -> str | None:
    req = Request(method=b"CONNECT", path=b"", authority=target.encode())
    route = table.connect_route(req)
    if route is None:
        return None
    assert isinstance(route.action, Forward)
    return route.action.pick(req, rand).cluster


def test_connect_reaches_every_service_port_and_plain_requests_are_untouched() -> None:
    table = sidecar_table(build_snapshot(redis(), []))
    assert connect(table, "redis:6379") == f"outbound|6379||{REDIS}"
    assert connect(table, f"{REDIS}:6379") == f"outbound|6379||{REDIS}"
    assert connect(table, "reviews:9080") == "outbound|9080||reviews.default.svc.cluster.local"
    assert table.route(request("reviews:9080")) is not None
    assert table.route(request("redis:6379")) is None  # a TCP port takes no HTTP request
    assert table.route(request("example.com")) is None  # 404 NR, as before


def test_a_tcp_routes_weights_split_tunnels() -> None:
    weights = [
        {"destination": {"host": "redis", "subset": "a"}, "weight": 80},
        {"destination": {"host": "redis", "subset": "b"}, "weight": 20},
    ]
    table = sidecar_table(build_snapshot(redis(weights), []))
    got = [connect(table, "redis:6379", rand) for rand in range(100)]
    assert got.count(f"outbound|6379|a|{REDIS}") == 80
    assert got.count(f"outbound|6379|b|{REDIS}") == 20


def sidecar_resource(mode: str) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"outboundTrafficPolicy": {"mode": mode}},
    }


def mesh_config(mode: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": f"outboundTrafficPolicy: {{mode: {mode}}}"},
    }


@pytest.mark.parametrize(
    ("extra", "cluster"),
    [
        ([], "PassthroughCluster"),
        ([mesh_config("REGISTRY_ONLY")], "BlackHoleCluster"),
        ([sidecar_resource("REGISTRY_ONLY")], "BlackHoleCluster"),
        ([mesh_config("REGISTRY_ONLY"), sidecar_resource("ALLOW_ANY")], "PassthroughCluster"),
    ],
)
def test_other_targets_follow_the_outbound_traffic_policy(extra: list[Obj], cluster: str) -> None:
    snapshot = build_snapshot([*redis(), *extra], [])
    assert connect(sidecar_table(snapshot), "example.com:443") == cluster
    assert connect(sidecar_table(snapshot), "redis:6379") == f"outbound|6379||{REDIS}"


def test_the_egress_clusters_and_the_outbound_listener_compile_in_the_proxy() -> None:
    snapshot = build_snapshot(redis(), [])
    clusters = {c.name: c for c in translate_clusters(snapshot, PRODUCTPAGE)}
    assert compile_cluster(clusters["PassthroughCluster"]).original_dst
    assert not compile_cluster(clusters["BlackHoleCluster"]).original_dst
    (outbound,) = [
        x for x in translate_listeners(snapshot, PRODUCTPAGE) if x.name.startswith("127")
    ]
    assert b"connect" in compile_listener(outbound).http.upgrades


def _config(route: Obj) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(
        {"name": "t", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
        route_pb2.RouteConfiguration(),
    )


@pytest.mark.parametrize(
    ("route", "why"),
    [
        ({"match": {"connect_matcher": {}}, "route": {"cluster": "c"}}, "must terminate CONNECT"),
        (
            {"match": {"prefix": "/"}, "route": {"cluster": "c", "upgrade_configs": [
                {"upgrade_type": "CONNECT", "connect_config": {}}]}},
            "only CONNECT with connect_config on a connect_matcher route",
        ),
        (
            {"match": {"connect_matcher": {}}, "route": {"cluster": "c", "upgrade_configs": [
                {"upgrade_type": "websocket"}]}},
            "must terminate CONNECT",
        ),
    ],
)  # fmt: skip
def test_the_proxy_refuses_connect_routes_it_cannot_serve(route: Obj, why: str) -> None:
    with pytest.raises(RouteConfigError, match=why) as error:
        compile_route_config(_config(route))
    assert "routes[0].route.upgrade_configs" in str(error.value)
