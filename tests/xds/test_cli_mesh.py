"""`proxy-status` and `proxy-config` tables from real translated resources,
and `register`'s argument parsing."""

from __future__ import annotations

import argparse

import pytest
from google.protobuf.json_format import MessageToDict
from xds_harness import MutableMesh, instance, service

from pilotfish.cli.flags import UsageError
from pilotfish.cli.main import build_parser
from pilotfish.cli.mesh import config_table, nack_lines, registration, status_table
from pilotfish.model import Proxy, ProxyType
from pilotfish.xds import types
from pilotfish.xds.generate import generate

GRPC = Proxy(node_id="proxyless~127.0.0.1~c-0.default~x", namespace="default", type=ProxyType.GRPC)
SIDECAR = Proxy(node_id="sidecar~127.0.0.1~p-0.default~x", namespace="default")
REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


def dumped(proxy: Proxy, type_url: str, names: frozenset[str] = frozenset()) -> list[dict]:
    mesh = MutableMesh([service("reviews")], [instance("reviews", "v1", 19081)])
    generated = generate(mesh.snapshot(), proxy, type_url, names)
    return [MessageToDict(r) for r in generated.resources]


def test_listener_table_shows_api_listeners_and_socket_listeners() -> None:
    table = config_table("listeners", dumped(GRPC, types.LISTENER))
    assert "reviews.default.svc.cluster.local:9080   -         -      API" in table
    sidecar = config_table("listeners", dumped(SIDECAR, types.LISTENER)).splitlines()
    assert sidecar[1].split() == [
        "127.0.0.1_15001",
        "127.0.0.1",
        "15001",
        "HTTP",
        "Route:",
        "http_proxy",
    ]


def test_listener_table_has_one_row_per_filter_chain_named_by_its_terminal_filter() -> None:
    rbac = {"name": "envoy.filters.network.rbac", "typedConfig": {"statPrefix": "tcp."}}
    split = {"clusters": [{"name": "outbound|6379|v1|redis", "weight": 80},
                          {"name": "outbound|6379|v2|redis", "weight": 20}]}  # fmt: skip
    listener = {
        "name": "0.0.0.0_6379",
        "address": {"socketAddress": {"address": "0.0.0.0", "portValue": 6379}},
        "filterChains": [
            {"filters": [rbac, {"typedConfig": {"weightedClusters": split}}]},
            {"filters": [{"typedConfig": {"cluster": "PassthroughCluster"}}]},
        ],
    }
    rows = config_table("listeners", [listener]).splitlines()[1:]
    assert [row.split(None, 4) for row in rows] == [
        ["0.0.0.0_6379", "0.0.0.0", "6379", "TCP",
         "WeightedClusters: outbound|6379|v1|redis (80), outbound|6379|v2|redis (20)"],
        ["0.0.0.0_6379", "0.0.0.0", "6379", "TCP", "Cluster: PassthroughCluster"],
    ]  # fmt: skip


def test_route_cluster_and_endpoint_tables() -> None:
    routes = config_table("routes", dumped(GRPC, types.ROUTE, frozenset({REVIEWS})))
    assert REVIEWS in routes.splitlines()[1]
    clusters = config_table("clusters", dumped(GRPC, types.CLUSTER)).splitlines()
    assert clusters[1].split() == [
        "reviews.default.svc.cluster.local",
        "9080",
        "-",
        "outbound",
        "EDS",
    ]
    endpoints = config_table("endpoints", dumped(GRPC, types.ENDPOINT, frozenset({REVIEWS})))
    assert endpoints.splitlines()[1].split() == ["127.0.0.1:19081", "HEALTHY", REVIEWS]


def test_status_table_and_nacks() -> None:
    items = [
        {
            "proxy": "sidecar~1~a.default~x",
            "type": "sidecar",
            "namespace": "default",
            "types": {
                "CDS": {"state": "SYNCED", "ackedVersion": "v"},
                "LDS": {"state": "NACK", "ackedVersion": "", "nack": {"message": "bad filter"}},
                "EDS": {"state": "STALE", "ackedVersion": ""},
            },
        }
    ]
    row = status_table(items).splitlines()[1]
    assert "SYNCED   NACK   STALE (Never Acknowledged)   NOT SENT" in row
    assert nack_lines(items) == ["NACK sidecar~1~a.default~x LDS: bad filter"]


def test_register_arguments() -> None:
    args = build_parser().parse_args(
        ["register", "echo-v1-0", "--port", "grpc=50051", "--label", "app=echo", "--ttl", "2"]
    )
    body = registration(args)
    assert body["ports"] == {"grpc": 50051} and body["labels"] == {"app": "echo"}
    assert body["namespace"] == "default" and body["workload"] == "echo-v1-0"
    bad = argparse.Namespace(**{**vars(args), "port": ["grpc=fifty"]})
    with pytest.raises(UsageError, match="not a number"):
        registration(bad)
