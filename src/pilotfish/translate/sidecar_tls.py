"""A sidecar's outbound connections to a TLS or HTTPS port (the application
originates TLS itself), as Istio's outbound TLS listeners
(`buildSidecarOutboundTLSFilterChainOpts`): the listener reads the SNI with
tls_inspector, never terminating TLS, and has one filter chain per
VirtualService `tls` route match that applies (`sniHosts`, `port`,
`sourceLabels`, `sourceNamespace`, `destinationSubnets`; gateways omitted or
`mesh`) to the route's weighted clusters, then a chain without names for the
rest: the port's `tcp` routes, else the service's own cluster, so that a
name no route claims still reaches the service, as Istio's TCP chain after
its TLS ones. The backend's own certificate reaches the client.

`destinationSubnets`: the destination of such a connection is the service,
so a match is taken when one of the service's addresses (a Service's
clusterIP, a ServiceEntry's addresses) lies in a subnet, as Istio matches the
original destination address, the service's VIP; a service without
addresses never takes it.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.listener.v3.listener_pb2 import Listener

from pilotfish.model import Proxy, Service, Snapshot
from pilotfish.model.types import Protocol
from pilotfish.translate.connect import MESH, tcp_service_clusters
from pilotfish.translate.http_route import RouteContext
from pilotfish.translate.protos import socket_address
from pilotfish.translate.tcp import add_tls_inspector, sni_chains, translate_tcp_filter

TLS_PROTOCOLS = frozenset({Protocol.TLS, Protocol.HTTPS})  # Istio's Protocol.IsTLS


def sidecar_tls_chains(
    snapshot: Snapshot, proxy: Proxy, service: Service, port: int
) -> list[listener_components_pb2.FilterChain]:
    """The SNI chains of the service's mesh-bound `tls` routes (none when it has none)."""
    vs = snapshot.virtual_service_for(proxy, service.hostname)
    if vs is None:
        return []
    ctx = RouteContext(snapshot, proxy, port, MESH)
    return sni_chains(((ctx, route) for route in vs.tls), service.addresses)


def translate_sidecar_tls_listener(
    snapshot: Snapshot, proxy: Proxy, service: Service, port: int, at: tuple[str, str, int]
) -> Listener:
    """`at`: the listener's name, host and port (a declared upstream's)."""
    name, host, local = at
    chains = sidecar_tls_chains(snapshot, proxy, service, port)
    rest = translate_tcp_filter(name, tcp_service_clusters(snapshot, proxy, service, port))
    listener = Listener(
        name=name,
        address=socket_address(host, local),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[*chains, listener_components_pb2.FilterChain(filters=[rest])],
    )
    if chains:
        add_tls_inspector(listener)
    return listener
