"""TCP listeners (LDS): Envoy's `tcp_proxy` network filter where a port's
protocol is not HTTP.

- sidecar: per TCP port of its own instance (a port named `tcp`, `redis`,
  `mysql`, `mongo`, `tls`, `https`..., or with such an `appProtocol`), an
  inbound listener proxying to `inbound|PORT||`, with the port's mTLS chains
  (listeners.py), after the AuthorizationPolicy's network RBAC filters. A
  port under a CUSTOM policy gets no listener: the proxy does not run the
  network ext_authz filter, so the port stays closed rather than open.
- gateway: per Gateway server of an L4 protocol (TCP, MONGO, REDIS, MYSQL)
  without TLS, a listener whose tcp_proxy goes to the first VirtualService
  `tcp` route that applies (port, gateways, sourceLabels, sourceNamespace),
  its destinations weighted as Istio's (a TCP canary moves connections).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from pilotfish.model import Gateway, Proxy, Snapshot
from pilotfish.objects import Obj
from pilotfish.translate import names
from pilotfish.translate.authz import TCP_RBAC, translate_proxy_authz_tcp
from pilotfish.translate.http_route import RouteContext, destination_cluster
from pilotfish.translate.protos import pack, socket_address
from pilotfish.translate.route_match import applies, in_subnets
from pilotfish.translate.routes import server_vs_hosts
from pilotfish.translate.sni_dnat import auto_passthrough, translate_auto_passthrough_chains

TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
GATEWAY_TCP_PROTOCOLS = ("TCP", "MONGO", "REDIS", "MYSQL")
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"


def translate_tcp_filter(
    stat_prefix: str, clusters: Sequence[tuple[str, int]]
) -> listener_components_pb2.Filter:
    """One cluster by name, or several by weight."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if len(clusters) == 1:
        proxy.cluster = clusters[0][0]
    else:
        for name, weight in clusters:
            proxy.weighted_clusters.clusters.append(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=name, weight=weight)
            )
    return listener_components_pb2.Filter(name=TCP_PROXY_FILTER, typed_config=pack(proxy))


def tcp_listener(
    name: str, host: str, port: int, filters: list[listener_components_pb2.Filter], direction: int
) -> Listener:
    """`filters`: the authorization filters, then the tcp_proxy."""
    return Listener(
        name=name,
        address=socket_address(host, port),
        traffic_direction=direction,
        filter_chains=[listener_components_pb2.FilterChain(filters=filters)],
    )


def enforceable(authz: list[listener_components_pb2.Filter]) -> bool:
    """The proxy runs network RBAC, not the network ext_authz of CUSTOM
    policies: a TCP port under one gets no listener (closed, never open)."""
    return all(f.name == TCP_RBAC for f in authz)


def translate_inbound_tcp_listener(
    address: str, port: int, authz: list[listener_components_pb2.Filter]
) -> Listener:
    cluster = names.inbound_cluster(port)
    tcp = translate_tcp_filter(cluster, [(cluster, 1)])
    name = f"inbound_{address}_{port}"
    return tcp_listener(name, address, port, [*authz, tcp], base_pb2.INBOUND)


def translate_gateway_tcp_listeners(
    snapshot: Snapshot, proxy: Proxy, http_ports: Sequence[int]
) -> list[Listener]:
    """Ports already serving HTTP keep it: one protocol per gateway port, as Istio's."""
    host = proxy.metadata.get("BIND_ADDRESS", "0.0.0.0")
    authz = translate_proxy_authz_tcp(snapshot, proxy)
    if not enforceable(authz):
        return []
    out = []
    for port, servers in sorted(_tcp_servers(snapshot.gateways_for(proxy)).items()):
        if port in http_ports:
            continue
        name = f"{host}_{port}"
        if any(_passthrough(server) or auto_passthrough(server) for _, server in servers):
            chains = _sni_chains(snapshot, proxy, port, servers)
            nowhere = names.BLACKHOLE_CLUSTER
            blackhole = translate_tcp_filter(nowhere, [(nowhere, 1)])
            chains += translate_auto_passthrough_chains(servers, blackhole)
            if chains:
                out.append(_passthrough_listener(name, host, port, chains, authz))
            continue
        clusters = _gateway_tcp_clusters(snapshot, proxy, port, servers)
        if clusters:
            tcp = translate_tcp_filter(name, clusters)
            out.append(tcp_listener(name, host, port, [*authz, tcp], base_pb2.OUTBOUND))
    return out


def _passthrough_listener(
    name: str,
    host: str,
    port: int,
    chains: list[listener_components_pb2.FilterChain],
    authz: list[listener_components_pb2.Filter],
) -> Listener:
    for chain in chains:
        own = list(chain.filters)
        del chain.filters[:]
        chain.filters.extend([*authz, *own])
    listener = Listener(
        name=name,
        address=socket_address(host, port),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=chains,
    )
    add_tls_inspector(listener)
    return listener


