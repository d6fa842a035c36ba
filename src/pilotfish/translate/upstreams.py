"""Declared upstreams (LDS): a Workload's `spec.upstreams`, which the node
agent hands its sidecars as node metadata UPSTREAMS, each become a
listener on `localAddress:localPort` that carries what arrives to one port
of one service, so an application that knows nothing of proxies (a redis
client, curl without HTTP_PROXY) connects to localhost and is in the mesh.

Istio's nearest concept is a Sidecar egress listener with `bind` and `port`
(captureMode NONE); Consul Connect's is the service's `upstreams`
(destination_name, local_bind_port): the field belongs to the workload, as
Consul has it, since it is what the application's configuration points at.

The Service's port decides the protocol, as everywhere in the mesh: an HTTP
port gets an HttpConnectionManager whose one virtual host (`*`: the client
says Host `127.0.0.1:PORT`) holds the service's routes, VirtualService and
all; a TLS/HTTPS port chains chosen by SNI (`tls` routes: sidecar_tls.py);
any other port a tcp_proxy to the service's clusters (`tcp` route weights
included). Mutual TLS, circuit breakers and metrics are the
clusters', as for any outbound call. An upstream whose service or port is
not in the registry gets no listener until it is (`pilotfish analyze` warns).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.model import Proxy, Service, Snapshot
from pilotfish.model.hosts import resolve_host, service_fqdn
from pilotfish.model.types import UPSTREAMS_METADATA
from pilotfish.translate.connect import tcp_service_clusters
from pilotfish.translate.routes import service_routes
from pilotfish.translate.sidecar_tls import TLS_PROTOCOLS, translate_sidecar_tls_listener
from pilotfish.translate.tcp import tcp_listener, translate_tcp_filter

DEFAULT_LOCAL_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class Upstream:
    service: str  # as written: NAME, NAME.NAMESPACE or a host
    port: int
    local_port: int
    local_address: str = DEFAULT_LOCAL_ADDRESS

    @property
    def listener_name(self) -> str:
        return f"{self.local_address}_{self.local_port}"


def declared_upstreams(proxy: Proxy) -> list[Upstream]:
    """From the node metadata; entries that do not parse are left out (the
    API validated the Workload; a hand-written bootstrap gets what it says)."""
    try:
        raw = json.loads(proxy.metadata.get(UPSTREAMS_METADATA) or "[]")
    except ValueError:
        return []
    out = []
    for entry in raw if isinstance(raw, list) else []:
        try:
            out.append(
                Upstream(
                    str(entry["service"]),
                    int(entry["port"]),
                    int(entry["localPort"]),
                    str(entry.get("localAddress") or DEFAULT_LOCAL_ADDRESS),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def upstream_service(snapshot: Snapshot, proxy: Proxy, name: str) -> Service | None:
    """NAME in the proxy's namespace, NAME.NAMESPACE, or a host (a ServiceEntry's)."""
    candidates = [resolve_host(name, proxy.namespace)]
    if name.count(".") == 1:
        candidates.insert(0, service_fqdn(*name.split(".")))
    for host in candidates:
        found = snapshot.service_for(proxy, host)
        if found is not None:
            return found
    return None


# listeners.py's: an outbound HTTP listener with the sidecar's telemetry, for a route table
HttpListener = Callable[[str, str, int, route_pb2.RouteConfiguration], Listener]


def translate_upstream_listeners(
    snapshot: Snapshot, proxy: Proxy, http_listener: HttpListener
) -> list[Listener]:
    out: dict[str, Listener] = {}
    for upstream in declared_upstreams(proxy):
        service = upstream_service(snapshot, proxy, upstream.service)
        port = service.port(upstream.port) if service is not None else None
        name = upstream.listener_name
        if service is None or port is None or port.protocol == "UDP" or name in out:
            continue
        if port.protocol.is_http_or_sniffed:
            table = _route_table(snapshot, proxy, service, upstream)
            out[name] = http_listener(name, upstream.local_address, upstream.local_port, table)
        elif port.protocol in TLS_PROTOCOLS:
            at = (name, upstream.local_address, upstream.local_port)
            out[name] = translate_sidecar_tls_listener(snapshot, proxy, service, port.port, at)
        else:
            clusters = tcp_service_clusters(snapshot, proxy, service, upstream.port)
            tcp = translate_tcp_filter(name, clusters)
            address, local = upstream.local_address, upstream.local_port
            out[name] = tcp_listener(name, address, local, [tcp], base_pb2.OUTBOUND)
    return list(out.values())


def _route_table(
    snapshot: Snapshot, proxy: Proxy, service: Service, upstream: Upstream
) -> route_pb2.RouteConfiguration:
    """One virtual host for any Host: the client names 127.0.0.1, not the service."""
    return route_pb2.RouteConfiguration(
        name=upstream.listener_name,
        validate_clusters=BoolValue(value=False),
        virtual_hosts=[
            rc.VirtualHost(
                name=f"{service.hostname}:{upstream.port}",
                domains=["*"],
                routes=service_routes(snapshot, proxy, service, upstream.port),
                include_request_attempt_count=True,
            )
        ],
    )
