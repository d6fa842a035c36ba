"""Golden metrics with Istio's names and labels, kept as plain counters.

Each direction of the proxy is a `Reporter` (outbound: `reporter="source"`,
inbound: `reporter="destination"`). Recording a request is one dict lookup on
a tuple of objects the shell already holds (the peer workload, the destination
service, the status, the flags) and a few integer additions; the label text is
built and escaped once, the first time a label set is seen; the Prometheus
text is built only when scraped.

Who is who comes from the same places Istio takes it: the proxy's own
workload from the bootstrap's node metadata (NAME, NAMESPACE, LABELS,
SERVICE_ACCOUNT, CLUSTER_ID, WORKLOAD_NAME), the destination service from the
cluster (its `istio` filter metadata, else its `outbound|port|subset|host`
name), the destination workload from the endpoint's `istio.workload` metadata,
and the peer of a request from Istio's `x-envoy-peer-metadata` header. What is
not known is "unknown", as in Istio.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from envoy.config.core.v3.base_pb2 import Metadata, Node
from google.protobuf import message, struct_pb2

from pilotfish.ca.identity import DEFAULT_TRUST_DOMAIN
from pilotfish.proxy import response_flags
from pilotfish.proxy.metric_overrides import (
    HTTP_METRICS,
    MetricOverride,
    MetricsConfig,
    RequestAttributes,
)

UNKNOWN = "unknown"
TRUST_DOMAIN = DEFAULT_TRUST_DOMAIN

# Istio sets no histogram_bucket_settings, so its histograms, bytes included,
# have Envoy's default buckets.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip
DURATION_BUCKETS_MS: Final = DEFAULT_BUCKETS
BYTES_BUCKETS: Final = DEFAULT_BUCKETS

# The metadata keys Istio's bootstrap writes on the node, and that its
# metadata exchange carries between proxies.
PEER_KEYS = (
    "NAME",
    "NAMESPACE",
    "LABELS",
    "SERVICE_ACCOUNT",
    "CLUSTER_ID",
    "WORKLOAD_NAME",
    "ISTIO_VERSION",
    "MESH_ID",
    "OWNER",
)
# Label sets per reporter before new peers and services report as unknown.
MAX_SERIES = 10_000
PEER_METADATA_HEADER = b"x-envoy-peer-metadata"
PEER_METADATA_ID_HEADER = b"x-envoy-peer-metadata-id"


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """One side of a request, as Istio's labels describe it."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN
    cluster: str = UNKNOWN
    service_account: str = ""
    trust_domain: str = TRUST_DOMAIN
    # Recording hashes these objects per request: pay for the hash once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(tuple(getattr(self, f) for f in _WORKLOAD_FIELDS)))

    def __hash__(self) -> int:
        return self._hash

    def label(self, name: str) -> str:
        """One of PEER_LABELS, for Telemetry tag overrides."""
        found = {
            "app": self.app,
            "version": self.version,
            "service.istio.io/canonical-name": self.canonical_service,
            "service.istio.io/canonical-revision": self.canonical_revision,
        }
        return found.get(name, UNKNOWN)

    @property
    def principal(self) -> str:
        if not self.service_account or self.namespace == UNKNOWN:
            return UNKNOWN
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @staticmethod
    def from_node(node: Node, trust_domain: str = TRUST_DOMAIN) -> WorkloadInfo:
        """The proxy's own workload, from a bootstrap node written as Istio does."""
        return WorkloadInfo.from_metadata(node.metadata, trust_domain)

    @staticmethod
    def from_metadata(meta: struct_pb2.Struct, trust_domain: str = TRUST_DOMAIN) -> WorkloadInfo:
        fields = meta.fields
        labels = metadata_labels(fields)
        workload = (
            metadata_text(fields, "WORKLOAD_NAME") or metadata_text(fields, "NAME") or UNKNOWN
        )
        app = labels.get("app") or labels.get("app.kubernetes.io/name") or UNKNOWN
        version = labels.get("version") or labels.get("app.kubernetes.io/version") or UNKNOWN
        return WorkloadInfo(
            workload=workload,
            namespace=metadata_text(fields, "NAMESPACE") or UNKNOWN,
            app=app,
            version=version,
            canonical_service=canonical_service(labels, workload),
            # Istio's "latest" is for a known workload without a version.
            canonical_revision=canonical_revision(labels) if workload != UNKNOWN else UNKNOWN,
            cluster=metadata_text(fields, "CLUSTER_ID") or UNKNOWN,
            service_account=metadata_text(fields, "SERVICE_ACCOUNT"),
            trust_domain=trust_domain,
        )

    @staticmethod
    def from_endpoint(metadata: Metadata) -> WorkloadInfo:
        """The workload behind an EDS endpoint: Istio writes it in the endpoint's
        `istio` filter metadata as "name;namespace;canonical name;canonical
        revision;cluster"."""
        istio = metadata.filter_metadata.get("istio")
        if istio is None or "workload" not in istio.fields:
            return UNKNOWN_WORKLOAD
        return workload_from_endpoint_text(istio.fields["workload"].string_value)


