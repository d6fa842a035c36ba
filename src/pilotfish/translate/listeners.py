"""Listeners (LDS).

- sidecar: one outbound HTTP listener (127.0.0.1:15001 unless the node's
  metadata says otherwise) routing by Host over RDS `http_proxy`; and per HTTP
  port of its own instance, an inbound listener on that port forwarding to
  `inbound|PORT||`, with its one-route table inline (it never changes with
  routing config, so it need not travel over RDS); its filter chains follow
  the port's PeerAuthentication mode (mtls.py).
- gateway: one listener per port of its Gateways' HTTP servers, RDS `http.PORT`;
  an HTTPS server adds a TLS filter chain matched by SNI (gateway_tls.py).
- proxyless gRPC: one api_listener per service port, named `HOST:PORT` as the
  client's `xds:///HOST:PORT` target names it; and for an xDS-enabled server,
  the server listeners it asks for by name (proxyless.py).

Every HTTP filter chain ends with the router; fault and CORS come before it,
so their per-route configs apply. Inbound (and gateway) chains start with the
AuthorizationPolicy filters (translate/authz.py): CUSTOM ext_authz, then the
AUDIT, DENY and ALLOW RBAC filters, as Istio orders them. Sidecar and
gateway managers carry the `tracing` and `access_log` Telemetry and the
mesh config give them (translate/telemetry.py); proxyless gRPC clients get none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.model import Gateway, Instance, Protocol, Proxy, ProxyType, Snapshot
from pilotfish.model.services import infer_protocol
from pilotfish.model.types import Labels
from pilotfish.objects import Obj
from pilotfish.translate import gateway_tls, mtls, names, sniff
from pilotfish.translate.authz import translate_proxy_authz_http, translate_proxy_authz_tcp
from pilotfish.translate.connect import allow_connect
from pilotfish.translate.jwt import applicable, translate_jwt_filter
from pilotfish.translate.protos import ads, duration, pack, socket_address
from pilotfish.translate.proxyless import translate_server_listeners
from pilotfish.translate.routes import gateway_http_ports, gateway_http_servers
from pilotfish.translate.tcp import (
    add_tls_inspector,
    enforceable,
    translate_gateway_tcp_listeners,
    translate_inbound_tcp_listener,
)
from pilotfish.translate.telemetry import (
    translate_access_logs,
    translate_stats_filter,
    translate_tracing,
)
from pilotfish.translate.upstreams import translate_upstream_listeners

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
OUTBOUND_ADDRESS = "127.0.0.1"
OUTBOUND_PORT = 15001


def translate_listeners(
    snapshot: Snapshot, proxy: Proxy, names: Iterable[str] = ()
) -> list[Listener]:
    """`names`: what the proxy asked for; a gRPC server's listeners exist only by name."""
    if proxy.type is ProxyType.GRPC:
        out = translate_grpc_listeners(snapshot, proxy)
        out += translate_server_listeners(snapshot, proxy, names)
    elif proxy.type is ProxyType.ROUTER:
        out = translate_gateway_listeners(snapshot, proxy)
    else:
        telemetry = (
            translate_tracing(snapshot, proxy, False),
            translate_access_logs(snapshot, proxy, False),
            translate_stats_filter(snapshot, proxy, False),
        )
        outbound = translate_outbound_listener(proxy, *telemetry)
        out = [outbound, *translate_inbound_listeners(snapshot, proxy)]
        taken = {listener.name for listener in out}  # an upstream cannot take their address
        out += [u for u in _upstream_listeners(snapshot, proxy, *telemetry) if u.name not in taken]
    return sorted(out, key=lambda listener: listener.name)


def http_filters(
    proxyless: bool = False, authz: list[hcm_pb2.HttpFilter] | None = None
) -> list[hcm_pb2.HttpFilter]:
    """gRPC clients know fault and router only; the router must come last;
    `authz` filters come first."""
    chain = list(authz or ())
    if not proxyless:
        chain.append(hcm_pb2.HttpFilter(name=CORS_FILTER, typed_config=pack(cors_pb2.Cors())))
    chain.append(hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault_pb2.HTTPFault())))
    chain.append(
        hcm_pb2.HttpFilter(name=names.ROUTER_FILTER, typed_config=pack(router_pb2.Router()))
    )
    return chain


