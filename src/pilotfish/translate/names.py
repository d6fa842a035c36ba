"""Resource names, as Istio spells them, so that tools and habits carry over."""

from __future__ import annotations

from typing import NamedTuple

OUTBOUND = "outbound"
INBOUND = "inbound"
HTTP_PROXY_ROUTE = "http_proxy"  # the sidecar's outbound route table, all services and ports
DEFAULT_ROUTE = "default"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
PASSTHROUGH_CLUSTER = "PassthroughCluster"  # to the address the client asked for
BLACKHOLE_CLUSTER = "BlackHoleCluster"  # nowhere: the connection is closed


class ClusterName(NamedTuple):
    direction: str
    port: int
    subset: str
    host: str


def outbound_cluster(port: int, subset: str, host: str) -> str:
    """`outbound|9080|v1|reviews.default.svc.cluster.local`."""
    return f"{OUTBOUND}|{port}|{subset}|{host}"


def inbound_cluster(port: int) -> str:
    """`inbound|9080||`: the application behind this sidecar's port 9080."""
    return f"{INBOUND}|{port}||"


def parse_cluster(name: str) -> ClusterName | None:
    parts = name.split("|")
    if len(parts) != 4 or parts[0] not in (OUTBOUND, INBOUND) or not parts[1].isdigit():
        return None
    return ClusterName(parts[0], int(parts[1]), parts[2], parts[3])


def gateway_route(port: int) -> str:
    """`http.8080`: the route table of a gateway's plain-HTTP servers on a port."""
    return f"http.{port}"


def grpc_listener(host: str, port: int) -> str:
    """`reviews.default.svc.cluster.local:9080`, what `xds:///` targets name."""
    return f"{host}:{port}"


def vhost_name(host: str, port: int) -> str:
    return f"{host}:{port}"