_WORKLOAD_FIELDS = (
    "workload",
    "namespace",
    "app",
    "version",
    "canonical_service",
    "canonical_revision",
    "cluster",
    "service_account",
    "trust_domain",
)
UNKNOWN_WORKLOAD: Final = WorkloadInfo()


@functools.lru_cache(maxsize=4096)
def workload_from_endpoint_text(text: str) -> WorkloadInfo:
    parts = [p or UNKNOWN for p in text.split(";")]
    parts += [UNKNOWN] * (5 - len(parts))
    name, namespace, service, revision, cluster = parts[:5]
    # Istio's stats take app and version from the canonical names here.
    return WorkloadInfo(name, namespace, service, revision, service, revision, cluster)


def canonical_service(labels: Mapping[str, str], workload: str) -> str:
    for key in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app"):
        if labels.get(key):
            return labels[key]
    return workload


def canonical_revision(labels: Mapping[str, str]) -> str:
    for key in ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"):
        if labels.get(key):
            return labels[key]
    return "latest"


def metadata_text(fields: Mapping[str, struct_pb2.Value], key: str) -> str:
    """A string field of node (or filter) metadata; "" when absent."""
    value = fields.get(key)
    return value.string_value if value is not None else ""


def metadata_labels(fields: Mapping[str, struct_pb2.Value]) -> dict[str, str]:
    """Node metadata's LABELS; {} when absent."""
    value = fields.get("LABELS")
    if value is None or value.WhichOneof("kind") != "struct_value":
        return {}
    return {k: v.string_value for k, v in value.struct_value.fields.items()}


# -- metadata exchange -----------------------------------------------------


def peer_metadata_headers(node: Node) -> list[tuple[bytes, bytes]]:
    """The headers that tell the other proxy who this one is: Istio's
    `x-envoy-peer-metadata` (a base64 protobuf Struct of the node metadata)
    and `x-envoy-peer-metadata-id` (the node id). Built once, at start."""
    exchanged = struct_pb2.Struct()
    for key in PEER_KEYS:
        if key in node.metadata.fields:
            exchanged.fields[key].CopyFrom(node.metadata.fields[key])
    encoded = base64.b64encode(exchanged.SerializeToString(deterministic=True))
    return [(PEER_METADATA_HEADER, encoded), (PEER_METADATA_ID_HEADER, node.id.encode())]


@functools.lru_cache(maxsize=1024)
def peer_from_header(value: bytes) -> WorkloadInfo:
    """The peer named by an `x-envoy-peer-metadata` value; cached, so the same
    peer is the same object and costs one decode per proxy lifetime."""
    try:
        meta = struct_pb2.Struct.FromString(base64.b64decode(value, validate=True))
    except (binascii.Error, message.DecodeError, ValueError):
        return UNKNOWN_WORKLOAD
    return WorkloadInfo.from_metadata(meta)


