"""The registry's view of the mesh: services, their ports and endpoints, the
workload instances behind them, and the proxies that ask for configuration.

Everything here is frozen: a snapshot is shared by every translation that
runs against it, possibly on several threads, and must not change under them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

Labels = Mapping[str, str]
NO_LABELS: Labels = MappingProxyType({})
NO_LABELS_INT: Mapping[str, int] = MappingProxyType({})


class Protocol(StrEnum):
    """Istio's protocol names (pkg/config/protocol)."""

    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    GRPC_WEB = "GRPC-Web"
    HTTP_PROXY = "HTTP_PROXY"
    HTTPS = "HTTPS"
    TCP = "TCP"
    TLS = "TLS"
    UDP = "UDP"
    MONGO = "Mongo"
    REDIS = "Redis"
    MYSQL = "MySQL"
    # A port Istio cannot name gets protocol sniffing, which for HTTP traffic
    # means the HTTP routes apply; we treat it as HTTP for routing.
    UNSUPPORTED = "UnsupportedProtocol"

    @property
    def is_http(self) -> bool:
        return self in _HTTP

    @property
    def is_http_or_sniffed(self) -> bool:
        return self in _HTTP or self is Protocol.UNSUPPORTED

    @property
    def is_http2(self) -> bool:
        """Upstream connections speak HTTP/2 (h2c)."""
        return self in (Protocol.HTTP2, Protocol.GRPC, Protocol.GRPC_WEB)


_HTTP = frozenset(
    {Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC, Protocol.GRPC_WEB, Protocol.HTTP_PROXY}
)


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: Protocol
    target_port: int | str | None = None  # v1 Service targetPort / ServiceEntry targetPort


@dataclass(frozen=True)
class Service:
    """A host the mesh can route to, from a v1 Service or a ServiceEntry."""

    hostname: str
    namespace: str
    ports: tuple[ServicePort, ...]
    source: str  # "Service" or "ServiceEntry", with its name: "Service/reviews"
    export_to: frozenset[str] = frozenset({"*"})
    mesh_external: bool = False
    resolution: str = "STATIC"  # STATIC, DNS, DNS_ROUND_ROBIN, NONE
    addresses: tuple[str, ...] = ()

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)

    def __repr__(self) -> str:
        return f"<Service {self.hostname} {[p.port for p in self.ports]}>"


@dataclass(frozen=True)
class Endpoint:
    """One address:port serving one port of one service."""

    address: str
    port: int
    labels: Labels = field(default_factory=lambda: NO_LABELS)
    locality: str = ""  # region/zone/subzone
    weight: int = 1
    service_account: str = ""
    workload: str = ""


@dataclass(frozen=True)
class Instance:
    """A running workload instance, as the registry records it.

    `ports` are what peers dial (name -> port at `address`): the instance's
    sidecar listens there. `app_ports` are where the application itself
    listens on `app_address`, behind that sidecar; a port missing from it is
    taken to be the same number (an application reached without a sidecar).
    """

    name: str
    namespace: str
    workload: str
    address: str
    ports: Mapping[str, int]
    labels: Labels = field(default_factory=lambda: NO_LABELS)
    service_account: str = "default"
    healthy: bool = True
    locality: str = ""
    app_ports: Mapping[str, int] = field(default_factory=lambda: NO_LABELS_INT)
    app_address: str = "127.0.0.1"
    metrics_port: int = 0  # the sidecar's admin port (/stats/prometheus); 0 when unknown

    def app_port(self, name: str) -> int:
        return self.app_ports.get(name, self.ports[name])


class ProxyType(StrEnum):
    SIDECAR = "sidecar"
    ROUTER = "router"  # a gateway
    GRPC = "proxyless"  # a gRPC client reading xDS itself


# Node metadata: a sidecar's declared upstreams (a Workload's spec.upstreams), a
# list in the bootstrap, JSON in Proxy.metadata (xds/node.py)
UPSTREAMS_METADATA = "UPSTREAMS"


@dataclass(frozen=True)
class Proxy:
    """Who is asking: a node's identity and metadata, as the ADS server reads
    them from the DiscoveryRequest's Node."""

    node_id: str
    namespace: str
    type: ProxyType = ProxyType.SIDECAR
    labels: Labels = field(default_factory=lambda: NO_LABELS)
    workload: str = ""
    ip: str = "127.0.0.1"
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    locality: str = ""  # region/zone/subzone, from the Node's locality

    @property
    def instance_name(self) -> str:
        """The instance this proxy fronts: metadata NAME, else the pod-name part
        of an Istio-style node id `TYPE~IP~NAME.NAMESPACE~DOMAIN`."""
        if self.metadata.get("NAME"):
            return self.metadata["NAME"]
        parts = self.node_id.split("~")
        if len(parts) == 4:
            name, _, _ = parts[2].partition(".")
            return name
        return ""

    def __repr__(self) -> str:
        return f"<Proxy {self.type} {self.node_id} ns={self.namespace}>"
