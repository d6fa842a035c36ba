"""Listeners compiled from `envoy.config.listener.v3.Listener`.

A listener is an address and filter chains holding one HttpConnectionManager
(with an inline route table or an RDS name): what the translation produces and
a user writes in a bootstrap. Several chains may differ only in their
transport, as Istio's inbound chains do: one for TLS (transport_protocol
`tls`, a DownstreamTlsContext from SDS) and one for plaintext; a gateway's
TLS chains also differ in the SNI names they match (`server_names`). Any
other field that is set fails the compile with its path (a NACK).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.config.core.v3.base_pb2 import TrafficDirection
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.access_loggers.file.v3.file_pb2 import FileAccessLog
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from pilotfish.proxy import xds_types
from pilotfish.proxy.filters import FilterChain, FilterConfigError, compile_http_filters
from pilotfish.proxy.metric_overrides import (
    STATS_FILTER,
    MetricsConfig,
    MetricsConfigError,
    split_stats_filter,
)
from pilotfish.proxy.proto_fields import seconds, unsupported
from pilotfish.proxy.routing import Forward, RouteTable, compile_route_config
from pilotfish.proxy.tls import DownstreamTls, ServerChains, TlsConfigError, compile_downstream
from pilotfish.proxy.tracing.config import TracingConfig, TracingConfigError, compile_tracing

if TYPE_CHECKING:  # sniff.py compiles a listener's TCP half with tcp/, which imports this
    from pilotfish.proxy.sniff import Sniffing

HCM_NAME = "envoy.filters.network.http_connection_manager"
TLS_CONTEXT = xds_types.PREFIX + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_INSPECTOR = xds_types.PREFIX + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
HTTP_INSPECTOR = (
    xds_types.PREFIX + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
)
DEFAULT_MAX_HEADERS_KB = 60
# Envoy has no default; a slow-headers guard is what a sidecar wants (0s in the config disables it).
DEFAULT_REQUEST_HEADERS_TIMEOUT_S = 10.0
# Envoy has none either: without one a client that sends its body slowly keeps
# its request (and, for a body too big to buffer, an upstream slot) for as
# long as it likes. Long enough for a large upload; 0s in the config disables it.
DEFAULT_REQUEST_TIMEOUT_S = 300.0
DEFAULT_STREAM_IDLE_TIMEOUT_S = 300.0  # Envoy's default, 5 minutes

LISTENER_FIELDS = frozenset(
    {
        "name",
        "address.socket_address.address",
        "address.socket_address.port_value",
        "address.socket_address.protocol",
        "filter_chains.filters.name",
        "filter_chains.filters.typed_config",
        "filter_chains.name",
        "filter_chains.filter_chain_match.transport_protocol",
        "filter_chains.filter_chain_match.application_protocols",
        "filter_chains.filter_chain_match.server_names",
        "filter_chains.transport_socket.name",
        "filter_chains.transport_socket.typed_config",  # checked by compile_downstream
        "listener_filters.name",
        "listener_filters.typed_config",  # tls_inspector only
        "traffic_direction",
        "stat_prefix",
        "metadata",
        "per_connection_buffer_limit_bytes",
    }
)
HCM_FIELDS = frozenset(
    {
        "stat_prefix",
        "codec_type",
        "route_config",
        "rds.route_config_name",
        "rds.config_source.ads",
        "rds.config_source.resource_api_version",
        "http_filters",
        "generate_request_id",
        "use_remote_address",
        "xff_num_trusted_hops",
        "skip_xff_append",
        "server_name",
        "request_headers_timeout",
        "request_timeout",
        "stream_idle_timeout",
        "common_http_protocol_options.idle_timeout",
        "common_http_protocol_options.max_requests_per_connection",
        "max_request_headers_kb",
        "upgrade_configs.upgrade_type",
        "upgrade_configs.enabled",
        "access_log",
        "normalize_path",
        "merge_slashes",
        "preserve_external_request_id",
        "forward_client_cert_details",
        "set_current_client_cert_details",
        "tracing",  # checked by compile_tracing
    }
)


class ListenerError(Exception):
    """A listener that cannot be served; the message names the field."""


@dataclass(frozen=True)
class HttpManager:
    stat_prefix: str
    routes: RouteTable | None  # inline route_config
    rds_name: str  # or the RouteConfiguration to wait for
    filters: FilterChain  # http_filters before the router
    generate_request_id: bool
    use_remote_address: bool
    skip_xff_append: bool
    server_name: bytes
    request_headers_timeout: float  # 0: none (the 408 guard)
    request_timeout: float  # the whole request, body included, must arrive within; 0: none
    stream_idle_timeout: float  # a request with no bytes moving either way; 0: none
    idle_timeout: float  # downstream connection idle timeout, 0: none
    max_requests_per_connection: int  # 0: unlimited
    max_request_headers: int  # bytes, beyond which 431
    upgrades: frozenset[bytes]  # lower-case upgrade types allowed, e.g. b"websocket"
    access_log_paths: tuple[str, ...]
    tracing: TracingConfig | None = None  # None: no trace context read, written or reported
    metrics: MetricsConfig | None = None  # Telemetry overrides; None: Istio's standard metrics
    http2: bool = True  # codec_type AUTO (or HTTP2): a client may speak HTTP/2; HTTP1: not


@dataclass(frozen=True)
class CompiledListener:
    name: str
    host: str
    port: int
    http: HttpManager
    inbound: bool  # traffic_direction INBOUND: reports as the destination, to the app
    tls: DownstreamTls | None = None  # a filter chain for TLS connections
    plaintext: bool = True  # a filter chain for plaintext ones (PERMISSIVE, DISABLE)
    # TLS chains chosen by SNI (a gateway's HTTPS servers); `tls` then serves other names
    sni_tls: tuple[tuple[str, DownstreamTls], ...] = ()
    sniffing: Sniffing | None = None  # HTTP or TCP by the first bytes (sniff.py)

    def __repr__(self) -> str:
        return f"<Listener {self.name} {self.host}:{self.port}>"

    @property
    def has_tls(self) -> bool:
        return self.tls is not None or bool(self.sni_tls)

    @property
    def server_chains(self) -> ServerChains:
        return ServerChains(self.sni_tls, self.tls)


SniChains = tuple[tuple[str, DownstreamTls], ...]


@dataclass(frozen=True)
class ListenerFacts:
    """What every listener has whatever its filters: where, and which transports."""

    where: str  # "listener NAME", for errors
    host: str
    port: int
    tls: DownstreamTls | None
    plaintext: bool
    sni_tls: SniChains  # TLS chains chosen by the ClientHello's server name


def listener_facts(listener: Listener) -> ListenerFacts:
    """Check the listener's own fields, address and transports."""
    where = f"listener {listener.name or '(unnamed)'}"
    bad = unsupported(listener, LISTENER_FIELDS)
    if bad:
        raise ListenerError(f"{where}: field not supported by pilotfish: {', '.join(bad)}")
    socket = listener.address.socket_address
    if not socket.address or not socket.port_value:
        raise ListenerError(f"{where}: address.socket_address needs an address and a port_value")
    check_listener_filters(listener, where)
    tls, plaintext, sni_tls = transports(listener, where)
    return ListenerFacts(where, socket.address, socket.port_value, tls, plaintext, sni_tls)