# -- destination service ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """The destination service of a request: `destination_service` (its host),
    `destination_service_name` and `destination_service_namespace`."""

    host: str = UNKNOWN
    name: str = UNKNOWN
    namespace: str = UNKNOWN
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.host, self.name, self.namespace)))

    def __hash__(self) -> int:
        return self._hash

    @staticmethod
    def from_cluster(name: str, metadata: Metadata | None = None) -> ServiceInfo:
        """From a Cluster resource: Istio's `istio.services` filter metadata when
        it names one service, else the host in an `outbound|port|subset|host`
        name, else the cluster's name itself (a hand-written bootstrap)."""
        if metadata is not None:
            found = _service_from_metadata(metadata)
            if found is not None:
                return found
        return service_from_cluster_name(name)


UNKNOWN_SERVICE: Final = ServiceInfo()


@functools.lru_cache(maxsize=4096)
def service_from_host(host: str) -> ServiceInfo:
    """`reviews.default.svc.cluster.local` -> name reviews, namespace default;
    a host outside the cluster domain is its own name, as in Istio."""
    host = host.strip().lower()
    if not host:
        return UNKNOWN_SERVICE
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return ServiceInfo(host, parts[0], parts[1])
    return ServiceInfo(host, parts[0] if len(parts) == 1 else host, UNKNOWN)


@functools.lru_cache(maxsize=4096)
def service_from_cluster_name(name: str) -> ServiceInfo:
    parts = name.split("|")
    if len(parts) == 4 and parts[0] in ("outbound", "inbound", "inbound-vip"):
        return service_from_host(parts[3])
    return service_from_host(name)


@functools.lru_cache(maxsize=4096)
def service_from_authority(authority: str) -> ServiceInfo:
    """The inbound side's fallback, as Istio's: the Host header, port removed."""
    host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    return service_from_host(host)


def _service_from_metadata(metadata: Metadata) -> ServiceInfo | None:
    istio = metadata.filter_metadata.get("istio")
    if istio is None or "services" not in istio.fields:
        return None
    services = istio.fields["services"].list_value.values
    if len(services) != 1:
        return None
    entry = services[0].struct_value.fields
    host = metadata_text(entry, "host")
    if not host:
        return None
    base = service_from_host(host)
    name = metadata_text(entry, "name") or base.name
    return ServiceInfo(base.host, name, metadata_text(entry, "namespace") or base.namespace)


# -- series and reporters --------------------------------------------------


def bucket(value: float) -> int:
    """The histogram bucket of `value` in every histogram (all have the default
    bounds): `bisect_left(DEFAULT_BUCKETS, value)`, the first bound >= value,
    the last index +Inf. Written out as comparisons with the bounds as
    literals because, compiled, each is a C comparison of doubles (a few
    instructions): `bisect.bisect_left` cost about 1,000 instructions a call
    (a generic call, an object comparison per step), and a binary search
    over the bounds' tuple about 350 (an item read and an unboxing per
    step), three a request. Most values of a request are small (a short
    duration, a small body): they are met first. _check_bucket below holds
    these to DEFAULT_BUCKETS."""
    if value <= 0.5:
        return 0
    if value <= 1.0:
        return 1
    if value <= 5.0:
        return 2
    if value <= 10.0:
        return 3
    if value <= 25.0:
        return 4
    if value <= 50.0:
        return 5
    if value <= 100.0:
        return 6
    if value <= 250.0:
        return 7
    if value <= 500.0:
        return 8
    if value <= 1000.0:
        return 9
    if value <= 2500.0:
        return 10
    if value <= 5000.0:
        return 11
    if value <= 10000.0:
        return 12
    return _large_bucket(value)


