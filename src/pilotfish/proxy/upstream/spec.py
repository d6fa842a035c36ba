"""Compiled, immutable cluster configuration: what `compile_cluster` and
`compile_load_assignment` return and what a runtime `Cluster` is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pilotfish.proxy.tls import UpstreamTls
from pilotfish.proxy.upstream.breakers import Thresholds
from pilotfish.proxy.upstream.host import EdsHealth
from pilotfish.proxy.upstream.outlier import OutlierConfig

DEFAULT_OVERPROVISIONING = 140  # percent, Envoy's default factor of 1.4


class LbPolicy(Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    address: str
    port: int
    weight: int = 1
    priority: int = 0
    locality: tuple[str, str, str] = ("", "", "")  # region, zone, sub_zone
    locality_weight: int = 0  # 0: unset (the locality takes no traffic when weighted)
    hostname: str = ""
    eds_health: EdsHealth = EdsHealth.HEALTHY
    metadata: dict[str, object] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> tuple[str, int]:
        return self.address, self.port


@dataclass(frozen=True, slots=True)
class LoadAssignment:
    cluster_name: str
    endpoints: tuple[EndpointSpec, ...] = ()
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING
    weighted_priority_health: bool = False


@dataclass(frozen=True, slots=True)
class LbConfig:
    policy: LbPolicy = LbPolicy.ROUND_ROBIN
    choice_count: int = 2
    active_request_bias: float = 1.0
    ring_min: int = 1024
    ring_max: int = 8 * 1024 * 1024
    maglev_table_size: int = 65537
    panic_threshold: float = 50.0
    locality_weighted: bool = False
    use_hostname_for_hashing: bool = False


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    probes: int | None = None
    time: float | None = None
    interval: float | None = None


class UpstreamHttp(Enum):
    """The HttpProtocolOptions' upstream protocol: explicit HTTP/1.1 or
    HTTP/2, or the downstream's own (use_downstream_protocol_config)."""

    HTTP1 = "HTTP/1.1"
    HTTP2 = "HTTP/2"
    DOWNSTREAM = "downstream"


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """Passed through to the shell's connection pool. Envoy's defaults:
    idle timeout one hour, unlimited requests per connection, 1 MiB buffers,
    HTTP/1.1, and (HTTP/2) as many streams per connection as the peer allows."""

    idle_timeout: float | None = 3600.0  # None: never
    max_requests_per_connection: int | None = None
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    tcp_keepalive: TcpKeepalive | None = None
    http: UpstreamHttp = UpstreamHttp.HTTP1
    max_concurrent_streams: int | None = None  # HTTP/2 streams per connection, at most


TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"  # the endpoint metadata key


@dataclass(frozen=True, slots=True)
class TransportSocketMatch:
    """Envoy's transport_socket_matches entry: endpoints whose metadata under
    `envoy.transport_socket_match` has all of `match` use `tls` (None: plaintext)."""

    name: str
    match: tuple[tuple[str, object], ...]
    tls: UpstreamTls | None


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    eds_service_name: str = ""  # "" for STATIC
    # ORIGINAL_DST: no endpoints of its own; without iptables the original
    # destination is a CONNECT request's target (proxy/connect.py), nothing else.
    original_dst: bool = False
    connect_timeout: float = 5.0
    lb: LbConfig = LbConfig()
    thresholds: Thresholds = field(default_factory=Thresholds)
    high_thresholds: Thresholds = field(default_factory=Thresholds)
    outlier: OutlierConfig | None = None
    pool: PoolOptions = PoolOptions()
    load_assignment: LoadAssignment | None = None
    alt_stat_name: str = ""
    added_via_api: bool = True
    wait_for_warm_on_init: bool = True
    eds_initial_fetch_timeout: float | None = None  # None: the ADS client's default
    transport_socket: UpstreamTls | None = None  # None: plaintext
    transport_socket_matches: tuple[TransportSocketMatch, ...] = ()

    def all_tls(self) -> list[UpstreamTls]:
        """Every TLS context the cluster may connect with (for the SDS names it needs)."""
        found = [m.tls for m in self.transport_socket_matches if m.tls is not None]
        return found + ([self.transport_socket] if self.transport_socket is not None else [])

    def upstream_tls(self, metadata: dict[str, object]) -> UpstreamTls | None:
        """How to connect to an endpoint with this metadata: the first
        transport_socket_matches entry it matches, else transport_socket
        (Istio's auto mTLS: TLS to endpoints labelled tlsMode istio)."""
        if not self.transport_socket_matches:
            return self.transport_socket
        found = metadata.get(TRANSPORT_SOCKET_MATCH)
        labels = found if isinstance(found, dict) else {}
        for entry in self.transport_socket_matches:
            if all(labels.get(k) == v for k, v in entry.match):
                return entry.tls
        return self.transport_socket

    @property
    def is_eds(self) -> bool:
        return bool(self.eds_service_name)

    @property
    def stat_name(self) -> str:
        return self.alt_stat_name or self.name
