"""The xDS resource types the ADS server serves, and how users name them."""

from __future__ import annotations

PREFIX = "type.googleapis.com/"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"

# Envoy's "make before break": clusters and their endpoints before the
# listeners and routes that point at them.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
# For LDS and CDS an empty list of names asks for everything (wildcard);
# for RDS and EDS it asks for nothing.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}
BY_COMMAND_NAME = {
    "listeners": LISTENER,
    "routes": ROUTE,
    "clusters": CLUSTER,
    "endpoints": ENDPOINT,
}


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rpartition(".")[2])