def _large_bucket(value: float) -> int:
    """bucket() past 10 s or 10 kB."""
    if value <= 30000.0:
        return 13
    if value <= 60000.0:
        return 14
    if value <= 300000.0:
        return 15
    if value <= 600000.0:
        return 16
    if value <= 1800000.0:
        return 17
    if value <= 3600000.0:
        return 18
    return 19


def _check_bucket() -> None:
    """bucket()'s literals are DEFAULT_BUCKETS: each bound in its own bucket,
    just above it in the next (checked at import: a mismatch is a bug here)."""
    for i, bound in enumerate(DEFAULT_BUCKETS):
        if bucket(bound) != i or bucket(bound * 1.000001) != i + 1:
            raise AssertionError(f"telemetry.bucket disagrees with DEFAULT_BUCKETS at {bound}")


_check_bucket()


class HttpSeries:
    """The counters of one label set: istio_requests_total and the three
    histograms, as bucket counts (not cumulative; summed at scrape)."""

    __slots__ = (
        "duration",
        "duration_sum",
        "labels",
        "request_bytes",
        "request_bytes_sum",
        "requests",
        "response_bytes",
        "response_bytes_sum",
    )

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.requests = 0
        self.duration = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.duration_sum = 0.0
        self.request_bytes = [0] * (len(BYTES_BUCKETS) + 1)
        self.request_bytes_sum = 0
        self.response_bytes = [0] * (len(BYTES_BUCKETS) + 1)
        self.response_bytes_sum = 0

    def __repr__(self) -> str:
        return f"<HttpSeries requests={self.requests} {{{self.labels}}}>"


class TcpSeries:
    """Istio's TCP counters for one label set; the shell adds to the fields."""

    __slots__ = ("closed", "labels", "opened", "received_bytes", "sent_bytes")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.opened = 0
        self.closed = 0
        self.sent_bytes = 0
        self.received_bytes = 0

    def __repr__(self) -> str:
        return f"<TcpSeries opened={self.opened} closed={self.closed} {{{self.labels}}}>"


HttpKey = tuple[WorkloadInfo, ServiceInfo, int, str, str, str, bool]
# Under overrides each metric has its own series (None: dropped), in HTTP_METRICS order.
OverriddenSeries = tuple[HttpSeries | None, ...]
TcpKey = tuple[WorkloadInfo, ServiceInfo, str, bool]


