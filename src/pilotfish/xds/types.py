"""The xDS resource types the ADS server serves, and how users name them."""

from __future__ import annotations

PREFIX = "type.googleapis.com/"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# Envoy's "make before break": clusters and their endpoints before the
# listeners and routes that point at them.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
# For LDS and CDS an empty list of names asks for everything (wildcard);
# for RDS and EDS it asks for nothing.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}
ALL_TYPES = frozenset(PUSH_ORDER)
# The types a change of a kind can alter, from what translate/ reads (checked
# by tests/translate/test_affected_types.py): a VirtualService routes, and a
# gateway's TCP listeners (its `tcp` routes choose their clusters); a
# DestinationRule clusters, their endpoints (subsets) and routes (hashing);
# a Gateway a gateway's listeners and routes; a Secret only what SDS serves.
# Any other kind (Service, ServiceEntry, WorkloadEntry, Sidecar, a registered
# instance) may alter all.
AFFECTED_BY_KIND = {
    "VirtualService": frozenset({LISTENER, ROUTE}),
    "DestinationRule": frozenset({CLUSTER, ENDPOINT, ROUTE}),
    "Gateway": frozenset({LISTENER, ROUTE}),
    "Secret": frozenset({SECRET}),
}
# A sidecar's listeners read neither (its outbound listener routes by RDS;
# only gateways' TCP listeners and proxyless clients' read VirtualServices),
# so for sidecars these kinds alter routes only (tests/translate/test_affected_types.py).
SIDECAR_AFFECTED_BY_KIND = {
    **AFFECTED_BY_KIND,
    "VirtualService": frozenset({ROUTE}),
    "Gateway": frozenset({ROUTE}),
}
BY_COMMAND_NAME = {
    "listeners": LISTENER,
    "routes": ROUTE,
    "clusters": CLUSTER,
    "endpoints": ENDPOINT,
}


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rpartition(".")[2])


def affected_types(kinds: frozenset[str], *, sidecar: bool = False) -> frozenset[str]:
    """What a push after changes of `kinds` must regenerate (for a sidecar,
    when `sidecar`); no kinds: all."""
    if not kinds:
        return ALL_TYPES
    table = SIDECAR_AFFECTED_BY_KIND if sidecar else AFFECTED_BY_KIND
    out: frozenset[str] = frozenset()
    for kind in kinds:
        out |= table.get(kind, ALL_TYPES)
    return out
