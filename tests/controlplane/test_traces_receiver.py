"""The control plane's OTLP/HTTP receiver and Jaeger query API, fed by the
OpenTelemetry SDK's own exporter, refusals decoded with google.rpc.Status."""

from __future__ import annotations

import gzip
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pilotfish.ca.tokens import ServiceAccountTokens
from pilotfish.client import Client
from pilotfish.controlplane.api import Api
from pilotfish.controlplane.auth import Authenticator, create_read_only_token
from pilotfish.controlplane.main import ControlPlane
from pilotfish.controlplane.traces_api import TracesApi
from pilotfish.store.resources import ResourceStore
from pilotfish.tracing.otlp import decode
from pilotfish.tracing.store import Query, Retention, SpanStore

from .cp_testkit import TOKEN, Caller
from .otel_spans import BOOKINFO_HOPS, export_trace

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, Any]:
    try:
        with OPENER.open(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, body: bytes, content_type: str, **headers: str) -> tuple[int, bytes, str]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, **headers}
    )
    try:
        with OPENER.open(request, timeout=10) as answer:
            return answer.status, answer.read(), answer.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["Content-Type"]


def one_span(trace_id: bytes = b"\x01" * 16, span_id: bytes = b"\x02" * 8) -> bytes:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "raw"
    span = resource.scope_spans.add().spans.add(
        trace_id=trace_id, span_id=span_id, name="GET /", kind=Span.SPAN_KIND_SERVER
    )
    span.start_time_unix_nano, span.end_time_unix_nano = 1_000_000_000, 1_250_000_000
    return bytes(request.SerializeToString())


def test_sdk_spans_across_five_services_come_back_as_one_jaeger_trace(
    plane: ControlPlane,
) -> None:
    url = plane.server.url
    sent = export_trace(url + "/v1/traces", error_at=7)

    status, services = get(url + "/api/services")
    assert status == 200
    assert services["data"] == sorted({hop[0] for hop in BOOKINFO_HOPS})
    assert services["total"] == 5 and services["errors"] is None
    _, operations = get(url + "/api/services/reviews.default/operations")
    assert operations["data"] == [
        "ratings.default.svc.cluster.local:9080/*",
        "reviews.default.svc.cluster.local:9080/*",
    ]

    status, found = get(url + f"/api/traces/{sent.trace_id}")
    assert status == 200
    (trace,) = found["data"]
    assert trace["traceID"] == sent.trace_id
    spans = {s["spanID"]: s for s in trace["spans"]}
    assert set(spans) == set(sent.span_ids)
    for index, (service, operation, _, parent) in enumerate(BOOKINFO_HOPS):
        span = spans[sent.span_ids[index]]
        assert trace["processes"][span["processID"]]["serviceName"] == service
        assert span["operationName"] == operation
        parents = [r["spanID"] for r in span["references"] if r["refType"] == "CHILD_OF"]
        assert parents == ([] if parent is None else [sent.span_ids[parent]])
    ratings = {t["key"]: t["value"] for t in spans[sent.span_ids[7]]["tags"]}
    assert ratings["error"] is True and ratings["span.kind"] == "server"
    assert ratings["otel.status_description"] == "upstream failed"
    assert ratings["http.status_code"] == 500


def test_search_filters_as_jaegers(plane: ControlPlane) -> None:
    url = plane.server.url + "/api/traces"
    failed = export_trace(plane.server.url + "/v1/traces", error_at=7)
    fine = export_trace(plane.server.url + "/v1/traces", gzip=True)

    def ids(query: str) -> list[str]:
        status, body = get(f"{url}?{query}")
        assert status == 200, body
        return [t["traceID"] for t in body["data"]]

    assert ids("service=ratings.default") == [fine.trace_id, failed.trace_id]  # newest first
    assert ids("service=ratings.default&status=error") == [failed.trace_id]
    assert ids("service=ratings.default&status=ok") == [fine.trace_id]
    assert ids("service=ratings.default&limit=1") == [fine.trace_id]
    assert ids("service=details.default&operation=nope") == []
    assert ids("service=productpage.default&minDuration=1h") == []
    assert len(ids("service=productpage.default&minDuration=1us&maxDuration=1m")) == 2
    assert ids('service=ratings.default&tags={"http.status_code":"500"}') == [failed.trace_id]
    assert ids('service=ratings.default&tags={"error":"true"}') == [failed.trace_id]
    now_us = int(time.time() * 1e6)
    assert ids(f"service=ratings.default&start={now_us + 60_000_000}") == []
    assert len(ids(f"service=ratings.default&end={now_us + 60_000_000}")) == 2


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "parameter 'service' is required"),
        ("service=a&minDuration=fast", "malformed parameter minDuration"),
        ("service=a&minDuration=2s&maxDuration=1s", "'maxDuration' should be greater"),
        ("service=a&limit=0", "malformed parameter limit"),
        ("service=a&start=yesterday", "malformed parameter start"),
        ("service=a&status=maybe", "malformed parameter status"),
        ("service=a&tags=[1]", "malformed parameter tags"),
    ],
)
def test_a_bad_search_gets_jaegers_400(plane: ControlPlane, query: str, message: str) -> None:
    status, body = get(f"{plane.server.url}/api/traces?{query}")
    assert status == 400
    assert body["data"] is None
    assert body["errors"][0]["code"] == 400
    assert body["errors"][0]["msg"].startswith(message)