class Reporter:
    """One side's metrics: `reporter="source"` for outbound traffic (the peer
    is the destination workload), `"destination"` for inbound (the peer is the
    source workload)."""

    def __init__(self, kind: str, own: WorkloadInfo, max_series: int = MAX_SERIES) -> None:
        if kind not in ("source", "destination"):
            raise ValueError(f"reporter is 'source' or 'destination', not {kind!r}")
        self.kind, self.own, self.max_series = kind, own, max_series
        self.http: dict[HttpKey, HttpSeries] = {}
        self.tcp: dict[TcpKey, TcpSeries] = {}
        # Equal label sets reached through unequal keys share one series.
        self._http_by_labels: dict[str, HttpSeries] = {}
        self._tcp_by_labels: dict[str, TcpSeries] = {}
        # Requests recorded under Telemetry overrides (metric_overrides.py):
        # their series share _http_by_labels, so a label set is one series
        # whichever way it was reached (an override added or removed live).
        self._overridden: dict[tuple[object, ...], OverriddenSeries] = {}
        # The last label set recorded, part by part, and its series: a run of
        # requests to one service with one outcome (the common case) skips
        # building and hashing the key (about 900 instructions a request).
        self._last_peer: WorkloadInfo | None = None
        self._last_service: ServiceInfo | None = None
        self._last_code = -1
        self._last_flags = ""
        self._last_protocol = ""
        self._last_grpc = ""
        self._last_mtls = False
        self._last_series: HttpSeries | None = None

    def __repr__(self) -> str:
        return f"<Reporter {self.kind} http_series={len(self._http_by_labels)}>"

    def record(
        self,
        peer: WorkloadInfo,
        service: ServiceInfo,
        code: int,
        flags: str,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        protocol: str = "http",
        grpc_status: str = "",
        mtls: bool = False,
    ) -> None:
        """One finished request. `flags` are Envoy's short codes joined by ","
        ("" for none); `code` 0 means no response was sent."""
        series = self._last_series
        if (
            series is None
            or peer is not self._last_peer
            or service is not self._last_service
            or code != self._last_code
            or flags != self._last_flags
            or protocol != self._last_protocol
            or grpc_status != self._last_grpc
            or mtls != self._last_mtls
        ):
            series = self._series((peer, service, code, flags, protocol, grpc_status, mtls))
        series.requests += 1
        # `counts[i] = counts[i] + 1`, not `+=`: compiled, an augmented store
        # into a list item is a generic in-place add (~130 instructions).
        counts, i = series.duration, bucket(duration_ms)
        counts[i] = counts[i] + 1
        series.duration_sum += duration_ms
        counts, i = series.request_bytes, bucket(request_bytes)
        counts[i] = counts[i] + 1
        series.request_bytes_sum += request_bytes
        counts, i = series.response_bytes, bucket(response_bytes)
        counts[i] = counts[i] + 1
        series.response_bytes_sum += response_bytes

    def _series(self, key: HttpKey) -> HttpSeries:
        """The series of a label set, remembered as the last one recorded."""
        series = self.http.get(key)
        if series is None:
            series = self._new_http(key)
        (
            self._last_peer,
            self._last_service,
            self._last_code,
            self._last_flags,
            self._last_protocol,
            self._last_grpc,
            self._last_mtls,
        ) = key
        self._last_series = series
        return series

    def record_overridden(
        self,
        config: MetricsConfig,
        request: RequestAttributes,
        key: HttpKey,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """One finished request on a listener with metric overrides; `key` as
        record() builds it. Only such listeners pay for evaluating them."""
        values = config.values(request)
        full = (*key, config, *values.values())
        found = self._overridden.get(full)
        if found is None:
            found = self._new_overridden(full, config, key, values)
        count, duration, sent, received = found
        if count is not None:
            count.requests += 1
        if duration is not None:
            duration.duration[bucket(duration_ms)] += 1
            duration.duration_sum += duration_ms
        if sent is not None:
            sent.request_bytes[bucket(request_bytes)] += 1
            sent.request_bytes_sum += request_bytes
        if received is not None:
            received.response_bytes[bucket(response_bytes)] += 1
            received.response_bytes_sum += response_bytes

    def _new_overridden(
        self,
        full: tuple[object, ...],
        config: MetricsConfig,
        key: HttpKey,
        values: Mapping[tuple[str, str], str],
    ) -> OverriddenSeries:
        if len(self._overridden) >= 4 * self.max_series:
            self._overridden.clear()  # only a cache, as self.http
        peer, service, code, flags, protocol, grpc_status, mtls = key
        if len(self._http_by_labels) >= self.max_series:
            peer, service = UNKNOWN_WORKLOAD, UNKNOWN_SERVICE
            values = dict.fromkeys(values, UNKNOWN)
        pairs = self.label_pairs(peer, service, protocol, (code, grpc_status), flags, mtls)
        found: list[HttpSeries | None] = []
        for metric in HTTP_METRICS:
            override = config.metrics.get(metric, _NO_OVERRIDE)
            if override.drop:
                found.append(None)
                continue
            text = format_labels(override.apply(pairs, values))
            found.append(self._http_by_labels.setdefault(text, HttpSeries(text)))
        self._overridden[full] = series = tuple(found)
        return series

    def tcp_series(
        self, peer: WorkloadInfo, service: ServiceInfo, flags: str = "", mtls: bool = False
    ) -> TcpSeries:
        """The TCP counters of a connection's label set; look it up when the
        connection opens and add to it as bytes flow."""
        key = (peer, service, flags, mtls)
        series = self.tcp.get(key)
        if series is None:
            if len(self.tcp) >= 4 * self.max_series:
                self.tcp.clear()  # only a cache: the series stay in _tcp_by_labels
            if len(self._tcp_by_labels) >= self.max_series:
                peer, service = UNKNOWN_WORKLOAD, UNKNOWN_SERVICE
            text = format_labels(self.label_pairs(peer, service, "tcp", None, flags, mtls))
            series = self._tcp_by_labels.setdefault(text, TcpSeries(text))
            self.tcp[key] = series
        return series

    def _new_http(self, key: HttpKey) -> HttpSeries:
        if len(self.http) >= 4 * self.max_series:
            self.http.clear()  # only a cache: the series stay in _http_by_labels
        peer, service, code, flags, protocol, grpc_status, mtls = key
        if len(self._http_by_labels) >= self.max_series:
            # Past the cap (a client inventing Host headers, say), new label
            # sets lose their peer and service rather than grow memory.
            peer, service = UNKNOWN_WORKLOAD, UNKNOWN_SERVICE
        pairs = self.label_pairs(peer, service, protocol, (code, grpc_status), flags, mtls)
        text = format_labels(pairs)
        series = self._http_by_labels.setdefault(text, HttpSeries(text))
        self.http[key] = series
        return series

    def label_pairs(
        self,
        peer: WorkloadInfo,
        service: ServiceInfo,
        protocol: str,
        response: tuple[int, str] | None,
        flags: str,
        mtls: bool,
    ) -> list[tuple[str, str]]:
        """A series' labels in Istio's order; TCP series (`response` None)
        have no response_code nor grpc_response_status."""
        outbound = self.kind == "source"
        src, dst = (self.own, peer) if outbound else (peer, self.own)
        # A principal comes from a peer certificate, so it is known only under mTLS.
        src_principal, dst_principal = (src.principal, dst.principal) if mtls else (UNKNOWN,) * 2
        pairs = [
            ("reporter", self.kind),
            ("source_workload", src.workload),
            ("source_canonical_service", src.canonical_service),
            ("source_canonical_revision", src.canonical_revision),
            ("source_workload_namespace", src.namespace),
            ("source_principal", src_principal),
            ("source_app", src.app),
            ("source_version", src.version),
            ("source_cluster", src.cluster),
            ("destination_workload", dst.workload),
            ("destination_workload_namespace", dst.namespace),
            ("destination_principal", dst_principal),
            ("destination_app", dst.app),
            ("destination_version", dst.version),
            ("destination_service", service.host),
            ("destination_canonical_service", dst.canonical_service),
            ("destination_canonical_revision", dst.canonical_revision),
            ("destination_service_name", service.name),
            ("destination_service_namespace", service.namespace),
            ("destination_cluster", dst.cluster),
            ("request_protocol", protocol),
        ]
        if response is not None:
            pairs += [("response_code", str(response[0])), ("grpc_response_status", response[1])]
        # Istio: the source side cannot know the server's policy.
        security = UNKNOWN if outbound else ("mutual_tls" if mtls else "none")
        pairs += [
            ("response_flags", response_flags.label(flags)),
            ("connection_security_policy", security),
        ]
        return pairs

    @property
    def http_series(self) -> list[HttpSeries]:
        return list(self._http_by_labels.values())

    @property
    def tcp_series_list(self) -> list[TcpSeries]:
        return list(self._tcp_by_labels.values())


class Telemetry:
    """Both reporters of one proxy, and their exposition."""

    def __init__(self, own: WorkloadInfo = UNKNOWN_WORKLOAD, max_series: int = MAX_SERIES) -> None:
        self.own = own
        self.outbound = Reporter("source", own, max_series)
        self.inbound = Reporter("destination", own, max_series)

    def __repr__(self) -> str:
        return f"<Telemetry {self.own.workload}.{self.own.namespace}>"

    def prometheus(self) -> bytes:
        """The istio_* families in Prometheus text format 0.0.4."""
        return "".join(self._families()).encode()

    def _families(self) -> Iterable[str]:
        reporters = (self.outbound, self.inbound)
        http = [s for r in reporters for s in r.http_series]
        # Under overrides a series may hold some metrics only (the others
        # dropped, or labelled otherwise): each family shows what it observed.
        count = [s for s in http if s.requests]
        duration, sent, received = (
            [s for s in http if any(getattr(s, f))]
            for f in ("duration", "request_bytes", "response_bytes")
        )
        tcp = [s for r in reporters for s in r.tcp_series_list]
        yield from counter(
            "istio_requests_total",
            "Requests handled by the proxy.",
            [(s.labels, s.requests) for s in count],
        )
        yield from histogram(
            "istio_request_duration_milliseconds",
            "Request duration.",
            DURATION_BUCKETS_MS,
            [(s.labels, s.duration, s.duration_sum) for s in duration],
        )
        yield from histogram(
            "istio_request_bytes",
            "HTTP request body sizes.",
            BYTES_BUCKETS,
            [(s.labels, s.request_bytes, s.request_bytes_sum) for s in sent],
        )
        yield from histogram(
            "istio_response_bytes",
            "HTTP response body sizes.",
            BYTES_BUCKETS,
            [(s.labels, s.response_bytes, s.response_bytes_sum) for s in received],
        )
        for name, attribute, text in TCP_FAMILIES:
            samples = [(s.labels, getattr(s, attribute)) for s in tcp]
            yield from counter(name, text, samples)


_NO_OVERRIDE = MetricOverride()
TCP_FAMILIES = (
    ("istio_tcp_connections_opened_total", "opened", "TCP connections opened."),
    ("istio_tcp_connections_closed_total", "closed", "TCP connections closed."),
    ("istio_tcp_sent_bytes_total", "sent_bytes", "Bytes sent to the downstream on TCP."),
    ("istio_tcp_received_bytes_total", "received_bytes", "Bytes received on TCP."),
)


# -- Prometheus text format 0.0.4 ------------------------------------------


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs)


