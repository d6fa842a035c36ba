"""RouteConfigurations (RDS), one per name a listener refers to:

- `http_proxy`: a sidecar's outbound table, every visible service and HTTP port
  (Istio's HTTP-proxy route: all ports in one table, so domains carry ports);
- `http.PORT`: a gateway's HTTP servers on PORT (plain, or HTTPS whose TLS
  it terminates), with the VirtualServices bound to them; the hosts of a
  server with `httpsRedirect` get Envoy's `require_tls: ALL` (a 301 to https);
- `outbound|PORT||HOST`: what a proxyless gRPC client asks for after its
  `HOST:PORT` listener.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from pilotfish.model import Gateway, Proxy, ProxyType, Service, Snapshot
from pilotfish.model.hosts import (
    DOMAIN_SUFFIX,
    MESH_GATEWAY,
    covers,
    matches,
    more_specific,
    split_namespaced_host,
)
from pilotfish.translate import names
from pilotfish.translate.connect import catch_all_vhost, service_connect_route
from pilotfish.translate.gateway_tls import (
    https_redirect,
    requires_client_certificate,
    terminates_tls,
)
from pilotfish.translate.http_route import (
    RouteContext,
    is_catch_all,
    translate_virtual_service,
)
from pilotfish.translate.protos import duration
from pilotfish.translate.route_policies import translate_hash_policy, translate_retry_policy
from pilotfish.translate.traffic_policy import consistent_hash

MAX_DIRECT_RESPONSE_BODY = 1024 * 1024  # Istio's DefaultMaxDirectResponseBodySizeBytes
HTTP_SERVER_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")
MESH = frozenset({MESH_GATEWAY})


def translate_routes(
    snapshot: Snapshot, proxy: Proxy, route_names: Iterable[str] | None = None
) -> list[route_pb2.RouteConfiguration]:
    """The route configurations asked for (all of this proxy's when None), sorted
    by name; names this proxy has no table for are left out."""
    if route_names is None:
        route_names = route_names_for(snapshot, proxy)
    wanted = sorted(set(route_names))
    out = [translate_route_config(snapshot, proxy, name) for name in wanted]
    return [rc_ for rc_ in out if rc_ is not None]


def route_names_for(snapshot: Snapshot, proxy: Proxy) -> list[str]:
    if proxy.type is ProxyType.ROUTER:
        return [names.gateway_route(p) for p in gateway_http_ports(snapshot, proxy)]
    if proxy.type is ProxyType.GRPC:
        return [
            names.outbound_cluster(p.port, "", s.hostname)
            for s in snapshot.visible_services(proxy)
            for p in s.ports
            if p.protocol.is_http_or_sniffed
        ]
    return [names.HTTP_PROXY_ROUTE]


def translate_route_config(
    snapshot: Snapshot, proxy: Proxy, name: str
) -> route_pb2.RouteConfiguration | None:
    if proxy.type is ProxyType.SIDECAR and name == names.HTTP_PROXY_ROUTE:
        return translate_sidecar_routes(snapshot, proxy)
    if proxy.type is ProxyType.ROUTER and name.startswith("http.") and name[5:].isdigit():
        return translate_gateway_routes(snapshot, proxy, int(name[5:]))
    parsed = names.parse_cluster(name)
    if proxy.type is ProxyType.GRPC and parsed and parsed.direction == names.OUTBOUND:
        return translate_grpc_routes(snapshot, proxy, parsed.host, parsed.port)
    return None


# -- sidecar -------------------------------------------------------------------


def translate_sidecar_routes(snapshot: Snapshot, proxy: Proxy) -> route_pb2.RouteConfiguration:
    out = route_pb2.RouteConfiguration(
        name=names.HTTP_PROXY_ROUTE,
        validate_clusters=BoolValue(value=False),
        max_direct_response_body_size_bytes=UInt32Value(value=MAX_DIRECT_RESPONSE_BODY),
    )
    taken: set[str] = set()
    for service in snapshot.visible_services(proxy):
        ports = sorted(p.port for p in service.ports if p.protocol.is_http_or_sniffed)
        for port in ports:
            portless = port == (80 if 80 in ports else ports[0])
            domains = [
                d
                for d in service_domains(service, port, proxy.namespace)
                if (portless or ":" in d) and d not in taken
            ]
            taken.update(domains)
            routes = service_routes(snapshot, proxy, service, port)
            if domains and routes:
                routes.append(service_connect_route(snapshot, proxy, service, port, False))
                out.virtual_hosts.append(_vhost(service.hostname, port, domains, routes))
    _add_connect_vhosts(snapshot, proxy, out, taken)
    return out


def _add_connect_vhosts(
    snapshot: Snapshot, proxy: Proxy, table: route_pb2.RouteConfiguration, taken: set[str]
) -> None:
    """CONNECT to a TCP port (only `host:port` names it), and to anything else
    (translate/connect.py)."""
    for service in snapshot.visible_services(proxy):
        for port in sorted(p.port for p in service.ports if not p.protocol.is_http_or_sniffed):
            if any(p.port == port and p.protocol == "UDP" for p in service.ports):
                continue
            domains = [
                d for d in service_domains(service, port, proxy.namespace)
                if ":" in d and d not in taken
            ]  # fmt: skip
            taken.update(domains)
            if domains:
                route = service_connect_route(snapshot, proxy, service, port, True)
                table.virtual_hosts.append(_vhost(service.hostname, port, domains, [route]))
    table.virtual_hosts.append(catch_all_vhost(snapshot, proxy))


def _vhost(host: str, port: int, domains: list[str], routes: list[rc.Route]) -> rc.VirtualHost:
    return rc.VirtualHost(
        name=names.vhost_name(host, port),
        domains=domains,
        routes=routes,
        include_request_attempt_count=True,
    )


def service_domains(service: Service, port: int, proxy_namespace: str) -> list[str]:
    """How a client may name the service in Host: the FQDN, and for Kubernetes
    services `name.ns.svc`, `name.ns`, and `name` from its own namespace, each
    with and without the port (Istio's generateVirtualHostDomains); the
    service's addresses too."""
    host = service.hostname
    bases = [host]
    kube_suffix = f".{service.namespace}.svc.{DOMAIN_SUFFIX}"
    if host.endswith(kube_suffix):
        short = host[: -len(kube_suffix)]
        if service.namespace == proxy_namespace:
            bases.append(short)
        bases += [f"{short}.{service.namespace}.svc", f"{short}.{service.namespace}"]
    bases += [a for a in service.addresses if a and a != "0.0.0.0"]
    return [d for b in bases for d in (b, f"{b}:{port}")]


def service_routes(snapshot: Snapshot, proxy: Proxy, service: Service, port: int) -> list[rc.Route]:
    """The VirtualService's routes for this port, or Istio's default route."""
    vs = snapshot.virtual_service_for(proxy, service.hostname)
    if vs is not None:
        routes = translate_virtual_service(RouteContext(snapshot, proxy, port, MESH), vs)
        if routes:
            return routes
    return [default_route(snapshot, proxy, service, port)]


def default_route(snapshot: Snapshot, proxy: Proxy, service: Service, port: int) -> rc.Route:
    """A service without a VirtualService: all traffic to its port's cluster,
    with the mesh's default retries, no timeout, and the DestinationRule's
    consistent hash if it has one."""
    action = rc.RouteAction(
        cluster=names.outbound_cluster(port, "", service.hostname), timeout=duration(0)
    )
    if proxy.type is ProxyType.GRPC:
        action.max_stream_duration.max_stream_duration.CopyFrom(duration(0))
    else:
        action.max_grpc_timeout.CopyFrom(duration(0))
    rule = snapshot.destination_rule(proxy, service.hostname)
    hash_policy = translate_hash_policy(consistent_hash(rule, "", port))
    if hash_policy is not None:
        action.hash_policy.append(hash_policy)
    retry = translate_retry_policy(None, hash_policy is not None)
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    return rc.Route(
        name=names.DEFAULT_ROUTE,
        match=rc.RouteMatch(prefix="/", case_sensitive=BoolValue(value=True)),
        route=action,
    )


# -- proxyless gRPC --------------------------------------------------------------


def translate_grpc_routes(
    snapshot: Snapshot, proxy: Proxy, host: str, port: int
) -> route_pb2.RouteConfiguration | None:
    """One virtual host, whose domains include `HOST:PORT` as gRPC's target names it."""
    service = snapshot.service_for(proxy, host)
    if service is None or service.port(port) is None:
        return None
    domains = service_domains(service, port, proxy.namespace)
    routes = service_routes(snapshot, proxy, service, port)
    return route_pb2.RouteConfiguration(
        name=names.outbound_cluster(port, "", host),
        virtual_hosts=[_vhost(host, port, domains, routes)],
    )


# -- gateways ----------------------------------------------------------------------


def gateway_http_ports(snapshot: Snapshot, proxy: Proxy) -> list[int]:
    return sorted(gateway_http_servers(snapshot, proxy))


def gateway_http_servers(
    snapshot: Snapshot, proxy: Proxy
) -> dict[int, list[tuple[Gateway, dict[str, Any]]]]:
    """The HTTP servers of the proxy's Gateways by port, oldest Gateway first."""
    out: dict[int, list[tuple[Gateway, dict[str, Any]]]] = {}
    for gateway, server in _http_servers(snapshot.gateways_for(proxy)):
        out.setdefault(int(server["port"]["number"]), []).append((gateway, server))
    return out


def _http_servers(gateways: Iterable[Gateway]) -> list[tuple[Gateway, dict[str, Any]]]:
    """Servers that serve HTTP: plain ones (an httpsRedirect is their only
    `tls`), and HTTPS ones whose TLS the gateway terminates (gateway_tls.py).
    All of a port's share its route table `http.PORT`; the Host picks the
    virtual host."""
    return [
        (g, s)
        for g in gateways
        for s in g.servers
        if terminates_tls(s)
        or (
            str((s.get("port") or {}).get("protocol", "")).upper() in HTTP_SERVER_PROTOCOLS
            and set(s.get("tls") or {}) <= {"httpsRedirect"}
        )
    ]


def translate_gateway_routes(
    snapshot: Snapshot, proxy: Proxy, port: int
) -> route_pb2.RouteConfiguration | None:
    servers = [
        (g, s)
        for g, s in _http_servers(snapshot.gateways_for(proxy))
        if int(s["port"]["number"]) == port
    ]
    if not servers:
        return None
    by_host: dict[str, list[rc.Route]] = {}
    redirected: set[str] = set()
    for gateway, server in servers:
        for vs in snapshot.gateway_virtual_services(proxy, gateway.key):
            hosts = server_vs_hosts(gateway, server, vs.namespace, vs.hosts)
            if not hosts:
                continue
            ctx = RouteContext(snapshot, proxy, port, frozenset({gateway.key}))
            routes = translate_virtual_service(ctx, vs)
            for host in hosts:
                by_host.setdefault(host, []).extend(routes)
        if https_redirect(server) and not terminates_tls(server):
            # Istio redirects a server's hosts whether or not a VirtualService binds them.
            hosts = [split_namespaced_host(str(h), gateway.namespace)[1] for h in server["hosts"]]
            redirected.update(hosts)
            for host in hosts:
                by_host.setdefault(host, [])
    out = route_pb2.RouteConfiguration(
        name=names.gateway_route(port),
        validate_clusters=BoolValue(value=False),
        ignore_port_in_host_matching=True,
        max_direct_response_body_size_bytes=UInt32Value(value=MAX_DIRECT_RESPONSE_BODY),
    )
    tls_servers = [(g.namespace, s) for g, s in servers]
    for host in sorted(by_host):
        ordered = sorted(by_host[host], key=is_catch_all)  # catch-alls last, order kept
        vhost = rc.VirtualHost(name=names.vhost_name(host, port), domains=[host], routes=ordered)
        _secure_vhost(vhost, host, redirected, tls_servers)
        out.virtual_hosts.append(vhost)
    if not out.virtual_hosts:
        # Nothing bound: 404 every request rather than leave the port unrouted.
        out.virtual_hosts.append(
            rc.VirtualHost(name=names.vhost_name("blackhole", port), domains=["*"])
        )
    return out


def _secure_vhost(
    vhost: rc.VirtualHost,
    host: str,
    redirected: set[str],
    servers: list[tuple[str, dict[str, Any]]],
) -> None:
    """httpsRedirect's require_tls, and a verified client certificate on the
    routes of a host a MUTUAL server serves (see gateway_tls.py)."""
    if any(covers(pattern, host) for pattern in redirected):
        vhost.require_tls = rc.VirtualHost.ALL
    if requires_client_certificate(servers, host):
        for route in vhost.routes:
            route.match.tls_context.presented.value = True
            route.match.tls_context.validated.value = True


def server_vs_hosts(
    gateway: Gateway, server: dict[str, Any], vs_namespace: str, vs_hosts: tuple[str, ...]
) -> list[str]:
    """Where a server's hosts (`ns/host`) and a VirtualService's meet, the
    narrower of each matching pair."""
    found = []
    for entry in server.get("hosts") or []:
        ns, pattern = split_namespaced_host(str(entry), gateway.namespace)
        if ns not in ("*", vs_namespace):
            continue
        found += [more_specific(pattern, h) for h in vs_hosts if matches(pattern, h)]
    return sorted(set(found))