def _rds_manager(
    stat_prefix: str, route_name: str, authz: list[hcm_pb2.HttpFilter] | None = None
) -> hcm_pb2.HttpConnectionManager:
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        rds=hcm_pb2.Rds(route_config_name=route_name, config_source=ads()),
        http_filters=http_filters(authz=authz),
    )


def _add_stats_filter(
    manager: hcm_pb2.HttpConnectionManager, stats: hcm_pb2.HttpFilter | None
) -> None:
    """Telemetry metric overrides, just before the router, where Istio puts them."""
    if stats is not None:
        manager.http_filters.insert(len(manager.http_filters) - 1, stats)


def _listener(
    name: str, host: str, port: int, manager: hcm_pb2.HttpConnectionManager, direction: int
) -> Listener:
    return Listener(
        name=name,
        address=socket_address(host, port),
        traffic_direction=direction,
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=names.HCM_FILTER, typed_config=pack(manager)
                    )
                ]
            )
        ],
    )


def translate_outbound_listener(
    proxy: Proxy,
    tracing: hcm_pb2.HttpConnectionManager.Tracing | None = None,
    logs: Sequence[AccessLog] = (),
    stats: hcm_pb2.HttpFilter | None = None,
) -> Listener:
    host = proxy.metadata.get("OUTBOUND_ADDRESS", OUTBOUND_ADDRESS)
    port = int(proxy.metadata.get("OUTBOUND_PORT", OUTBOUND_PORT))
    name = f"{host}_{port}"
    manager = _rds_manager(f"outbound_{name}", names.HTTP_PROXY_ROUTE)
    allow_connect(manager)  # translate/connect.py
    return _outbound_http(name, host, port, manager, tracing, logs, stats)


def _outbound_http(
    name: str,
    host: str,
    port: int,
    manager: hcm_pb2.HttpConnectionManager,
    tracing: hcm_pb2.HttpConnectionManager.Tracing | None,
    logs: Sequence[AccessLog],
    stats: hcm_pb2.HttpFilter | None,
) -> Listener:
    """An outbound HTTP listener with the telemetry the mesh gives the sidecar."""
    if tracing is not None:
        manager.tracing.CopyFrom(tracing)
    manager.access_log.extend(logs)
    _add_stats_filter(manager, stats)
    return _listener(name, host, port, manager, base_pb2.OUTBOUND)


def _upstream_listeners(
    snapshot: Snapshot,
    proxy: Proxy,
    tracing: hcm_pb2.HttpConnectionManager.Tracing | None,
    logs: Sequence[AccessLog],
    stats: hcm_pb2.HttpFilter | None,
) -> list[Listener]:
    """The Workload's declared upstreams (translate/upstreams.py)."""

    def http(name: str, host: str, port: int, table: route_pb2.RouteConfiguration) -> Listener:
        manager = hcm_pb2.HttpConnectionManager(
            stat_prefix=f"outbound_{name}", route_config=table, http_filters=http_filters()
        )
        return _outbound_http(name, host, port, manager, tracing, logs, stats)

    return translate_upstream_listeners(snapshot, proxy, http)


