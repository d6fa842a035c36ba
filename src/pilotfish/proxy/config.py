"""The proxy's configuration: xDS resources in, one immutable snapshot out.

Every update compiles the resources it brings before anything changes; one
bad resource rejects the whole update (the ADS client NACKs it) and the
previous snapshot keeps serving. A listener that needs a route configuration
over RDS is warming until that arrives, and is not served meanwhile, as in
Envoy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

from pilotfish.proxy import xds_types
from pilotfish.proxy.listeners import CompiledListener, compile_listener, is_sniffed, prepare_routes
from pilotfish.proxy.routing import RouteTable, compile_route_config
from pilotfish.proxy.sds_secrets import check_secrets, wanted_names
from pilotfish.proxy.sniff import compile_sniffed
from pilotfish.proxy.tcp.listener import TcpListener, compile_tcp_listener, is_tcp_listener
from pilotfish.proxy.telemetry import ServiceInfo
from pilotfish.proxy.tls import DownstreamTls
from pilotfish.proxy.upstream.cluster_set import ClusterSet


@dataclass(frozen=True)
class Snapshot:
    """What the data path reads; replaced whole, never changed in place."""

    listeners: Mapping[str, CompiledListener] = field(default_factory=dict)
    tcp_listeners: Mapping[str, TcpListener] = field(default_factory=dict)  # tcp_proxy ones
    routes: Mapping[str, RouteTable] = field(default_factory=dict)
    clusters: ClusterSet = field(default_factory=ClusterSet)
    # The destination service each cluster stands for (Istio's istio.services metadata).
    services: Mapping[str, ServiceInfo] = field(default_factory=dict)
    raw: Mapping[str, Mapping[str, Message]] = field(default_factory=dict)  # for /config_dump
    # The last good SDS update (its private keys are never put in `raw`), and a
    # counter that goes up with each, so TLS contexts are made again.
    secrets: Mapping[str, Secret] = field(default_factory=dict)
    secrets_version: int = 0

    def routes_of(self, listener: CompiledListener) -> RouteTable | None:
        return listener.http.routes or self.routes.get(listener.http.rds_name)

    def active_listeners(self) -> dict[str, CompiledListener]:
        """Listeners with everything they need; the others are warming."""
        return {n: lst for n, lst in self.listeners.items() if self.routes_of(lst) is not None}


class ProxyConfig:
    def __init__(self, on_change: Callable[[Snapshot], None] = lambda s: None) -> None:
        self.snapshot = Snapshot()
        self._on_change = on_change
        self._asked_secrets = False

    def __repr__(self) -> str:
        s = self.snapshot
        counts = f"listeners={len(s.listeners)} routes={len(s.routes)} clusters={len(s.clusters)}"
        return f"<ProxyConfig {counts}>"

    def apply(self, type_url: str, resources: list[AnyProto]) -> Mapping[str, frozenset[str]]:
        """Apply a state-of-the-world update of one type; return the names now
        wanted of the types it refers to. Raises on any invalid resource."""
        decoded = [_decode(type_url, r) for r in resources]
        snapshot, wanted = self._updated(type_url, decoded)
        if type_url != xds_types.SECRET:
            raw = {**self.snapshot.raw, type_url: {_name(m): m for m in decoded}}
            snapshot = replace(snapshot, raw=MappingProxyType(raw))
        if type_url in (xds_types.LISTENER, xds_types.CLUSTER):
            wanted = {**wanted, **self._wanted_secrets(snapshot)}
        self.snapshot = snapshot
        self._on_change(self.snapshot)
        return wanted

    def served_secrets(self) -> tuple[int, Mapping[str, Secret]]:
        return self.snapshot.secrets_version, self.snapshot.secrets

    def _wanted_secrets(self, snapshot: Snapshot) -> dict[str, frozenset[str]]:
        """SDS names the listeners' and clusters' TLS refer to; asked for once
        there are any, and from then on (an empty list unsubscribes)."""
        settings = [t.settings for lst in snapshot.listeners.values() for t in _listener_tls(lst)]
        settings += [
            t.settings for c in snapshot.clusters.clusters.values() for t in c.spec.all_tls()
        ]
        names = wanted_names(settings)
        if not names and not self._asked_secrets:
            return {}
        self._asked_secrets = True
        return {xds_types.SECRET: names}

    def load_static(self, listeners: list[Listener], clusters: list[Cluster]) -> None:
        """The bootstrap's static_resources, applied like an xDS update."""
        for type_url, messages in ((xds_types.CLUSTER, clusters), (xds_types.LISTENER, listeners)):
            packed = []
            for message in messages:
                a = AnyProto()
                a.Pack(message)
                packed.append(a)
            self.apply(type_url, packed)

    def _compiled(self, listener: Listener) -> CompiledListener:
        """An unchanged listener stays the same object, as Envoy keeps a listener
        an update does not change: its connections are not drained, and its
        filters keep their state (rate limit buckets, verified tokens)."""
        s = self.snapshot
        same = s.raw.get(xds_types.LISTENER, {}).get(listener.name) == listener
        kept = s.listeners.get(listener.name) if same else None
        if kept is not None:
            return kept
        return compile_sniffed(listener) if is_sniffed(listener) else compile_listener(listener)

    def _updated(
        self, type_url: str, decoded: list[Any]
    ) -> tuple[Snapshot, Mapping[str, frozenset[str]]]:
        s = self.snapshot
        if type_url == xds_types.LISTENER:
            # A changed listener is new, and its open connections drain.
            listeners = {m.name: self._compiled(m) for m in decoded if not is_tcp_listener(m)}
            tcp = {m.name: compile_tcp_listener(m) for m in decoded if is_tcp_listener(m)}
            _prepare(listeners.values(), s.routes)
            rds = frozenset(lst.http.rds_name for lst in listeners.values() if lst.http.rds_name)
            updated = replace(
                s, listeners=MappingProxyType(listeners), tcp_listeners=MappingProxyType(tcp)
            )
            return updated, {xds_types.ROUTE: rds}
        if type_url == xds_types.ROUTE:
            routes = {rc.name: compile_route_config(rc) for rc in decoded}
            _prepare(s.listeners.values(), routes)
            return replace(s, routes=MappingProxyType(routes)), {}
        if type_url == xds_types.CLUSTER:
            clusters = s.clusters.with_clusters(decoded)
            services = {c.name: _service(c) for c in decoded}
            return replace(s, clusters=clusters, services=MappingProxyType(services)), {
                xds_types.ENDPOINT: clusters.eds_names()
            }
        if type_url == xds_types.ENDPOINT:
            return replace(s, clusters=s.clusters.with_assignments(decoded)), {}
        if type_url == xds_types.SECRET:
            check_secrets(decoded)
            secrets = MappingProxyType({m.name: m for m in decoded})
            return replace(s, secrets=secrets, secrets_version=s.secrets_version + 1), {}
        raise ValueError(f"unsupported resource type {type_url}")


