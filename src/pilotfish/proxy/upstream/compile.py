"""Cluster and ClusterLoadAssignment protos compiled into specs.

Every field that is set must be one pilotfish honours; any other makes the
resource fail with its path, which becomes the NACK's error_detail, so the
proxy never behaves unlike the Envoy its control plane believes it configured.
Fields that only label (names, metadata) are accepted; DNS settings are
accepted because Envoy, too, ignores them on STATIC and EDS clusters.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.core.v3.health_check_pb2 import HealthStatus
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from google.protobuf import json_format

from pilotfish.proxy.proto_fields import seconds, unsupported
from pilotfish.proxy.tls import TlsConfigError, UpstreamTls, compile_upstream
from pilotfish.proxy.upstream.breakers import RetryBudget, Thresholds
from pilotfish.proxy.upstream.errors import ClusterConfigError
from pilotfish.proxy.upstream.host import EdsHealth
from pilotfish.proxy.upstream.outlier import OutlierConfig
from pilotfish.proxy.upstream.spec import (
    DEFAULT_OVERPROVISIONING,
    ClusterSpec,
    EndpointSpec,
    LbConfig,
    LbPolicy,
    LoadAssignment,
    PoolOptions,
    TcpKeepalive,
    TransportSocketMatch,
    UpstreamHttp,
)

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets."
UPSTREAM_TLS = _TYPES + "tls.v3.UpstreamTlsContext"
RAW_BUFFER = _TYPES + "raw_buffer.v3.RawBuffer"
# Every OutlierConfig field is named after its proto field. The active-health-check
# flag is accepted because pilotfish has no active health checking for it to change.
_OUTLIER = (*(f.name for f in fields(OutlierConfig)), "successful_active_health_check_uneject_host")
_DURATIONS = frozenset(
    {"interval", "base_ejection_time", "max_ejection_time", "max_ejection_time_jitter"}
)
# Plain bools in the proto (always_eject_one_host is a BoolValue, read as the others).
_BOOLS = frozenset({"split_external_local_origin_errors"})
_THRESHOLDS = (
    "priority",
    "max_connections",
    "max_pending_requests",
    "max_requests",
    "max_retries",
    "max_connection_pools",
    "track_remaining",
    "retry_budget.budget_percent",
    "retry_budget.min_retry_concurrency",
)
CLUSTER_FIELDS = frozenset(
    {
        "name",
        "alt_stat_name",
        "metadata",
        "type",
        "connect_timeout",
        "lb_policy",
        "per_connection_buffer_limit_bytes",
        "eds_cluster_config.service_name",
        "eds_cluster_config.eds_config.ads",
        "eds_cluster_config.eds_config.resource_api_version",
        "eds_cluster_config.eds_config.initial_fetch_timeout",
        "load_assignment",  # checked by compile_load_assignment
        "max_requests_per_connection",
        "common_http_protocol_options.idle_timeout",
        "common_http_protocol_options.max_requests_per_connection",
        "typed_extension_protocol_options",  # checked below
        "upstream_connection_options.tcp_keepalive",
        "common_lb_config.healthy_panic_threshold",
        "common_lb_config.locality_weighted_lb_config",
        "common_lb_config.update_merge_window",
        "common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
        "ring_hash_lb_config.minimum_ring_size",
        "ring_hash_lb_config.maximum_ring_size",
        "ring_hash_lb_config.hash_function",
        "maglev_lb_config.table_size",
        "least_request_lb_config.choice_count",
        "least_request_lb_config.active_request_bias",
        "dns_lookup_family",
        "dns_refresh_rate",
        "respect_dns_ttl",
        "wait_for_warm_on_init",
        "transport_socket.name",
        "transport_socket.typed_config",  # checked by _transport_socket
        "transport_socket_matches.name",
        "transport_socket_matches.match",
        "transport_socket_matches.transport_socket.name",
        "transport_socket_matches.transport_socket.typed_config",
        *(f"circuit_breakers.thresholds.{f}" for f in _THRESHOLDS),
        *(f"outlier_detection.{f}" for f in _OUTLIER),
    }
)
HTTP_OPTIONS_FIELDS = frozenset(
    {
        "common_http_protocol_options.idle_timeout",
        "common_http_protocol_options.max_requests_per_connection",
        "explicit_http_config.http_protocol_options",
        "explicit_http_config.http2_protocol_options.max_concurrent_streams",
        "use_downstream_protocol_config.http_protocol_options",
        "use_downstream_protocol_config.http2_protocol_options.max_concurrent_streams",
    }
)
ASSIGNMENT_FIELDS = frozenset(
    {
        "cluster_name",
        "policy.overprovisioning_factor",
        "policy.weighted_priority_health",
        "endpoints.locality.region",
        "endpoints.locality.zone",
        "endpoints.locality.sub_zone",
        "endpoints.metadata",
        "endpoints.load_balancing_weight",
        "endpoints.priority",
        "endpoints.lb_endpoints.endpoint.address.socket_address.address",
        "endpoints.lb_endpoints.endpoint.address.socket_address.port_value",
        "endpoints.lb_endpoints.endpoint.hostname",
        "endpoints.lb_endpoints.health_status",
        "endpoints.lb_endpoints.metadata",
        "endpoints.lb_endpoints.load_balancing_weight",
    }
)
_POLICIES = {
    ClusterProto.ROUND_ROBIN: LbPolicy.ROUND_ROBIN,
    ClusterProto.LEAST_REQUEST: LbPolicy.LEAST_REQUEST,
    ClusterProto.RANDOM: LbPolicy.RANDOM,
    ClusterProto.RING_HASH: LbPolicy.RING_HASH,
    ClusterProto.MAGLEV: LbPolicy.MAGLEV,
}
_HEALTH = {
    HealthStatus.UNKNOWN: EdsHealth.HEALTHY,
    HealthStatus.HEALTHY: EdsHealth.HEALTHY,
    HealthStatus.DEGRADED: EdsHealth.DEGRADED,
    HealthStatus.UNHEALTHY: EdsHealth.UNHEALTHY,
    HealthStatus.TIMEOUT: EdsHealth.UNHEALTHY,
    HealthStatus.DRAINING: EdsHealth.DRAINING,
}
MAX_RING_SIZE = 8 * 1024 * 1024
MAX_MAGLEV_TABLE = 5000011


def compile_cluster(proto: Any) -> ClusterSpec:
    """A `Cluster` proto -> ClusterSpec; raises ClusterConfigError naming the field."""
    name = proto.name
    where = f"cluster {name or '(unnamed)'}"
    if not name:
        raise ClusterConfigError(where, "name", "a cluster needs a name")
    bad = unsupported(proto, CLUSTER_FIELDS)
    if bad:
        raise ClusterConfigError(where, bad[0], "field not supported by pilotfish")
    if proto.type not in (ClusterProto.STATIC, ClusterProto.EDS, ClusterProto.ORIGINAL_DST):
        kind = ClusterProto.DiscoveryType.Name(proto.type)
        raise ClusterConfigError(
            where, "type", f"{kind} is not supported (STATIC, EDS, ORIGINAL_DST)"
        )
    original_dst = proto.type == ClusterProto.ORIGINAL_DST
    if original_dst != (proto.lb_policy == ClusterProto.CLUSTER_PROVIDED):
        raise ClusterConfigError(
            where, "lb_policy", "CLUSTER_PROVIDED goes with type ORIGINAL_DST, and only with it"
        )
    policy = _POLICIES.get(ClusterProto.ROUND_ROBIN if original_dst else proto.lb_policy)
    if policy is None:
        kind = ClusterProto.LbPolicy.Name(proto.lb_policy)
        raise ClusterConfigError(where, "lb_policy", f"{kind} is not supported")
    eds = proto.type == ClusterProto.EDS
    if eds and proto.HasField("load_assignment"):
        raise ClusterConfigError(
            where, "load_assignment", "an EDS cluster takes its endpoints from EDS"
        )
    assignment = None
    if proto.HasField("load_assignment"):
        assignment = compile_load_assignment(proto.load_assignment, where, "load_assignment.")
    default, high = _thresholds(proto, where)
    return ClusterSpec(
        name=name,
        eds_service_name=(proto.eds_cluster_config.service_name or name) if eds else "",
        original_dst=original_dst,
        connect_timeout=seconds(proto.connect_timeout)
        if proto.HasField("connect_timeout")
        else 5.0,
        lb=_lb_config(proto, policy, where),
        thresholds=default,
        high_thresholds=high,
        outlier=_outlier(proto.outlier_detection) if proto.HasField("outlier_detection") else None,
        pool=_pool_options(proto, where),
        load_assignment=assignment,
        alt_stat_name=proto.alt_stat_name,
        wait_for_warm_on_init=_wrapped(proto, "wait_for_warm_on_init", True),
        eds_initial_fetch_timeout=_initial_fetch_timeout(proto),
        transport_socket=_transport_socket(proto.transport_socket, where, "transport_socket"),
        transport_socket_matches=tuple(
            TransportSocketMatch(
                m.name,
                tuple(sorted(json_format.MessageToDict(m.match).items())),
                _transport_socket(
                    m.transport_socket, where, f"transport_socket_matches[{i}].transport_socket"
                ),
            )
            for i, m in enumerate(proto.transport_socket_matches)
        ),
    )


def _transport_socket(proto: Any, where: str, path: str) -> UpstreamTls | None:
    """An UpstreamTlsContext, or plaintext (unset, or raw_buffer)."""
    url = proto.typed_config.type_url
    if not url or url == RAW_BUFFER:
        return None
    if url != UPSTREAM_TLS:
        raise ClusterConfigError(
            where, f"{path}.typed_config", "only UpstreamTlsContext and RawBuffer are supported"
        )
    context = tls_pb2.UpstreamTlsContext()
    proto.typed_config.Unpack(context)
    try:
        return compile_upstream(context, path)
    except TlsConfigError as e:
        raise ClusterConfigError(where, path, str(e)) from e


def compile_load_assignment(proto: Any, where: str = "", prefix: str = "") -> LoadAssignment:
    """A `ClusterLoadAssignment` proto -> LoadAssignment; errors name the field."""
    where = where or f"load assignment {proto.cluster_name or '(unnamed)'}"
    bad = unsupported(proto, ASSIGNMENT_FIELDS)
    if bad:
        raise ClusterConfigError(where, prefix + bad[0], "field not supported by pilotfish")
    endpoints: list[EndpointSpec] = []
    for i, locality in enumerate(proto.endpoints):
        path = f"{prefix}endpoints[{i}]"
        loc = (locality.locality.region, locality.locality.zone, locality.locality.sub_zone)
        locality_weight = _wrapped(locality, "load_balancing_weight", 0)
        if locality.HasField("load_balancing_weight") and locality_weight < 1:
            raise ClusterConfigError(where, f"{path}.load_balancing_weight", "must be >= 1")
        for j, lb in enumerate(locality.lb_endpoints):
            ep_path = f"{path}.lb_endpoints[{j}]"
            endpoints.append(_endpoint(lb, locality.priority, loc, locality_weight, where, ep_path))
    policy = proto.policy
    factor = _wrapped(policy, "overprovisioning_factor", DEFAULT_OVERPROVISIONING)
    if factor < 1:
        raise ClusterConfigError(where, f"{prefix}policy.overprovisioning_factor", "must be > 0")
    return LoadAssignment(
        proto.cluster_name, tuple(endpoints), factor, policy.weighted_priority_health
    )


def _endpoint(
    lb: Any, priority: int, loc: tuple[str, str, str], loc_weight: int, where: str, path: str
) -> EndpointSpec:
    socket = lb.endpoint.address.socket_address
    if not socket.address:
        raise ClusterConfigError(where, f"{path}.endpoint.address.socket_address.address", "empty")
    if not 0 < socket.port_value < 65536:
        raise ClusterConfigError(
            where, f"{path}.endpoint.address.socket_address.port_value", "must be 1-65535"
        )
    weight = _wrapped(lb, "load_balancing_weight", 1)
    if weight < 1:
        raise ClusterConfigError(where, f"{path}.load_balancing_weight", "must be >= 1")
    metadata = json_format.MessageToDict(lb.metadata).get("filterMetadata", {})
    return EndpointSpec(
        address=socket.address,
        port=socket.port_value,
        weight=weight,
        priority=priority,
        locality=loc,
        locality_weight=loc_weight,
        hostname=lb.endpoint.hostname,
        eds_health=_HEALTH.get(lb.health_status, EdsHealth.UNHEALTHY),
        metadata=metadata,
    )


def _lb_config(proto: Any, policy: LbPolicy, where: str) -> LbConfig:
    common = proto.common_lb_config
    panic = (
        common.healthy_panic_threshold.value if common.HasField("healthy_panic_threshold") else 50.0
    )
    if not 0 <= panic <= 100:
        raise ClusterConfigError(where, "common_lb_config.healthy_panic_threshold", "must be 0-100")
    ring = proto.ring_hash_lb_config
    if ring.hash_function != ClusterProto.RingHashLbConfig.XX_HASH:
        raise ClusterConfigError(
            where, "ring_hash_lb_config.hash_function", "only the default (XX_HASH) is supported"
        )
    ring_min = _wrapped(ring, "minimum_ring_size", 1024)
    ring_max = _wrapped(ring, "maximum_ring_size", MAX_RING_SIZE)
    if not 0 < ring_min <= ring_max <= MAX_RING_SIZE:
        raise ClusterConfigError(
            where,
            "ring_hash_lb_config",
            f"need 0 < minimum_ring_size <= maximum_ring_size <= {MAX_RING_SIZE}",
        )
    table = _wrapped(proto.maglev_lb_config, "table_size", 65537)
    if not (table < MAX_MAGLEV_TABLE and _is_prime(table)):
        raise ClusterConfigError(
            where, "maglev_lb_config.table_size", f"must be a prime below {MAX_MAGLEV_TABLE}"
        )
    least = proto.least_request_lb_config
    choices = _wrapped(least, "choice_count", 2)
    if choices < 2:
        raise ClusterConfigError(where, "least_request_lb_config.choice_count", "must be >= 2")
    bias = least.active_request_bias.default_value if least.HasField("active_request_bias") else 1.0
    if bias < 0:
        raise ClusterConfigError(
            where, "least_request_lb_config.active_request_bias", "must be >= 0"
        )
    return LbConfig(
        policy=policy,
        choice_count=choices,
        active_request_bias=bias,
        ring_min=ring_min,
        ring_max=ring_max,
        maglev_table_size=table,
        panic_threshold=panic,
        locality_weighted=common.HasField("locality_weighted_lb_config"),
        use_hostname_for_hashing=common.consistent_hashing_lb_config.use_hostname_for_hashing,
    )


def _thresholds(proto: Any, where: str) -> tuple[Thresholds, Thresholds]:
    found: dict[int, Thresholds] = {}
    for i, t in enumerate(proto.circuit_breakers.thresholds):
        if t.priority in found:
            raise ClusterConfigError(
                where, f"circuit_breakers.thresholds[{i}].priority", "priority listed twice"
            )
        budget = None
        if t.HasField("retry_budget"):
            b = t.retry_budget
            percent = b.budget_percent.value if b.HasField("budget_percent") else 20.0
            budget = RetryBudget(percent, _wrapped(b, "min_retry_concurrency", 3))
        found[t.priority] = Thresholds(
            max_connections=_wrapped(t, "max_connections", 1024),
            max_pending_requests=_wrapped(t, "max_pending_requests", 1024),
            max_requests=_wrapped(t, "max_requests", 1024),
            max_retries=_wrapped(t, "max_retries", 3),
            max_connection_pools=_wrapped(t, "max_connection_pools", None),
            retry_budget=budget,
            track_remaining=t.track_remaining,
        )
    return found.get(0, Thresholds()), found.get(1, Thresholds())


def _outlier(o: Any) -> OutlierConfig:
    values: dict[str, Any] = {}
    for f in fields(OutlierConfig):
        if f.name in _BOOLS:
            values[f.name] = getattr(o, f.name)
        elif not o.HasField(f.name):
            continue
        elif f.name in _DURATIONS:
            values[f.name] = seconds(getattr(o, f.name))
        else:
            values[f.name] = getattr(o, f.name).value
    return replace(OutlierConfig(), **values)


def _pool_options(proto: Any, where: str) -> PoolOptions:
    common = proto.common_http_protocol_options
    max_requests = _wrapped(proto, "max_requests_per_connection", None)
    http, streams = UpstreamHttp.HTTP1, None
    for key, any_options in proto.typed_extension_protocol_options.items():
        path = f"typed_extension_protocol_options[{key}]"
        if key != HTTP_OPTIONS or not any_options.Is(HttpProtocolOptions.DESCRIPTOR):
            raise ClusterConfigError(where, path, "only HttpProtocolOptions is supported")
        options = HttpProtocolOptions()
        any_options.Unpack(options)
        bad = unsupported(options, HTTP_OPTIONS_FIELDS)
        if bad:
            raise ClusterConfigError(where, f"{path}.{bad[0]}", "field not supported by pilotfish")
        common = options.common_http_protocol_options
        http, streams = _upstream_http(options)
    idle = seconds(common.idle_timeout) if common.HasField("idle_timeout") else 3600.0
    max_requests = _wrapped(common, "max_requests_per_connection", max_requests)
    keepalive = None
    if proto.upstream_connection_options.HasField("tcp_keepalive"):
        k = proto.upstream_connection_options.tcp_keepalive
        keepalive = TcpKeepalive(
            _wrapped(k, "keepalive_probes", None),
            _wrapped(k, "keepalive_time", None),
            _wrapped(k, "keepalive_interval", None),
        )
    return PoolOptions(
        idle_timeout=idle or None,  # Envoy: zero disables the idle timeout
        max_requests_per_connection=max_requests or None,
        per_connection_buffer_limit_bytes=_wrapped(
            proto, "per_connection_buffer_limit_bytes", 1024 * 1024
        ),
        tcp_keepalive=keepalive,
        http=http,
        max_concurrent_streams=streams,
    )


def _upstream_http(options: HttpProtocolOptions) -> tuple[UpstreamHttp, int | None]:
    """The upstream protocol, and the HTTP/2 streams a connection carries at
    most (Envoy's max_concurrent_streams; the peer's SETTINGS may say fewer)."""
    which = options.WhichOneof("upstream_protocol_options")
    if which == "use_downstream_protocol_config":
        h2 = options.use_downstream_protocol_config.http2_protocol_options
        return UpstreamHttp.DOWNSTREAM, _wrapped(h2, "max_concurrent_streams", None)
    if which == "explicit_http_config" and options.explicit_http_config.HasField(
        "http2_protocol_options"
    ):
        h2 = options.explicit_http_config.http2_protocol_options
        return UpstreamHttp.HTTP2, _wrapped(h2, "max_concurrent_streams", None)
    return UpstreamHttp.HTTP1, None


def _initial_fetch_timeout(proto: Any) -> float | None:
    eds = proto.eds_cluster_config.eds_config
    return seconds(eds.initial_fetch_timeout) if eds.HasField("initial_fetch_timeout") else None


def _wrapped(msg: Any, name: str, default: Any) -> Any:
    return getattr(msg, name).value if msg.HasField(name) else default


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True
