"""Tracing through real proxies: two hops (an outbound proxy, then an inbound
one in front of the app) export spans over OTLP/HTTP to a collector of the
test's, which decodes them with the OpenTelemetry protocol's own classes."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest
from harness import (
    Proxy,
    curl,
    curl_many,
    free_port,
    listener,
    route,
    static_cluster,
    vhost,
    wait_for,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from otlp_receiver import OtlpReceiver, Received, blackhole

OTEL_CONFIG = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
CALLER = {
    "MESH_ID": "cluster.local",
    "NAME": "productpage-v1-1",
    "WORKLOAD_NAME": "productpage-v1",
    "NAMESPACE": "default",
    "LABELS": {"app": "productpage", "version": "v1"},
}
CALLEE = {
    "NAME": "reviews-v1-1",
    "WORKLOAD_NAME": "reviews-v1",
    "NAMESPACE": "default",
    "LABELS": {"app": "reviews", "version": "v1"},
}
REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"
INBOUND = "inbound|9080||"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def tracing(url: str, percent: float = 100.0, **otel: Any) -> dict[str, Any]:
    return {
        "random_sampling": {"value": percent},
        "custom_tags": [
            {"tag": "team", "literal": {"value": "bookinfo"}},
            {"tag": "user", "request_header": {"name": "x-user", "default_value": "none"}},
        ],
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": OTEL_CONFIG,
                "http_service": {"http_uri": {"uri": url, "cluster": "otel", "timeout": "2s"}},
                **otel,
            },
        },
    }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    found = OtlpReceiver().start()
    yield found
    found.stop()


def two_hops(
    start_proxy,
    app_port: int,
    url: str,
    percent: float = 100.0,
    collector_port: int | None = None,
    **otel: Any,
) -> tuple[int, Proxy]:
    """An inbound proxy in front of the app, an outbound proxy calling it;
    the outbound proxy's port, and the outbound proxy. `collector_port`: the
    proxies have a cluster `otel` with that one endpoint."""
    inbound_port, outbound_port = free_port(), free_port()
    otel_cluster = [static_cluster("otel", [collector_port])] if collector_port else []
    start_proxy(
        [
            listener(
                "inbound",
                inbound_port,
                [vhost("in", ["*"], [route(INBOUND)])],
                inbound=True,
                tracing=tracing(url, percent, **otel),
            )
        ],
        [static_cluster(INBOUND, [app_port]), *otel_cluster],
        node_metadata=CALLEE,
    )
    caller = start_proxy(
        [
            listener(
                "outbound",
                outbound_port,
                [vhost("reviews", ["*"], [route(REVIEWS)])],
                outbound=True,
                tracing=tracing(url, percent, **otel),
            )
        ],
        [static_cluster(REVIEWS, [inbound_port]), *otel_cluster],
        node_metadata=CALLER,
    )
    return outbound_port, caller


def by_kind(spans: list[Received], kind: int) -> list[Received]:
    return [s for s in spans if s.span.kind == kind]


def test_two_hops_one_trace(start_proxy, make_backend, receiver) -> None:
    app = make_backend("reviews")
    port, _ = two_hops(start_proxy, app.port, receiver.url)
    answer = curl("http://reviews:9080/echo", proxy=port, headers={"x-user": "jason"})
    assert answer.status == 200
    assert wait_for(lambda: len(receiver.received()) >= 2, timeout=10)
    spans = receiver.received()
    (client,) = by_kind(spans, 3)  # SPAN_KIND_CLIENT
    (server,) = by_kind(spans, 2)  # SPAN_KIND_SERVER
    assert client.span.trace_id == server.span.trace_id
    assert client.span.parent_span_id == b""  # the trace starts at the first proxy
    assert server.span.parent_span_id == client.span.span_id
    # The app sees the inbound proxy's span as its parent, in both formats.
    seen = app.requests[-1].headers
    trace, parent = client.span.trace_id.hex(), server.span.span_id.hex()
    assert seen["traceparent"] == f"00-{trace}-{parent}-01"
    assert (seen["x-b3-traceid"], seen["x-b3-spanid"]) == (trace, parent)
    assert seen["x-b3-parentspanid"] == client.span.span_id.hex()
    assert seen["x-b3-sampled"] == "1"
    assert client.service == "productpage.default" and server.service == "reviews.default"
    assert client.span.name == "reviews:9080/*"
    assert client.attr("upstream_cluster") == REVIEWS
    assert server.attr("upstream_cluster") == INBOUND
    for span in (client, server):
        assert span.attr("http.method") == "GET"
        assert span.attr("http.url") == "http://reviews:9080/echo"
        assert span.attr("http.status_code") == "200"
        assert span.attr("response_flags") == "-"
        assert span.attr("component") == "proxy"
        assert span.attr("guid:x-request-id") == seen["x-request-id"]
        assert span.attr("team") == "bookinfo" and span.attr("user") == "jason"
        assert span.attr("istio.namespace") == "default"
        assert span.span.end_time_unix_nano >= span.span.start_time_unix_nano > 0
    assert client.attr("istio.mesh_id") == "cluster.local"
    assert server.attr("istio.mesh_id") is None  # its node metadata has no MESH_ID
    assert client.attr("istio.canonical_service") == "productpage"
    assert server.attr("istio.canonical_service") == "reviews"
    assert str(client.attr("node_id")).startswith("sidecar~")
    assert receiver.content_types[0] == "application/x-protobuf"


def test_incoming_context_is_continued(start_proxy, make_backend, receiver) -> None:
    app = make_backend("reviews")
    port, _ = two_hops(start_proxy, app.port, receiver.url, percent=0.0)
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    assert curl("http://reviews:9080/echo", proxy=port, headers=headers).status == 200
    assert wait_for(lambda: len(receiver.received()) >= 2, timeout=10)
    spans = receiver.received()
    (client,) = by_kind(spans, 3)
    assert client.span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert client.span.parent_span_id.hex() == "b7ad6b7169203331"
    assert client.span.trace_state == "vendor=abc"
    assert app.requests[-1].headers["tracestate"] == "vendor=abc"


def test_unsampled_propagates_but_reports_nothing(start_proxy, make_backend, receiver) -> None:
    """0% here, and an incoming `-00` flag: the trace is carried, not reported."""
    app = make_backend("reviews")
    port, caller = two_hops(start_proxy, app.port, receiver.url, percent=0.0)
    assert curl("http://reviews:9080/echo", proxy=port).status == 200
    unsampled = TRACEPARENT[:-2] + "00"
    assert (
        curl("http://reviews:9080/echo", proxy=port, headers={"traceparent": unsampled}).status
        == 200
    )
    first, second = (r.headers for r in app.requests[-2:])
    assert first["traceparent"].endswith("-00") and first["x-b3-sampled"] == "0"
    assert second["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert second["traceparent"].endswith("-00")
    time.sleep(6)  # longer than the exporter's flush interval
    assert receiver.received() == []
    assert "tracing.opentelemetry.spans_sent: 0" in caller.admin_get("/stats")[1]


def test_b3_in_and_out(start_proxy, make_backend, receiver) -> None:
    """Also: the collector is reached through the provider's cluster, as Envoy
    does, its URI's host name resolving nowhere."""
    app = make_backend("reviews")
    url = "http://otel-collector.invalid:4318/v1/traces"
    port, _ = two_hops(start_proxy, app.port, url, percent=0.0, collector_port=receiver.port)
    single = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
    assert curl("http://reviews:9080/echo", proxy=port, headers={"b3": single}).status == 200
    seen = app.requests[-1].headers
    assert seen["b3"].startswith("80f198ee56343ba864fe8b2a57d3eff7-") and seen["b3"].endswith("-1")
    assert seen["x-b3-traceid"] == "80f198ee56343ba864fe8b2a57d3eff7"
    assert wait_for(lambda: len(receiver.received()) >= 2, timeout=10)


