"""Spans made and exported by the OpenTelemetry Python SDK, as an instrumented
application (or a sidecar) sends them: one trace across several services."""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

# A Bookinfo page load: (service, operation, kind, parent index or None)
BOOKINFO_HOPS = [
    (
        "istio-ingressgateway.istio-system",
        "productpage.default.svc.cluster.local:9080/productpage",
        SpanKind.CLIENT,
        None,
    ),
    (
        "productpage.default",
        "productpage.default.svc.cluster.local:9080/productpage",
        SpanKind.SERVER,
        0,
    ),
    ("productpage.default", "details.default.svc.cluster.local:9080/*", SpanKind.CLIENT, 1),
    ("details.default", "details.default.svc.cluster.local:9080/*", SpanKind.SERVER, 2),
    ("productpage.default", "reviews.default.svc.cluster.local:9080/*", SpanKind.CLIENT, 1),
    ("reviews.default", "reviews.default.svc.cluster.local:9080/*", SpanKind.SERVER, 4),
    ("reviews.default", "ratings.default.svc.cluster.local:9080/*", SpanKind.CLIENT, 5),
    ("ratings.default", "ratings.default.svc.cluster.local:9080/*", SpanKind.SERVER, 6),
]


@dataclass
class Exported:
    trace_id: str  # 32 hex digits
    span_ids: list[str]  # in BOOKINFO_HOPS' order


def export_trace(
    endpoint: str,
    *,
    headers: dict[str, str] | None = None,
    error_at: int | None = None,
    gzip: bool = False,
    hops: list[tuple[str, str, SpanKind, int | None]] = BOOKINFO_HOPS,
) -> Exported:
    """One trace through `hops`, each service with its own SDK TracerProvider
    exporting to `endpoint` (…/v1/traces); the span at `error_at` fails."""
    providers: dict[str, TracerProvider] = {}
    for service, *_ in hops:
        if service not in providers:
            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            exporter = OTLPSpanExporter(
                endpoint=endpoint,
                headers=headers,
                compression=Compression.Gzip if gzip else Compression.NoCompression,
                timeout=10,
            )
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            providers[service] = provider
    spans: list[trace.Span] = []
    for index, (service, operation, kind, parent) in enumerate(hops):
        tracer = providers[service].get_tracer("pilotfish.tests")
        context = trace.set_span_in_context(spans[parent]) if parent is not None else None
        span = tracer.start_span(operation, context=context, kind=kind)
        span.set_attribute("istio.canonical_service", service.split(".")[0])
        span.set_attribute("http.method", "GET")
        span.set_attribute("http.status_code", 500 if index == error_at else 200)
        if index == error_at:
            span.set_status(Status(StatusCode.ERROR, "upstream failed"))
        spans.append(span)
        time.sleep(0.002)
    for span in reversed(spans):  # children end before their parents
        time.sleep(0.001)
        span.end()
    for provider in providers.values():
        provider.shutdown()
    context = spans[0].get_span_context()
    return Exported(
        f"{context.trace_id:032x}", [f"{s.get_span_context().span_id:016x}" for s in spans]
    )
