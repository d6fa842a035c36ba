"""One span per hop, built from the finished exchange's access record, with
the tags Envoy's connection manager and Istio's bootstrap put on it; and the
OTLP messages (the OpenTelemetry protocol's own classes) that carry them.

Kind follows Envoy's: an inbound listener's span is SERVER (Envoy's
"ingress" operation), an outbound or gateway listener's is CLIENT ("egress").
The name is the route's decorator operation, else Istio's `HOST:PORT/*`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from pilotfish.proxy.accesslog import AccessRecord
from pilotfish.proxy.protocol.http1 import Headers, get_header
from pilotfish.proxy.telemetry import UNKNOWN, WorkloadInfo
from pilotfish.proxy.tracing.config import TracingConfig
from pilotfish.proxy.tracing.propagation import SpanContext

SCOPE = InstrumentationScope(name="pilotfish")


@dataclass(frozen=True, slots=True)
class Hop:
    """Where the span was made: the proxy, and which side of the request."""

    own: WorkloadInfo
    node_id: str
    inbound: bool
    mesh_id: str = ""


def operation_name(operation: str, authority: str, inbound_port: int) -> str:
    """The route's decorator operation, else `HOST:PORT/*` from the request's
    authority (the listener's port inbound, 80 when the authority has none)."""
    if operation:
        return operation
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit():
        host, port = authority, str(inbound_port or 80)
    return f"{host or '-'}:{port}/*"


def build_span(
    ctx: SpanContext,
    record: AccessRecord,
    elapsed: float,
    hop: Hop,
    name: str,
    tracing: TracingConfig,
    headers: Headers,
) -> Span:
    start = int(record.start_time * 1e9)
    attributes = [*_proxy_tags(record, hop, tracing), *_custom_tags(tracing, headers)]
    error = record.response_code >= 500 or record.response_code == 0
    if error:
        attributes.append(("error", "true"))
    return Span(
        trace_id=ctx.trace_id,
        span_id=ctx.span_id,
        parent_span_id=ctx.parent_id,
        trace_state=ctx.tracestate.decode("latin-1"),
        name=name,
        kind=Span.SPAN_KIND_SERVER if hop.inbound else Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start,
        end_time_unix_nano=start + int(elapsed * 1e9),
        attributes=[_kv(k, v) for k, v in attributes],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def _proxy_tags(
    record: AccessRecord, hop: Hop, tracing: TracingConfig
) -> Iterable[tuple[str, str]]:
    own = hop.own
    path = (record.path or "")[: tracing.max_path_tag_length]
    yield "node_id", hop.node_id
    yield "component", "proxy"
    yield "guid:x-request-id", record.request_id or ""
    yield "http.url", f"http://{record.authority or ''}{path}"
    yield "http.method", record.method or ""
    yield "http.protocol", record.protocol or ""
    yield "downstream_cluster", "-"
    yield "user_agent", record.user_agent or "-"
    yield "peer.address", _host_of(record.downstream_remote_address or "")
    yield "request_size", str(record.bytes_received)
    yield "response_size", str(record.bytes_sent)
    yield "http.status_code", str(record.response_code)
    yield "response_flags", record.response_flags or "-"
    yield "upstream_cluster", record.upstream_cluster or "-"
    yield "upstream_cluster.name", record.upstream_cluster or "-"
    yield "istio.canonical_service", own.canonical_service
    yield "istio.canonical_revision", own.canonical_revision
    yield "istio.namespace", own.namespace
    yield "istio.cluster_id", own.cluster
    if hop.mesh_id:
        yield "istio.mesh_id", hop.mesh_id


def _custom_tags(tracing: TracingConfig, headers: Headers) -> Iterable[tuple[str, str]]:
    for tag in tracing.custom_tags:
        if tag.value is not None:
            yield tag.tag, tag.value
            continue
        value = get_header(headers, tag.header)
        if value is not None:
            yield tag.tag, value.decode("latin-1")
        elif tag.default:
            yield tag.tag, tag.default


def _host_of(address: str) -> str:
    host, sep, port = address.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() else address


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def service_name(configured: str, own: WorkloadInfo) -> str:
    """The provider's service_name, else Istio's `CANONICAL_SERVICE.NAMESPACE`."""
    if configured:
        return configured
    if own.canonical_service == UNKNOWN:
        return "pilotfish-proxy"
    return f"{own.canonical_service}.{own.namespace}"


def export_request(service: str, spans: Sequence[Span]) -> ExportTraceServiceRequest:
    resource = Resource(attributes=[_kv("service.name", service)])
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=resource, scope_spans=[ScopeSpans(scope=SCOPE, spans=spans)])
        ]
    )