@pytest.mark.parametrize("collector", ["closed", "blackhole"])
def test_dead_collector_costs_no_request(start_proxy, make_backend, collector) -> None:
    """A collector that refuses, or accepts and never answers: every request
    still succeeds quickly, and the spans beyond the queue's bound are dropped
    and counted."""
    app = make_backend("reviews")
    hole = blackhole()
    try:
        dead = hole.getsockname()[1] if collector == "blackhole" else free_port()
        url = f"http://127.0.0.1:{dead}/v1/traces"
        port, caller = two_hops(start_proxy, app.port, url, max_cache_size=64)
        results = curl_many(
            [f"http://127.0.0.1:{port}/echo?i={i}" for i in range(300)],
            fields=("%{time_total}",), parallel=8,
        )  # fmt: skip
        assert [status for status, _ in results] == [200] * 300
        assert max(float(f["%{time_total}"]) for _, f in results) < 1.0

        def stats() -> dict[str, int]:
            text = caller.admin_get("/stats")[1]
            pairs = (line.split(": ", 1) for line in text.splitlines())
            return {k: int(v) for k, v in pairs if k.startswith("tracing.")}

        # The hung POST times out (2 s) and counts as failed.
        assert wait_for(lambda: stats()["tracing.opentelemetry.reports_failed"] >= 1, timeout=5)
        assert stats()["tracing.opentelemetry.spans_sent"] == 0
        if collector == "blackhole":
            # Each POST hangs for its 2 s timeout while the queue (64) fills and
            # the rest drop; a slow machine may see a few such rounds in the run.
            assert stats()["tracing.opentelemetry.spans_dropped"] >= 100
        _, text = caller.admin_get("/stats/prometheus")
        assert "envoy_tracing_opentelemetry_spans_dropped " in text
    finally:
        hole.close()