def compile_listener(listener: Listener) -> CompiledListener:
    placed = listener_facts(listener)
    where, tls, plaintext, sni_tls = placed.where, placed.tls, placed.plaintext, placed.sni_tls
    return CompiledListener(
        name=listener.name,
        host=placed.host,
        port=placed.port,
        http=compile_http_manager(_one_manager(listener, where), where),
        inbound=listener.traffic_direction == TrafficDirection.INBOUND,
        tls=tls,
        plaintext=plaintext,
        sni_tls=sni_tls,
    )


def _one_manager(listener: Listener, where: str) -> hcm_pb2.HttpConnectionManager:
    """The HttpConnectionManager every filter chain runs: chains differ only in
    their transport (Istio's inbound chains for TLS and plaintext)."""
    chains = listener.filter_chains
    if not chains or any(len(chain.filters) != 1 for chain in chains):
        raise ListenerError(f"{where}: filter_chains: every chain needs exactly one filter")
    network_filter = chains[0].filters[0]
    if network_filter.typed_config.type_url != xds_types.HCM:
        raise ListenerError(
            f"{where}: filter_chains[0].filters[0]: only {HCM_NAME} is supported, "
            f"got {network_filter.name or network_filter.typed_config.type_url}"
        )
    if any(chain.filters[0].typed_config != network_filter.typed_config for chain in chains):
        raise ListenerError(
            f"{where}: filter_chains: chains that differ in more than their transport "
            "are not supported"
        )
    hcm = hcm_pb2.HttpConnectionManager()
    network_filter.typed_config.Unpack(hcm)
    return hcm


