"""Clusters (CDS): `outbound|PORT|SUBSET|HOST` for every port of every service
a proxy may reach, one more per DestinationRule subset, each with its merged
traffic policy; and for a sidecar, `inbound|PORT||` per port of its own
instance, pointing at the application behind it.

Sidecars and gateways get Istio's auto mTLS (see mtls.py; proxyless gRPC
clients what of it gRPC understands, see proxyless.py): TLS to endpoints
with a sidecar, plaintext to others; `trafficPolicy.tls` mode ISTIO_MUTUAL
or DISABLE overrides it; SIMPLE and MUTUAL originate TLS with the files it
names, or a credentialName's Secret (served over SDS, translate/secrets.py).
Locality load balancing is weighted by locality where Istio turns it on
(locality.py); the priorities themselves are per caller, in EDS. Warmup and
PASSTHROUGH are not translated.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, outlier_detection_pb2
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from envoy.type.v3 import percent_pb2
from google.protobuf.wrappers_pb2 import UInt32Value, UInt64Value

from pilotfish.model import Instance, Proxy, ProxyType, Service, ServicePort, Snapshot
from pilotfish.objects import Obj
from pilotfish.translate import mtls, names, upstream_http
from pilotfish.translate.connect import translate_egress_clusters
from pilotfish.translate.listeners import _inbound_protocol
from pilotfish.translate.locality import locality_policy
from pilotfish.translate.protos import ads, duration, pack, socket_address
from pilotfish.translate.proxyless import apply_grpc_tls
from pilotfish.translate.sni_dnat import translate_sni_dnat_clusters
from pilotfish.translate.traffic_policy import cluster_policy

DEFAULT_CONNECT_TIMEOUT = "10s"  # Istio's mesh default connectTimeout
MAX_U32 = 2**32 - 1
DEFAULT_RING_SIZE = 1024
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_SIMPLE_LB = {
    "LEAST_REQUEST": Cluster.LEAST_REQUEST,
    "LEAST_CONN": Cluster.LEAST_REQUEST,
    "RANDOM": Cluster.RANDOM,
    "ROUND_ROBIN": Cluster.ROUND_ROBIN,
}


def translate_clusters(snapshot: Snapshot, proxy: Proxy) -> list[Cluster]:
    out = translate_outbound_clusters(snapshot, proxy)
    if proxy.type is ProxyType.SIDECAR:
        out += translate_inbound_clusters(snapshot, proxy)
    out += translate_sni_dnat_clusters(snapshot, proxy, out)  # gateways' AUTO_PASSTHROUGH
    return sorted(out, key=lambda c: c.name)


def translate_outbound_clusters(snapshot: Snapshot, proxy: Proxy) -> list[Cluster]:
    """The clusters of what the proxy may reach, sorted by name; they depend
    on the proxy only as its routes do, so proxies share them (scope.py)."""
    out = [
        cluster
        for service in snapshot.visible_services(proxy)
        for port in service.ports
        if port.protocol != "UDP"
        for cluster in translate_service_clusters(snapshot, proxy, service, port)
    ]
    if proxy.type is ProxyType.SIDECAR:  # where CONNECT to no service goes
        out += translate_egress_clusters()
    return sorted(out, key=lambda c: c.name)


def translate_service_clusters(
    snapshot: Snapshot, proxy: Proxy, service: Service, port: ServicePort
) -> list[Cluster]:
    rule = snapshot.destination_rule(proxy, service.hostname)
    subsets = [""] + [s.name for s in rule.subsets] if rule else [""]
    return [
        translate_outbound_cluster(
            snapshot,
            proxy,
            service,
            port,
            subset,
            cluster_policy(rule, subset, port.port),
        )
        for subset in subsets
    ]


def translate_outbound_cluster(
    snapshot: Snapshot,
    proxy: Proxy,
    service: Service,
    port: ServicePort,
    subset: str,
    policy: Obj,
) -> Cluster:
    name = names.outbound_cluster(port.port, subset, service.hostname)
    out = Cluster(name=name)
    if service.resolution in ("DNS", "DNS_ROUND_ROBIN") and proxy.type is not ProxyType.GRPC:
        # Istio resolves these in the proxy (STRICT_DNS) rather than sending addresses.
        out.type = Cluster.STRICT_DNS
        out.load_assignment.CopyFrom(_dns_assignment(name, snapshot, service, port.port))
    else:
        out.type = Cluster.EDS
        out.eds_cluster_config.service_name = name
        out.eds_cluster_config.eds_config.CopyFrom(ads())
    _apply_load_balancer(out, policy.get("loadBalancer") or {})
    if locality_policy(snapshot.mesh_config, policy).weighted:
        out.common_lb_config.locality_weighted_lb_config.SetInParent()
    if proxy.type is ProxyType.GRPC:
        _apply_grpc_circuit_breaker(out, policy.get("connectionPool") or {})
        apply_grpc_tls(out, snapshot, service, port.port, subset, policy.get("tls") or {})
        return out
    out.connect_timeout.CopyFrom(duration(DEFAULT_CONNECT_TIMEOUT))
    options = hpo.HttpProtocolOptions()
    upstream_http.set_port_protocol(options, port.protocol, proxy.type is ProxyType.SIDECAR)
    pool = policy.get("connectionPool") or {}
    # Even with no connectionPool: Istio gives every cluster maximal thresholds,
    # where Envoy's defaults (3 retries in flight) would fail requests under load.
    _apply_connection_pool(out, options, pool)
    if upstream_http.should_h2_upgrade(snapshot.mesh_config, port.protocol, pool):
        upstream_http.set_http2(options)
    if policy.get("outlierDetection") is not None:  # `{}` too: Envoy's defaults, as in Istio
        _apply_outlier_detection(out, policy["outlierDetection"])
    if options.ListFields():
        out.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))
    h2 = upstream_http.is_http2(options)
    _apply_tls(out, snapshot, service, port.port, subset, policy.get("tls") or {}, h2)
    return out


def _apply_tls(
    out: Cluster,
    snapshot: Snapshot,
    service: Service,
    port: int,
    subset: str,
    tls: Obj,
    h2: bool,
) -> None:
    """Auto mTLS, unless the DestinationRule's `tls` says otherwise; an
    HTTP/2 cluster offers HTTP/2 in ALPN, as Istio's do."""
    decision = mtls.outbound_tls(snapshot, service, port, subset, tls)
    if decision.mode is mtls.Outbound.ORIGINATE:
        origination = mtls.origination_tls(tls, service.hostname, mtls.H2_ONLY_ALPN if h2 else ())
        out.transport_socket.CopyFrom(mtls.transport_socket(origination))
        return
    if decision.mode is mtls.Outbound.PLAINTEXT:
        return
    alpn: tuple[str, ...] = mtls.OUTBOUND_H2_ALPN if h2 else mtls.OUTBOUND_ALPN
    context = mtls.upstream_tls(decision.sni, decision.sans, alpn)
    if decision.mode is mtls.Outbound.MUTUAL:
        out.transport_socket.CopyFrom(mtls.transport_socket(context))
    else:
        out.transport_socket_matches.extend(mtls.auto_mtls_matches(context))