def test_an_unknown_or_malformed_trace_id(plane: ControlPlane) -> None:
    status, body = get(f"{plane.server.url}/api/traces/{'ab' * 16}")
    assert (status, body["errors"]) == (404, [{"code": 404, "msg": "trace not found"}])
    status, body = get(f"{plane.server.url}/api/traces/not-hex")
    assert status == 400 and "not a hexadecimal trace id" in body["errors"][0]["msg"]


def test_protobuf_json_and_gzip_bodies_are_accepted(plane: ControlPlane) -> None:
    url = plane.server.url + "/v1/traces"
    status, body, kind = post(url, one_span(), "application/x-protobuf")
    assert (status, kind) == (200, "application/x-protobuf")
    ExportTraceServiceResponse().ParseFromString(body)  # OTLP's answer, not a Kubernetes Status
    status, _, _ = post(
        url,
        gzip.compress(one_span(span_id=b"\x03" * 8)),
        "application/x-protobuf",
        **{"Content-Encoding": "gzip"},
    )
    assert status == 200
    as_json = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "raw"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "01" * 16,
                                "spanId": "04" * 8,
                                "parentSpanId": "02" * 8,
                                "name": "GET /json",
                                "kind": 3,
                                "startTimeUnixNano": "1100000000",
                                "endTimeUnixNano": "1200000000",
                                "futureField": 1,
                            }
                        ]
                    }
                ],
            }
        ]
    }
    status, body, kind = post(url, json.dumps(as_json).encode(), "application/json")
    assert (status, body, kind) == (200, b"{}", "application/json")
    _, found = get(plane.server.url + "/api/traces/" + "01" * 16)
    spans = {s["spanID"]: s for s in found["data"][0]["spans"]}
    assert set(spans) == {"02" * 8, "03" * 8, "04" * 8}
    assert spans["04" * 8]["references"][0]["spanID"] == "02" * 8
    assert spans["04" * 8]["duration"] == 100_000


def status_of(body: bytes) -> status_pb2.Status:
    status = status_pb2.Status()
    status.ParseFromString(body)
    return status


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "code", "message"),
    [
        (b"\xff\xff\xff", "application/x-protobuf", {}, 400, "is not an ExportTraceServiceRequest"),
        (
            one_span(trace_id=b"\x00" * 16),
            "application/x-protobuf",
            {},
            400,
            "traceId must be 16 bytes",
        ),
        (
            one_span(span_id=b"\x01" * 4),
            "application/x-protobuf",
            {},
            400,
            "spanId must be 8 bytes",
        ),
        (one_span(), "text/plain", {}, 415, 'unsupported Content-Type "text/plain"'),
        (
            one_span(),
            "application/x-protobuf",
            {"Content-Encoding": "br"},
            415,
            'unsupported Content-Encoding "br"',
        ),
        (
            b"not gzip",
            "application/x-protobuf",
            {"Content-Encoding": "gzip"},
            400,
            "cannot be decompressed",
        ),
        (
            gzip.compress(b"\0" * (9 << 20)),
            "application/x-protobuf",
            {"Content-Encoding": "gzip"},
            400,
            "larger than",
        ),
    ],
)
def test_bad_exports_get_otlps_status_and_store_nothing(
    plane: ControlPlane,
    body: bytes,
    content_type: str,
    headers: dict[str, str],
    code: int,
    message: str,
) -> None:
    status, answer, kind = post(plane.server.url + "/v1/traces", body, content_type, **headers)
    assert status == code
    assert kind == "application/x-protobuf"
    assert message in status_of(answer).message
    assert get(plane.server.url + "/api/services")[1]["data"] == []


def test_a_bad_json_export_is_answered_in_json(plane: ControlPlane) -> None:
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]})
    status, answer, kind = post(plane.server.url + "/v1/traces", body.encode(), "application/json")
    assert (status, kind) == (400, "application/json")
    assert json.loads(answer) == {
        "code": 3,
        "message": 'the body is not an ExportTraceServiceRequest: traceId "xyz" is not hexadecimal',
    }


def test_one_bad_span_refuses_the_whole_request(plane: ControlPlane) -> None:
    request = ExportTraceServiceRequest()
    request.ParseFromString(one_span())
    bad = ExportTraceServiceRequest()
    bad.ParseFromString(one_span(span_id=b"\x00" * 8))
    request.resource_spans.extend(bad.resource_spans)
    status, _, _ = post(
        plane.server.url + "/v1/traces", request.SerializeToString(), "application/x-protobuf"
    )
    assert status == 400
    assert get(plane.server.url + "/api/services")[1]["data"] == []