class _InstrumentedApp:
    """An app using the OpenTelemetry Python SDK: its server span continues
    the incoming W3C context, and its call out carries its own span."""

    def __init__(self, collector: str, outbound_port: int) -> None:

        self.provider = TracerProvider(resource=Resource.create({"service.name": "instrumented"}))
        self.provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=collector)))
        self.tracer = self.provider.get_tracer("test-app")
        self.outbound_port = outbound_port

    def handle(self, headers: dict[str, str]) -> int:

        propagator = TraceContextTextMapPropagator()
        parent = propagator.extract(carrier=headers)
        with self.tracer.start_as_current_span("handle", context=parent, kind=SpanKind.SERVER):
            out: dict[str, str] = {}
            propagator.inject(out)
            proxy = urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{self.outbound_port}"})
            request = urllib.request.Request("http://ratings:9080/echo", headers=out)
            with urllib.request.build_opener(proxy).open(request, timeout=5) as answer:
                return int(answer.status)


def test_sdk_instrumented_app_joins_the_trace(start_proxy, make_backend, receiver) -> None:
    """curl -> inbound proxy -> app (OpenTelemetry SDK) -> outbound proxy -> ratings."""
    ratings = make_backend("ratings")
    outbound_port, inbound_port = free_port(), free_port()
    app = _InstrumentedApp(receiver.url, outbound_port)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = app.handle({k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        start_proxy(
            [listener("inbound", inbound_port, [vhost("in", ["*"], [route(INBOUND)])],
                      inbound=True, tracing=tracing(receiver.url))],
            [static_cluster(INBOUND, [server.server_address[1]])],
            node_metadata=CALLEE,
        )  # fmt: skip
        start_proxy(
            [listener("outbound", outbound_port, [vhost("all", ["*"], [route("ratings")])],
                      outbound=True, tracing=tracing(receiver.url))],
            [static_cluster("ratings", [ratings.port])],
            node_metadata=CALLER,
        )  # fmt: skip
        assert curl(f"http://127.0.0.1:{inbound_port}/").status == 200
        assert wait_for(lambda: len(receiver.received()) >= 3, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        app.provider.shutdown()
    spans = receiver.received()
    (inbound,) = [s for s in spans if s.service == "reviews.default"]
    (own,) = [s for s in spans if s.service == "instrumented"]
    (outbound,) = [s for s in spans if s.service == "productpage.default"]
    assert inbound.span.trace_id == own.span.trace_id == outbound.span.trace_id
    assert own.span.parent_span_id == inbound.span.span_id
    assert outbound.span.parent_span_id == own.span.span_id
    seen = ratings.requests[-1].headers["traceparent"]
    assert seen == f"00-{own.span.trace_id.hex()}-{outbound.span.span_id.hex()}-01"