def _dns_assignment(
    name: str, snapshot: Snapshot, service: Service, port: int
) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoints = [
        ec.LbEndpoint(endpoint=ec.Endpoint(address=socket_address(e.address, e.port)))
        for e in snapshot.endpoints(service, port)
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[ec.LocalityLbEndpoints(lb_endpoints=lb_endpoints)]
    )


def _apply_load_balancer(out: Cluster, lb: Obj) -> None:
    """Istio's applyLoadBalancer, except that an unset algorithm stays Envoy's
    (and gRPC's) ROUND_ROBIN rather than Istio's LEAST_REQUEST."""
    simple = str(lb.get("simple") or "")
    if simple in _SIMPLE_LB:
        out.lb_policy = _SIMPLE_LB[simple]
    hashed = lb.get("consistentHash")
    if not hashed:
        return
    if hashed.get("maglev") is not None:
        out.lb_policy = Cluster.MAGLEV
        if hashed["maglev"].get("tableSize"):
            out.maglev_lb_config.table_size.CopyFrom(
                UInt64Value(value=int(hashed["maglev"]["tableSize"]))
            )
        return
    out.lb_policy = Cluster.RING_HASH
    ring = hashed.get("ringHash")
    if ring is not None:
        if ring.get("minimumRingSize"):
            out.ring_hash_lb_config.minimum_ring_size.value = int(ring["minimumRingSize"])
        return
    size = int(hashed.get("minimumRingSize") or DEFAULT_RING_SIZE)
    out.ring_hash_lb_config.minimum_ring_size.value = size