def translate_inbound_listeners(snapshot: Snapshot, proxy: Proxy) -> list[Listener]:
    """HTTP ports terminate HTTP; TCP ports get a tcp_proxy (tcp.py); a port of
    no declared protocol gets both, chosen by what its first bytes say (sniff.py)."""
    out: dict[str, Listener] = {}
    authz = translate_proxy_authz_http(snapshot, proxy)
    authz_tcp = translate_proxy_authz_tcp(snapshot, proxy)
    tracing = translate_tracing(snapshot, proxy, True)
    logs = translate_access_logs(snapshot, proxy, True)
    stats = translate_stats_filter(snapshot, proxy, True)
    for instance in snapshot.own_instances(proxy):
        for port_name, port in sorted(instance.ports.items()):
            protocol = _inbound_protocol(snapshot, instance, port_name, port)
            name = f"inbound_{instance.address}_{port}"
            if protocol.is_http_or_sniffed:
                manager = _inbound_manager(port, authz)
                if tracing is not None:
                    manager.tracing.CopyFrom(tracing)
                manager.access_log.extend(logs)
                _add_stats_filter(manager, stats)
                _add_jwt_filter(snapshot, instance.namespace, instance.labels, manager)
                listener = _listener(name, instance.address, port, manager, base_pb2.INBOUND)
            elif protocol is not Protocol.UDP and enforceable(authz_tcp):
                listener = translate_inbound_tcp_listener(instance.address, port, authz_tcp)
            else:
                continue
            mode = mtls.inbound_mode(snapshot, instance.namespace, instance.labels, port)
            alpn = mtls.SERVER_ALPN if protocol.is_http_or_sniffed else mtls.TCP_SERVER_ALPN
            out[name] = _inbound_chains(listener, mode, alpn)
            if protocol is Protocol.UNSUPPORTED and enforceable(authz_tcp):  # sniffed
                tcp = translate_inbound_tcp_listener(instance.address, port, authz_tcp)
                tcp = _inbound_chains(tcp, mode, mtls.TCP_SERVER_ALPN)
                timeout = sniff.detection_timeout(snapshot.mesh_config)
                out[name] = sniff.translate_sniffed_listener(out[name], tcp, timeout)
    return list(out.values())


def _add_jwt_filter(
    snapshot: Snapshot, namespace: str, labels: Labels, manager: hcm_pb2.HttpConnectionManager
) -> None:
    """Istio's inbound (and gateway) order puts jwt_authn first, before any authorization."""
    policies = applicable(snapshot.request_authentications, namespace, labels)
    jwt = translate_jwt_filter(policies, snapshot.jwks)
    if jwt is not None:
        manager.http_filters.insert(0, jwt)


def _inbound_chains(listener: Listener, mode: mtls.Mode, alpn: tuple[str, ...]) -> Listener:
    """Istio's inbound filter chains for the port's mode: a TLS chain (a
    verified client certificate required) unless DISABLE, a plaintext chain
    unless STRICT, told apart by the tls_inspector."""
    if mode is mtls.Mode.DISABLE:
        return listener
    plain = listener.filter_chains[0]
    secure = listener_components_pb2.FilterChain()
    secure.CopyFrom(plain)
    secure.filter_chain_match.transport_protocol = "tls"
    secure.filter_chain_match.application_protocols.extend(mtls.INBOUND_ALPN)
    secure.transport_socket.CopyFrom(mtls.transport_socket(mtls.downstream_tls(alpn)))
    plain.filter_chain_match.transport_protocol = "raw_buffer"
    del listener.filter_chains[:]
    listener.filter_chains.append(secure)
    if mode is mtls.Mode.PERMISSIVE:
        listener.filter_chains.append(plain)
    add_tls_inspector(listener)
    return listener


def _inbound_protocol(
    snapshot: Snapshot, instance: Instance, port_name: str, number: int
) -> Protocol:
    """The protocol a service selecting this instance declares for the port,
    else what the port's own name says. The services whose endpoints hold the
    instance decide (another service of the namespace may name a port alike);
    while it has none (not ready yet), any service of its namespace."""
    selecting = snapshot.services_at(instance.namespace, instance.address, number)
    # The namespace's services only when none selects it: listing them scanned
    # the mesh's services per proxy on every push (0.2 s of 2,000 proxies' LDS).
    for service in selecting or [s for s in snapshot.services if s.namespace == instance.namespace]:
        for port in service.ports:
            if port.target_port == port_name or (
                port.target_port is None and port.name == port_name
            ):
                return port.protocol
    return infer_protocol(port_name)