def _service(cluster: Cluster) -> ServiceInfo:
    """From the metadata if it names one service, else from the cluster's name;
    unknown for an inbound cluster without it (`inbound|PORT||`): the request's
    Host says then."""
    return ServiceInfo.from_cluster(cluster.name, cluster.metadata)


def _listener_tls(listener: CompiledListener) -> list[DownstreamTls]:
    chains = [tls for _, tls in listener.sni_tls]
    return chains + ([listener.tls] if listener.tls is not None else [])


def _prepare(listeners: Iterable[CompiledListener], routes: Mapping[str, RouteTable]) -> None:
    """Check each RDS route table against the filters of the listeners using it."""
    for listener in listeners:
        table = routes.get(listener.http.rds_name)
        if table is not None:
            prepare_routes(listener.http.filters, table)


_TYPES: dict[str, type[Message]] = {
    xds_types.LISTENER: Listener,
    xds_types.ROUTE: RouteConfiguration,
    xds_types.CLUSTER: Cluster,
    xds_types.ENDPOINT: ClusterLoadAssignment,
    xds_types.SECRET: Secret,
}


def _decode(type_url: str, resource: AnyProto) -> Any:
    message_type = _TYPES.get(type_url)
    if message_type is None:
        raise ValueError(f"unsupported resource type {type_url}")
    if resource.type_url != type_url:
        raise ValueError(f"a {type_url} response carries a {resource.type_url}")
    message = message_type()
    resource.Unpack(message)
    return message


def _name(message: Message) -> str:
    return str(getattr(message, "name", "") or getattr(message, "cluster_name", ""))