def _apply_grpc_circuit_breaker(out: Cluster, pool: Obj) -> None:
    """gRPC honours max_requests only (gRFC A32), so that is all it gets."""
    limit = int((pool.get("http") or {}).get("http2MaxRequests") or 0)
    if limit > 0:
        out.circuit_breakers.thresholds.append(
            circuit_breaker_pb2.CircuitBreakers.Thresholds(max_requests=UInt32Value(value=limit))
        )


def _apply_connection_pool(out: Cluster, options: hpo.HttpProtocolOptions, pool: Obj) -> None:
    """connectionPool -> circuit breaker thresholds (Istio starts them all at
    the maximum, so only what the user limits is limited), connect timeout,
    and per-connection HTTP limits."""
    http, tcp = pool.get("http") or {}, pool.get("tcp") or {}
    limits = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=UInt32Value(value=int(tcp.get("maxConnections") or MAX_U32)),
        max_pending_requests=UInt32Value(value=int(http.get("http1MaxPendingRequests") or MAX_U32)),
        max_requests=UInt32Value(value=int(http.get("http2MaxRequests") or MAX_U32)),
        max_retries=UInt32Value(value=int(http.get("maxRetries") or MAX_U32)),
        track_remaining=True,
    )
    out.circuit_breakers.thresholds.append(limits)
    if tcp.get("connectTimeout"):
        out.connect_timeout.CopyFrom(duration(tcp["connectTimeout"]))
    _apply_keepalive(out, tcp.get("tcpKeepalive"))
    common = options.common_http_protocol_options
    idle = http.get("idleTimeout") or tcp.get("idleTimeout")
    if idle:
        common.idle_timeout.CopyFrom(duration(idle))
    if http.get("maxRequestsPerConnection"):
        common.max_requests_per_connection.value = int(http["maxRequestsPerConnection"])
    if tcp.get("maxConnectionDuration"):
        common.max_connection_duration.CopyFrom(duration(tcp["maxConnectionDuration"]))
    streams = int(http.get("maxConcurrentStreams") or 0)
    if streams and upstream_http.is_http2(options):
        h2 = options.explicit_http_config.http2_protocol_options
        h2.max_concurrent_streams.value = streams
    if http.get("useClientProtocol"):
        upstream_http.use_client_protocol(options)


def _apply_keepalive(out: Cluster, keepalive: Obj | None) -> None:
    if keepalive is None:
        return
    settings = out.upstream_connection_options.tcp_keepalive
    settings.SetInParent()
    if keepalive.get("probes"):
        settings.keepalive_probes.value = int(keepalive["probes"])
    if keepalive.get("time"):
        settings.keepalive_time.value = duration(keepalive["time"]).seconds
    if keepalive.get("interval"):
        settings.keepalive_interval.value = duration(keepalive["interval"]).seconds