def is_sniffed(listener: Listener) -> bool:
    """Its chains are chosen by the http_inspector: HTTP ones and TCP ones."""
    return any(f.typed_config.type_url == HTTP_INSPECTOR for f in listener.listener_filters)


def check_listener_filters(listener: Listener, where: str) -> None:
    for i, listener_filter in enumerate(listener.listener_filters):
        if listener_filter.typed_config.type_url != TLS_INSPECTOR:
            raise ListenerError(
                f"{where}: listener_filters[{i}]: only envoy.filters.listener.tls_inspector "
                "and envoy.filters.listener.http_inspector are supported"
            )


def transports(listener: Listener, where: str) -> tuple[DownstreamTls | None, bool, SniChains]:
    """The TLS chain without server_names, whether plaintext has a chain, and
    the TLS chains by SNI name: what the first bytes of a connection (and
    its ClientHello) choose between (see accept.py)."""
    tls: DownstreamTls | None = None
    plaintext = False
    by_name: dict[str, DownstreamTls] = {}
    for i, chain in enumerate(listener.filter_chains):
        path = f"{where}: filter_chains[{i}]"
        match = chain.filter_chain_match
        if not chain.HasField("transport_socket"):
            if match.transport_protocol == "tls" or match.server_names:
                raise ListenerError(f"{path}: a chain for TLS needs a transport_socket")
            plaintext = True
            continue
        compiled = _chain_tls(chain, path)
        if match.server_names:
            for name in match.server_names:
                if name.lower() in by_name:
                    raise ListenerError(f"{path}: server name {name!r} is in two chains")
                by_name[name.lower()] = compiled
        elif tls is not None:
            raise ListenerError(f"{path}: only one TLS chain may match any server name")
        else:
            tls = compiled
    return tls, plaintext, tuple(sorted(by_name.items(), key=lambda item: item[0]))


def _chain_tls(chain: listener_components_pb2.FilterChain, path: str) -> DownstreamTls:
    transport = chain.filter_chain_match.transport_protocol
    if transport == "raw_buffer" or chain.transport_socket.typed_config.type_url != TLS_CONTEXT:
        raise ListenerError(
            f"{path}.transport_socket: only a DownstreamTlsContext, on a chain "
            "matching transport_protocol tls, is supported"
        )
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    try:
        return compile_downstream(context, f"{path}.transport_socket")
    except TlsConfigError as e:
        raise ListenerError(str(e)) from e