def test_a_body_over_the_limit_is_refused_with_413(plane: ControlPlane) -> None:
    # Refused from the head, before the body is read: the head alone gets the
    # answer (a client still writing the body may meet the closed connection).
    url = urllib.parse.urlsplit(plane.server.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/traces")
        conn.putheader("Content-Type", "application/x-protobuf")
        conn.putheader("Content-Length", str(3 * 1024 * 1024 + 1))
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()


def test_only_post_is_allowed_on_the_receiver(plane: ControlPlane) -> None:
    status, body = get(plane.server.url + "/v1/traces")
    assert status == 405 and "use POST" in body["message"]


# -- who may post spans ----------------------------------------------------------------


@pytest.fixture
def guarded(tmp_path: Path, store: ResourceStore) -> Iterator[tuple[Caller, ServiceAccountTokens]]:
    workloads = ServiceAccountTokens(b"k" * 32)
    auth = Authenticator(TOKEN, data_dir=tmp_path, anonymous_reads=False, workloads=workloads)
    spans = SpanStore(tmp_path / "traces.db")
    yield Caller(Api(store, auth, extension=TracesApi(spans))), workloads
    spans.close()


def test_who_may_post_spans(guarded: tuple[Caller, ServiceAccountTokens], tmp_path: Path) -> None:
    call, workloads = guarded
    kind = "application/x-protobuf"
    workload = workloads.mint("default", "reviews", 600, time.time())
    reader = create_read_only_token(tmp_path, "ci")
    # Loopback: sidecars on this host need no token, even with anonymous reads off.
    assert call("POST", "/v1/traces", one_span(), token=None, content_type=kind).status == 200
    assert call("GET", "/api/services", token=None).status == 401  # ... reads still do
    # Off loopback: a workload's service account token or the admin token.
    elsewhere = {"peer": "10.0.0.7", "content_type": kind}
    assert call("POST", "/v1/traces", one_span(), token=None, **elsewhere).status == 401
    assert call("POST", "/v1/traces", one_span(), token=workload, **elsewhere).status == 200
    assert call("POST", "/v1/traces", one_span(), token=TOKEN, **elsewhere).status == 200
    refused = call("POST", "/v1/traces", one_span(), token=reader, **elsewhere)
    assert refused.status == 403
    assert refused.json()["message"] == 'forbidden: User "ci" cannot post path "/v1/traces"'
    # A workload's token is good for spans only.
    assert call("GET", "/api/services", token=workload, peer="10.0.0.7").status == 403
    assert call("GET", "/api/v1/namespaces", token=workload, peer="10.0.0.7").status == 403
    expired = workloads.mint("default", "reviews", 600, time.time() - 3600)
    assert call("POST", "/v1/traces", one_span(), token=expired, **elsewhere).status == 401
    forged = ServiceAccountTokens(b"x" * 32).mint("default", "reviews", 600, time.time())
    assert call("POST", "/v1/traces", one_span(), token=forged, **elsewhere).status == 401


# -- retention -------------------------------------------------------------------------


def test_retention_by_count_age_and_bytes_and_a_restart_keeps_the_rest(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "traces.db"
    store = SpanStore(path, Retention(max_traces=3, max_age_s=60), clock=lambda: now[0])

    def add(n: int) -> None:
        store.add(decode(one_span(trace_id=bytes([n]) * 16), "application/x-protobuf", ""))
        now[0] += 1

    for n in range(1, 6):
        add(n)
    kept = {t[0]["traceID"][:2] for t in _all(store)}
    assert kept == {"03", "04", "05"}  # the oldest went first
    now[0] += 57.5  # at the next write 03 was received 60.5 s ago, 04 59.5 s ago
    add(6)
    assert {t[0]["traceID"][:2] for t in _all(store)} == {"04", "05", "06"}
    store.close()
    reopened = SpanStore(path, Retention(max_traces=3, max_age_s=60, max_bytes=1500))
    assert {t[0]["traceID"][:2] for t in _all(reopened)} == {"04", "05", "06"}
    reopened.add(decode(one_span(trace_id=b"\x07" * 16), "application/x-protobuf", ""))
    left = {t[0]["traceID"][:2] for t in _all(reopened)}
    assert "07" in left and len(left) < 3  # bytes: older traces made room
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    reopened.close()


def _all(store: SpanStore) -> list[list[dict[str, Any]]]:
    return store.find(Query(service="raw", limit=100))


MESH_WITH_COLLECTOR = """
extensionProviders:
- name: otel
  opentelemetry:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: 4318
    http: {path: /v1/traces, timeout: 5s}
defaultProviders:
  tracing: [otel]
"""


def test_a_mesh_collector_leaves_the_built_in_receiver_serving(
    plane: ControlPlane, client: Client
) -> None:
    """Istio's `opentelemetry` extension provider sends the sidecars' spans to
    a collector of the user's; the control plane keeps receiving whatever is
    sent to it (applications, sidecars told to export here too)."""
    mesh = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": MESH_WITH_COLLECTOR},
    }
    client.apply(mesh)
    sent = export_trace(plane.server.url + "/v1/traces")
    status, found = get(f"{plane.server.url}/api/traces/{sent.trace_id}")
    assert status == 200 and len(found["data"][0]["spans"]) == len(BOOKINFO_HOPS)