def add_tls_inspector(listener: Listener) -> None:
    """What tells TLS from plaintext (and reads the SNI) before a chain is chosen."""
    listener.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
        )
    )


def _tcp_servers(gateways: Sequence[Gateway]) -> dict[int, list[tuple[Gateway, Obj]]]:
    """L4 servers without TLS, and TLS servers in PASSTHROUGH or
    AUTO_PASSTHROUGH mode (sni_dnat.py), by port."""
    found: dict[int, list[tuple[Gateway, Obj]]] = {}
    for gateway in gateways:
        for server in gateway.servers:
            port = server.get("port") or {}
            plain = str(port.get("protocol", "")).upper() in GATEWAY_TCP_PROTOCOLS
            passed = _passthrough(server) or auto_passthrough(server)
            if (plain and not server.get("tls")) or passed:
                found.setdefault(int(port["number"]), []).append((gateway, server))
    return found


def _passthrough(server: Obj) -> bool:
    return (server.get("tls") or {}).get("mode") == "PASSTHROUGH"


def _bound_routes(
    snapshot: Snapshot, proxy: Proxy, port: int, servers: list[tuple[Gateway, Obj]], kind: str
) -> Iterator[tuple[RouteContext, Obj]]:
    """The `tcp` or `tls` routes of the VirtualServices bound to these
    servers' gateways whose hosts meet the server's, oldest first."""
    for gateway, server in servers:
        ctx = RouteContext(snapshot, proxy, port, frozenset({gateway.key}))
        for vs in snapshot.gateway_virtual_services(proxy, gateway.key):
            if server_vs_hosts(gateway, server, vs.namespace, vs.hosts):
                for route in vs.tcp if kind == "tcp" else vs.tls:
                    yield ctx, route


def _sni_chains(
    snapshot: Snapshot, proxy: Proxy, port: int, servers: list[tuple[Gateway, Obj]]
) -> list[listener_components_pb2.FilterChain]:
    """Istio's PASSTHROUGH: a chain per `tls` route match, chosen by its sniHosts."""
    return sni_chains(_bound_routes(snapshot, proxy, port, servers, "tls"), None)


def sni_chains(
    routes: Iterable[tuple[RouteContext, Obj]], destination: Sequence[str] | None
) -> list[listener_components_pb2.FilterChain]:
    """A chain per `tls` route match that applies, chosen by its sniHosts,
    proxying to the route's destinations; first come, first kept.
    `destination`: the addresses connections are for (None: unknown)."""
    chains: list[listener_components_pb2.FilterChain] = []
    taken: set[str] = set()
    for ctx, route in routes:
        for match in route.get("match") or []:
            names = [str(h).lower() for h in match.get("sniHosts") or []]
            names = [n for n in names if n not in taken]
            if not names or not _applies(ctx, match, destination):
                continue
            taken.update(names)
            clusters = tcp_destinations(ctx, route.get("route") or [])
            chain = listener_components_pb2.FilterChain(
                filters=[translate_tcp_filter(names[0], clusters)]
            )
            chain.filter_chain_match.server_names.extend(names)
            chain.filter_chain_match.transport_protocol = "tls"
            chains.append(chain)
    return chains


def _gateway_tcp_clusters(
    snapshot: Snapshot, proxy: Proxy, port: int, servers: list[tuple[Gateway, Obj]]
) -> list[tuple[str, int]]:
    """The destinations of the first `tcp` route that applies."""
    for ctx, route in _bound_routes(snapshot, proxy, port, servers, "tcp"):
        found = tcp_route_clusters(ctx, [route])
        if found:
            return found
    return []


def tcp_route_clusters(
    ctx: RouteContext, routes: Iterable[Obj], destination: Sequence[str] | None = None
) -> list[tuple[str, int]]:
    """The destinations of the first of `routes` (VirtualService `tcp` routes)
    that applies; `destination` as for sni_chains."""
    for route in routes:
        if any(_applies(ctx, m, destination) for m in route.get("match") or [None]):
            return tcp_destinations(ctx, route.get("route") or [])
    return []


def _applies(ctx: RouteContext, match: Obj | None, destination: Sequence[str] | None) -> bool:
    """A destinationSubnets match is taken only where the destination is
    known; taking it unchecked would widen the route (PF0001 says where)."""
    subnets = (match or {}).get("destinationSubnets")
    if subnets and (destination is None or not in_subnets(destination, subnets)):
        return False
    proxy = ctx.proxy
    return applies(match, ctx.port, proxy.labels, proxy.namespace, ctx.gateways)


def tcp_destinations(ctx: RouteContext, destinations: list[Obj]) -> list[tuple[str, int]]:
    """Clusters and weights; zero weights are dropped when there are others, as Istio does."""
    if len(destinations) == 1:
        return [(destination_cluster(ctx, destinations[0]["destination"]), 1)]
    return [
        (destination_cluster(ctx, d["destination"]), int(d.get("weight") or 0))
        for d in destinations
        if int(d.get("weight") or 0) > 0
    ]
