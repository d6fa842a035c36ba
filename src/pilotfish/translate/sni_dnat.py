"""A Gateway server's `tls.mode: AUTO_PASSTHROUGH` (Istio's east-west
gateway): TLS passed through untouched to the cluster its SNI names, with
no VirtualService.

The client (typically a sidecar of another network, doing mutual TLS with
the destination's sidecar) says where it goes in Istio's SNI format,
`outbound_.PORT_._.HOST` or `outbound_.PORT_.SUBSET_.HOST`. The gateway's
chain for the server's hosts holds Envoy's `sni_cluster` filter (the SNI
becomes the cluster's name) before a tcp_proxy, and the gateway gets, as
Istio's `buildOutboundSniDnatClusters`, a cluster by that name for every
port (and DestinationRule subset) of the services its hosts match: the
service's own cluster and endpoints, without TLS of its own, since the bytes
are already the client's TLS.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.sni_cluster.v3 import sni_cluster_pb2

from pilotfish.model import Gateway, Proxy, ProxyType, Snapshot
from pilotfish.model.hosts import matches
from pilotfish.objects import Obj
from pilotfish.translate import mtls, names
from pilotfish.translate.gateway_tls import server_names
from pilotfish.translate.protos import pack

SNI_CLUSTER_FILTER = "envoy.filters.network.sni_cluster"
AUTO_PASSTHROUGH = "AUTO_PASSTHROUGH"


def auto_passthrough(server: Obj) -> bool:
    return (server.get("tls") or {}).get("mode") == AUTO_PASSTHROUGH


def translate_auto_passthrough_chains(
    servers: Sequence[tuple[Gateway, Obj]], tcp_proxy: listener_components_pb2.Filter
) -> list[listener_components_pb2.FilterChain]:
    """A chain per AUTO_PASSTHROUGH server, matched by its hosts as SNI
    (`*` matches any); `tcp_proxy` goes to names.BLACKHOLE_CLUSTER, which the
    sni_cluster filter replaces."""
    chains = []
    for gateway, server in servers:
        if not auto_passthrough(server):
            continue
        sni = listener_components_pb2.Filter(
            name=SNI_CLUSTER_FILTER, typed_config=pack(sni_cluster_pb2.SniCluster())
        )
        chain = listener_components_pb2.FilterChain(filters=[sni, tcp_proxy])
        chain.filter_chain_match.server_names.extend(server_names(server, gateway.namespace))
        chain.filter_chain_match.transport_protocol = "tls"
        chains.append(chain)
    return chains


def translate_sni_dnat_clusters(
    snapshot: Snapshot, proxy: Proxy, outbound: Sequence[Cluster]
) -> list[Cluster]:
    """A gateway's clusters named by SNI: a copy of each `outbound` cluster
    whose host an AUTO_PASSTHROUGH server's hosts match, without TLS."""
    if proxy.type is not ProxyType.ROUTER:
        return []
    hosts = [
        host
        for gateway in snapshot.gateways_for(proxy)
        for server in gateway.servers
        if auto_passthrough(server)
        for host in server_names(server, gateway.namespace) or ["*"]
    ]
    out = []
    for cluster in outbound:
        parsed = names.parse_cluster(cluster.name)
        if parsed is None or not any(matches(h, parsed.host) for h in hosts):
            continue
        dnat = Cluster()
        dnat.CopyFrom(cluster)
        dnat.name = mtls.sni(parsed.port, parsed.subset, parsed.host)
        dnat.ClearField("transport_socket")
        dnat.ClearField("transport_socket_matches")
        out.append(dnat)
    return out