def _inbound_manager(port: int, authz: list[hcm_pb2.HttpFilter]) -> hcm_pb2.HttpConnectionManager:
    cluster = names.inbound_cluster(port)
    action = rc.RouteAction(cluster=cluster, timeout=duration(0))
    action.max_stream_duration.max_stream_duration.CopyFrom(duration(0))
    action.max_stream_duration.grpc_timeout_header_max.CopyFrom(duration(0))
    route = rc.Route(
        name=names.DEFAULT_ROUTE,
        match=rc.RouteMatch(prefix="/", case_sensitive=BoolValue(value=True)),
        route=action,
    )
    table = route_pb2.RouteConfiguration(
        name=cluster,
        validate_clusters=BoolValue(value=False),
        virtual_hosts=[rc.VirtualHost(name=f"inbound|http|{port}", domains=["*"], routes=[route])],
    )
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=cluster, route_config=table, http_filters=http_filters(authz=authz)
    )


def translate_gateway_listeners(snapshot: Snapshot, proxy: Proxy) -> list[Listener]:
    host = proxy.metadata.get("BIND_ADDRESS", "0.0.0.0")
    out = []
    authz = translate_proxy_authz_http(snapshot, proxy)
    tracing = translate_tracing(snapshot, proxy, False)
    logs = translate_access_logs(snapshot, proxy, False)
    stats = translate_stats_filter(snapshot, proxy, False)
    for port, servers in sorted(gateway_http_servers(snapshot, proxy).items()):
        name = f"{host}_{port}"
        manager = _rds_manager(name, names.gateway_route(port), authz)
        if tracing is not None:
            manager.tracing.CopyFrom(tracing)
        manager.access_log.extend(logs)
        _add_stats_filter(manager, stats)
        _add_jwt_filter(snapshot, proxy.namespace, proxy.labels, manager)
        # A gateway is the edge: the client's address is the peer's, not a header's.
        manager.use_remote_address.value = True
        listener = _listener(name, host, port, manager, base_pb2.OUTBOUND)
        out.append(_gateway_chains(listener, servers))
    return out + translate_gateway_tcp_listeners(
        snapshot, proxy, gateway_http_ports(snapshot, proxy)
    )


def _gateway_chains(listener: Listener, servers: list[tuple[Gateway, Obj]]) -> Listener:
    """A TLS chain per HTTPS server, chosen by SNI from its hosts (the first
    server claiming a set of names wins, as Istio keeps the oldest), and the
    plaintext chain if a plain server shares the port."""
    plain = listener.filter_chains[0]
    chains: dict[tuple[str, ...], listener_components_pb2.FilterChain] = {}
    for gateway, server in servers:
        if not gateway_tls.terminates_tls(server):
            continue
        sni = tuple(gateway_tls.server_names(server, gateway.namespace))
        if sni in chains:
            continue
        chain = chains[sni] = listener_components_pb2.FilterChain()
        chain.CopyFrom(plain)
        chain.filter_chain_match.transport_protocol = "tls"
        chain.filter_chain_match.server_names.extend(sni)
        chain.transport_socket.CopyFrom(
            mtls.transport_socket(gateway_tls.downstream_context(server))
        )
    if not chains:
        return listener
    del listener.filter_chains[:]
    listener.filter_chains.extend(chains[k] for k in sorted(chains))
    if any(not gateway_tls.terminates_tls(s) for _, s in servers):
        listener.filter_chains.append(plain)
    add_tls_inspector(listener)
    return listener


def translate_grpc_listeners(snapshot: Snapshot, proxy: Proxy) -> list[Listener]:
    out = []
    for service in snapshot.visible_services(proxy):
        for port in service.ports:
            if not port.protocol.is_http_or_sniffed:
                continue
            manager = hcm_pb2.HttpConnectionManager(
                rds=hcm_pb2.Rds(
                    route_config_name=names.outbound_cluster(port.port, "", service.hostname),
                    config_source=ads(),
                ),
                http_filters=http_filters(proxyless=True),
            )
            out.append(
                Listener(
                    name=names.grpc_listener(service.hostname, port.port),
                    api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager)),
                )
            )
    return out