def _apply_outlier_detection(out: Cluster, outlier: Obj) -> None:
    """Istio's applyOutlierDetection: consecutive-error ejection only (success
    rate off), enforced at 100% when configured; the panic threshold becomes
    minHealthPercent, 0 unless set, so a few bad hosts never spill traffic
    back onto themselves."""
    od = outlier_detection_pb2.OutlierDetection(enforcing_success_rate=UInt32Value(value=0))
    for field, consecutive, enforcing in (
        ("consecutive5xxErrors", "consecutive_5xx", "enforcing_consecutive_5xx"),
        (
            "consecutiveGatewayErrors",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
        ),
    ):
        if outlier.get(field) is not None:
            value = int(outlier[field])
            getattr(od, consecutive).value = value
            getattr(od, enforcing).value = 100 if value > 0 else 0
    if outlier.get("interval"):
        od.interval.CopyFrom(duration(outlier["interval"]))
    if outlier.get("baseEjectionTime"):
        od.base_ejection_time.CopyFrom(duration(outlier["baseEjectionTime"]))
    if int(outlier.get("maxEjectionPercent") or 0) > 0:
        od.max_ejection_percent.value = int(outlier["maxEjectionPercent"])
    if outlier.get("splitExternalLocalOriginErrors"):
        od.split_external_local_origin_errors = True
        local = int(outlier.get("consecutiveLocalOriginFailures") or 0)
        if local > 0:
            od.consecutive_local_origin_failure.value = local
            od.enforcing_consecutive_local_origin_failure.value = 100
        od.enforcing_local_origin_success_rate.value = 0
    out.outlier_detection.CopyFrom(od)
    panic = float(outlier.get("minHealthPercent") or 0)
    out.common_lb_config.healthy_panic_threshold.CopyFrom(percent_pb2.Percent(value=panic))


def translate_inbound_clusters(snapshot: Snapshot, proxy: Proxy) -> list[Cluster]:
    """`inbound|PORT||` for each port of the sidecar's own instances: a static
    cluster of one host, the application's local address."""
    out: dict[str, Cluster] = {}
    for instance in snapshot.own_instances(proxy):
        for port_name, port in sorted(instance.ports.items()):
            name = names.inbound_cluster(port)
            app = socket_address(instance.app_address, instance.app_port(port_name))
            out[name] = cluster = Cluster(
                name=name,
                metadata=_inbound_metadata(snapshot, instance, port),
                type=Cluster.STATIC,
                connect_timeout=duration(DEFAULT_CONNECT_TIMEOUT),
                load_assignment=endpoint_pb2.ClusterLoadAssignment(
                    cluster_name=name,
                    endpoints=[
                        ec.LocalityLbEndpoints(
                            lb_endpoints=[ec.LbEndpoint(endpoint=ec.Endpoint(address=app))]
                        )
                    ],
                ),
            )
            if _inbound_protocol(snapshot, instance, port_name, port).is_http2:
                _inbound_http2(cluster)
    return list(out.values())


def _inbound_http2(cluster: Cluster) -> None:
    """The app behind an HTTP/2 port (`grpc`, `http2`) gets HTTP/2 (h2c), as
    Istio's inbound clusters give it, whatever the caller spoke."""
    options = hpo.HttpProtocolOptions()
    upstream_http.set_http2(options)
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(pack(options))


def _inbound_metadata(snapshot: Snapshot, instance: Instance, port: int) -> base_pb2.Metadata:
    """Istio's `istio.services` filter metadata: the services whose endpoints
    are this instance's port, so that the callee's sidecar can name the
    destination service in its metrics (the cluster name `inbound|PORT||`
    does not)."""
    served = [
        {"host": s.hostname, "name": s.hostname.split(".")[0], "namespace": s.namespace}
        for s in snapshot.services_at(instance.namespace, instance.address, port)
    ]
    out = base_pb2.Metadata()
    if served:
        out.filter_metadata["istio"].update({"services": served})
    return out
