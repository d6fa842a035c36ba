"""CONNECT through a sidecar's outbound listener, as Envoy terminates it.

The outbound HttpConnectionManager allows the CONNECT upgrade; the
`http_proxy` table gets, for every port of every visible service (TCP ports
too: a tunnel carries any protocol), a `connect_matcher` route whose
`upgrade_configs` hold `connect_config`, so the sidecar ends the CONNECT and
opens a TCP connection to the service's cluster (mutual TLS, circuit
breakers and outlier detection as any connection to it). A TCP port's
VirtualService `tcp` routes weigh its clusters as they would on a gateway.

A target that is no service's falls to the `*` virtual host, which follows
the outbound traffic policy (the proxy's Sidecar, else the mesh config's,
else ALLOW_ANY as Istio): ALLOW_ANY tunnels to `PassthroughCluster`, of type
ORIGINAL_DST, whose destination is the CONNECT target itself; REGISTRY_ONLY
to `BlackHoleCluster`, which has no endpoints (503, flag UH). Istio's names.
Requests that are not CONNECT find no route there and are answered 404, as
before.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.wrappers_pb2 import UInt32Value

from pilotfish.model import Proxy, Service, Snapshot
from pilotfish.model.hosts import MESH_GATEWAY
from pilotfish.translate import names
from pilotfish.translate.http_route import RouteContext
from pilotfish.translate.protos import duration

ALLOW_ANY, REGISTRY_ONLY = "ALLOW_ANY", "REGISTRY_ONLY"
CONNECT_ROUTE = "connect"
MESH = frozenset({MESH_GATEWAY})
PASSTHROUGH_CONNECT_TIMEOUT = "10s"  # Istio's mesh connectTimeout default


def allow_connect(manager: hcm_pb2.HttpConnectionManager) -> None:
    manager.upgrade_configs.append(
        hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="CONNECT")
    )


def outbound_mode(snapshot: Snapshot, proxy: Proxy) -> str:
    """Istio's precedence: the proxy's Sidecar, then the mesh config."""
    sidecar = snapshot.sidecar_for(proxy)
    if sidecar is not None and sidecar.outbound_mode:
        return sidecar.outbound_mode
    policy = snapshot.mesh_config.get("outboundTrafficPolicy")
    mode = policy.get("mode") if isinstance(policy, dict) else None
    return str(mode or ALLOW_ANY)


def connect_route(clusters: Sequence[tuple[str, int]]) -> rc.Route:
    """A route taking CONNECT requests and ending them here, onto `clusters` by weight."""
    action = rc.RouteAction(timeout=duration(0))
    action.upgrade_configs.add(upgrade_type="CONNECT").connect_config.SetInParent()
    if len(clusters) == 1:
        action.cluster = clusters[0][0]
    else:
        for name, weight in clusters:
            action.weighted_clusters.clusters.add(name=name, weight=UInt32Value(value=weight))
    match = rc.RouteMatch()
    match.connect_matcher.SetInParent()
    return rc.Route(name=CONNECT_ROUTE, match=match, route=action)


def service_connect_route(
    snapshot: Snapshot, proxy: Proxy, service: Service, port: int, tcp: bool
) -> rc.Route:
    """To the port's cluster; for a TCP port, where its VirtualService's `tcp` routes say."""
    if tcp:
        return connect_route(tcp_service_clusters(snapshot, proxy, service, port))
    return connect_route([(names.outbound_cluster(port, "", service.hostname), 1)])


def tcp_service_clusters(
    snapshot: Snapshot, proxy: Proxy, service: Service, port: int
) -> list[tuple[str, int]]:
    """A sidecar's connections to a TCP port: its VirtualService's first `tcp`
    route that applies, weights and all, else the port's cluster. Their
    destination is the service: `destinationSubnets` meet its addresses."""
    # tcp.py reads routes.py, which builds its table with this module: imported when called
    from pilotfish.translate.tcp import tcp_route_clusters

    clusters: list[tuple[str, int]] = []
    vs = snapshot.virtual_service_for(proxy, service.hostname)
    if vs is not None:
        ctx = RouteContext(snapshot, proxy, port, MESH)
        clusters = tcp_route_clusters(ctx, vs.tcp, service.addresses)
    return clusters or [(names.outbound_cluster(port, "", service.hostname), 1)]


def catch_all_vhost(snapshot: Snapshot, proxy: Proxy) -> rc.VirtualHost:
    """Istio's `allow_any` or `block_all` virtual host, for CONNECT only."""
    if outbound_mode(snapshot, proxy) == REGISTRY_ONLY:
        return rc.VirtualHost(
            name="block_all", domains=["*"], routes=[connect_route([(names.BLACKHOLE_CLUSTER, 1)])]
        )
    return rc.VirtualHost(
        name="allow_any", domains=["*"], routes=[connect_route([(names.PASSTHROUGH_CLUSTER, 1)])]
    )


def translate_egress_clusters() -> list[Cluster]:
    """Where CONNECT to no service of the mesh goes (see the module's doc)."""
    passthrough = Cluster(
        name=names.PASSTHROUGH_CLUSTER,
        type=Cluster.ORIGINAL_DST,
        lb_policy=Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration(PASSTHROUGH_CONNECT_TIMEOUT),
    )
    blackhole = Cluster(
        name=names.BLACKHOLE_CLUSTER,
        type=Cluster.STATIC,
        connect_timeout=duration(PASSTHROUGH_CONNECT_TIMEOUT),
    )
    for cluster in (passthrough, blackhole):  # what Istio's metrics call the destination
        entry = {"host": cluster.name, "name": cluster.name}
        cluster.metadata.filter_metadata["istio"].update({"services": [entry]})
    return [passthrough, blackhole]