def format_number(value: int | float) -> str:
    # `int | float`, not `float`: compiled by mypyc, a float parameter
    # turns an int into a float, and a counter would print as "3.0".
    if isinstance(value, int):
        return str(value)
    return repr(value) if value == value else "NaN"


def header(name: str, kind: str, text: str) -> str:
    return (
        f"# HELP {name} {escape_help(text)}\n# TYPE {name} {kind}\n"
        if text
        else (f"# TYPE {name} {kind}\n")
    )


def counter(
    name: str, text: str, samples: list[tuple[str, int]], kind: str = "counter"
) -> Iterable[str]:
    """One family of (label text, value); nothing at all when it has no sample."""
    if not samples:
        return
    yield header(name, kind, text)
    for labels, value in samples:
        yield (
            f"{name}{{{labels}}} {format_number(value)}\n"
            if labels
            else (f"{name} {format_number(value)}\n")
        )


def histogram(
    name: str, text: str, bounds: tuple[float, ...], samples: list[tuple[str, list[int], float]]
) -> Iterable[str]:
    if not samples:
        return
    yield header(name, "histogram", text)
    les = [*(f"{b:g}" for b in bounds), "+Inf"]
    for labels, counts, total in samples:
        sep = "," if labels else ""
        cumulative = 0
        for le, count in zip(les, counts, strict=True):
            cumulative += count
            yield f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}\n'
        yield f"{name}_sum{{{labels}}} {format_number(total)}\n"
        yield f"{name}_count{{{labels}}} {cumulative}\n"