def compile_http_manager(hcm: hcm_pb2.HttpConnectionManager, where: str) -> HttpManager:
    bad = unsupported(hcm, HCM_FIELDS)
    if bad:
        prefix = "filter_chains[0].filters[0].typed_config."
        raise ListenerError(
            f"{where}: field not supported by pilotfish: " + ", ".join(prefix + b for b in bad)
        )
    if not hcm.HasField("route_config") and not hcm.rds.route_config_name:
        raise ListenerError(f"{where}: http_connection_manager needs route_config or rds")
    options = hcm.common_http_protocol_options
    routes = compile_route_config(hcm.route_config) if hcm.HasField("route_config") else None
    return HttpManager(
        stat_prefix=hcm.stat_prefix,
        routes=routes,
        rds_name=hcm.rds.route_config_name,
        filters=_filter_chain(hcm, routes, where),
        metrics=_metrics(hcm, where),
        generate_request_id=hcm.generate_request_id.value
        if hcm.HasField("generate_request_id")
        else True,
        use_remote_address=hcm.use_remote_address.value,
        skip_xff_append=hcm.skip_xff_append,
        server_name=(hcm.server_name or "envoy").encode(),
        request_headers_timeout=seconds(hcm.request_headers_timeout)
        if hcm.HasField("request_headers_timeout")
        else DEFAULT_REQUEST_HEADERS_TIMEOUT_S,
        request_timeout=seconds(hcm.request_timeout)
        if hcm.HasField("request_timeout")
        else DEFAULT_REQUEST_TIMEOUT_S,
        stream_idle_timeout=seconds(hcm.stream_idle_timeout)
        if hcm.HasField("stream_idle_timeout")
        else DEFAULT_STREAM_IDLE_TIMEOUT_S,
        idle_timeout=seconds(options.idle_timeout) if options.HasField("idle_timeout") else 3600.0,
        max_requests_per_connection=options.max_requests_per_connection.value,
        max_request_headers=(hcm.max_request_headers_kb.value or DEFAULT_MAX_HEADERS_KB) * 1024,
        upgrades=frozenset(
            u.upgrade_type.lower().encode()
            for u in hcm.upgrade_configs
            if not u.HasField("enabled") or u.enabled.value
        ),
        access_log_paths=tuple(access_log_path(a, where) for a in hcm.access_log),
        tracing=_tracing(hcm, where),
        http2=hcm.codec_type != hcm_pb2.HttpConnectionManager.HTTP1,
    )


def _tracing(hcm: hcm_pb2.HttpConnectionManager, where: str) -> TracingConfig | None:
    if not hcm.HasField("tracing"):
        return None
    try:
        return compile_tracing(hcm.tracing)
    except TracingConfigError as e:
        raise ListenerError(f"{where}: {e}") from e


def _metrics(hcm: hcm_pb2.HttpConnectionManager, where: str) -> MetricsConfig | None:
    try:
        return split_stats_filter(hcm.http_filters, where)[0]
    except MetricsConfigError as e:
        raise ListenerError(str(e)) from e


def _filter_chain(
    hcm: hcm_pb2.HttpConnectionManager, routes: RouteTable | None, where: str
) -> FilterChain:
    try:
        # istio.stats is the metrics' config (_metrics), not a filter in the chain.
        chain = compile_http_filters([f for f in hcm.http_filters if f.name != STATS_FILTER])
        if routes is not None:
            prepare_routes(chain, routes)
    except FilterConfigError as e:
        raise ListenerError(f"{where}: {e}") from e
    return chain


def prepare_routes(chain: FilterChain, table: RouteTable) -> None:
    """Compile the table's per-filter configs against the chain now, so that a
    bad one rejects the configuration instead of failing requests."""
    for route in table.routes():
        chain.prepare(route.filter_configs)
        if isinstance(route.action, Forward):
            for target in route.action.targets:
                chain.prepare(target.filter_configs)


def access_log_path(access_log: AccessLog, where: str) -> str:
    config = FileAccessLog()
    if not access_log.typed_config.Unpack(config):
        raise ListenerError(f"{where}: access_log: only envoy.access_loggers.file is supported")
    return str(config.path)
