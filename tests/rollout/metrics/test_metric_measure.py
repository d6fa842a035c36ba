"""measure(): the built-ins from the mesh, MetricTemplates through their
Prometheus (here a fake one over real HTTP), and what every way of having
no value reads like. Nothing raises."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.rollout.metrics.sidecar_pages import Sidecar, dead_port, instance

from pilotfish.rollout.metrics import MeshMetrics, measure, parse_interval
from pilotfish.rollout.types import MetricResult

Obj = dict[str, Any]
CANARY: Obj = {
    "metadata": {"name": "reviews", "namespace": "shop"},
    "spec": {"targetRef": {"kind": "Deployment", "name": "reviews"}},
}


def no_lookup(kind: str, namespace: str, name: str) -> None:
    return None


# -- the built-ins -----------------------------------------------------------------------


@pytest.fixture
def mesh() -> MeshMetrics:
    """reviews in shop: 95 ok and 5 errors in the last second, 90 of them
    in (1, 5] ms and 10 in (250, 500]."""
    now = [1000.0]
    mesh = MeshMetrics(list, clock=lambda: now[0])
    sidecar = Sidecar()
    mesh.record(instance("reviews-1"), sidecar.page(), now[0])
    sidecar.serve(200, n=90, duration_ms=3)
    sidecar.serve(200, n=5, duration_ms=300)
    sidecar.serve(503, n=5, duration_ms=300)
    now[0] += 1
    mesh.record(instance("reviews-1"), sidecar.page(), now[0])
    return mesh


def test_request_success_rate_is_a_percent_against_its_range(mesh: MeshMetrics) -> None:
    metric = {"name": "request-success-rate", "interval": "30s", "thresholdRange": {"min": 99}}
    result = measure(CANARY, metric, mesh=mesh, lookup=no_lookup)
    assert result == MetricResult("request-success-rate", 95.0, 99.0, None, "")
    assert not result.ok


def test_request_duration_is_the_p99_in_whole_milliseconds(mesh: MeshMetrics) -> None:
    # rank 99 of 100 is 9/10 into (250, 500]: 475 ms.
    metric = {"name": "request-duration", "interval": "1m30s", "thresholdRange": {"max": 500}}
    result = measure(CANARY, metric, mesh=mesh, lookup=no_lookup)
    assert (result.value, result.max, result.ok) == (475.0, 500.0, True)


def test_p99_is_truncated_to_the_millisecond_as_flagger_reads_it() -> None:
    now = [0.0]
    mesh = MeshMetrics(list, clock=lambda: now[0])
    sidecar = Sidecar()
    mesh.record(instance("reviews-1"), sidecar.page(), 0.0)
    sidecar.serve(200, n=100, duration_ms=3)  # rank 99 is 99/100 into (1, 5]: 4.96
    now[0] = 1.0
    mesh.record(instance("reviews-1"), sidecar.page(), 1.0)
    assert mesh.duration_p99("shop", "reviews", 60) == pytest.approx(4.96)
    result = measure(CANARY, {"name": "request-duration"}, mesh=mesh, lookup=no_lookup)
    assert result.value == 4.0


def test_a_workload_without_requests_has_no_value_and_says_why(mesh: MeshMetrics) -> None:
    idle = {**CANARY, "spec": {"targetRef": {"name": "ratings"}}}
    result = measure(idle, {"name": "request-success-rate"}, mesh=mesh, lookup=no_lookup)
    assert (result.value, result.ok) == (None, False)
    assert result.message == (
        "no values found for request-success-rate: ratings.shop received no requests in the last 1m"
    )


def test_a_bad_interval_is_a_failed_query(mesh: MeshMetrics) -> None:
    for interval in ("1 minute", "-1m"):
        metric = {"name": "request-success-rate", "interval": interval}
        result = measure(CANARY, metric, mesh=mesh, lookup=no_lookup)
        assert result.value is None
        assert result.message.startswith("metric query failed for request-success-rate: interval")


def test_intervals_are_go_durations() -> None:
    assert parse_interval("30s") == 30.0
    assert parse_interval("1m") == 60.0
    assert parse_interval("1m30s") == 90.0
    assert parse_interval("1.5h") == 5400.0
    for bad in ("", "0", "1", "10 s", "-5s"):
        with pytest.raises(ValueError):
            parse_interval(bad)


def test_a_metric_neither_built_in_nor_templated(mesh: MeshMetrics) -> None:
    result = measure(CANARY, {"name": "errors", "query": "up"}, mesh=mesh, lookup=no_lookup)
    assert "inline query needs a MetricTemplate" in result.message
    result = measure(CANARY, {"name": "errors"}, mesh=mesh, lookup=no_lookup)
    assert result.message == (
        'metric query failed for errors: "errors" is not a built-in metric and has no templateRef'
    )


# -- MetricTemplates against a Prometheus ---------------------------------------------------


@dataclass
class FakePrometheus:
    """Answers GET …/api/v1/query with the next of `answers`; keeps what it was sent."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    address: str = ""


def vector(*values: str) -> Obj:
    result = [
        {"metric": {"pod": f"p{i}"}, "value": [1700000000.1, v]} for i, v in enumerate(values)
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    yield from fake_prometheus(None)


@pytest.fixture
def tls_prometheus(tmp_path: Path) -> Iterator[FakePrometheus]:
    """The same over TLS, with a self-signed certificate (made by openssl)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=prometheus",
    ]
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    yield from fake_prometheus(context)


def fake_prometheus(tls: ssl.SSLContext | None) -> Iterator[FakePrometheus]:
    fake = FakePrometheus()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            fake.paths.append(url.path)
            fake.queries.append(urllib.parse.parse_qs(url.query)["query"][0])
            fake.headers.append({k.lower(): v for k, v in self.headers.items()})
            code, body = fake.answers.pop(0) if fake.answers else (200, vector())
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    scheme = "https" if tls else "http"
    fake.address = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def template(provider: Obj, query: str = 'sum(up{namespace="{{ namespace }}"})') -> Obj:
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "MetricTemplate",
        "spec": {"provider": {"type": "prometheus", **provider}, "query": query},
    }


class Store:
    def __init__(self, **objects: Obj) -> None:
        self.objects = {tuple(key.split("/")): obj for key, obj in objects.items()}
        self.asked: list[tuple[str, str, str]] = []

    def __call__(self, kind: str, namespace: str, name: str) -> Obj | None:
        self.asked.append((kind, namespace, name))
        return self.objects.get((kind, namespace, name))


def run(store: Store, metric: Obj | None = None) -> MetricResult:
    metric = metric or {"name": "up", "templateRef": {"name": "up"}, "thresholdRange": {"max": 5}}
    return measure(CANARY, metric, mesh=MeshMetrics(list), lookup=store)


def test_a_template_is_rendered_and_queried(prometheus: FakePrometheus) -> None:
    query = """
        sum(
          up{namespace="{{ namespace }}", app="{{ target }}", v="{{ variables.v }}"}
        )[{{ interval }}]"""
    store = Store(**{"MetricTemplate/shop/up": template({"address": prometheus.address}, query)})
    prometheus.answers = [(200, vector("3"))]
    metric = {
        "name": "up",
        "interval": "2m",
        "templateRef": {"name": "up"},
        "templateVariables": {"v": "x"},
        "thresholdRange": {"min": 1, "max": 5},
    }
    assert run(store, metric) == MetricResult("up", 3.0, 1.0, 5.0, "")
    assert prometheus.paths == ["/api/v1/query"]
    # Whitespace collapsed, as Flagger's trimQuery does (not stripped).
    assert prometheus.queries == [' sum( up{namespace="shop", app="reviews", v="x"} )[2m]']
    assert "authorization" not in prometheus.headers[0]


def test_the_template_namespace_when_given(prometheus: FakePrometheus) -> None:
    store = Store(**{"MetricTemplate/flagger/up": template({"address": prometheus.address})})
    prometheus.answers = [(200, vector("1"))]
    metric = {"name": "up", "templateRef": {"name": "up", "namespace": "flagger"}}
    assert run(store, metric).value == 1.0
    assert store.asked == [("MetricTemplate", "flagger", "up")]


def test_a_template_wins_over_a_built_in_name(prometheus: FakePrometheus) -> None:
    store = Store(**{"MetricTemplate/shop/sr": template({"address": prometheus.address})})
    prometheus.answers = [(200, vector("42"))]
    metric = {"name": "request-success-rate", "templateRef": {"name": "sr"}}
    assert run(store, metric).value == 42.0


def test_the_value_is_flaggers_reading_of_the_answer(prometheus: FakePrometheus) -> None:
    store = Store(**{"MetricTemplate/shop/up": template({"address": prometheus.address})})
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.5, "7"]}}
    prometheus.answers = [
        (200, vector("1", "2", "3")),  # Flagger keeps the last sample's value
        (200, scalar),
        (200, vector("+Inf")),
    ]
    assert [run(store).value for _ in range(3)] == [3.0, 7.0, float("inf")]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            (200, vector()),
            "no values found for up: Prometheus at {address} returned no samples for the query",
        ),
        (
            (200, vector("NaN")),
            "no values found for up: the query gave NaN at {address} (a division by zero: no traffic?)",
        ),
        (
            (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}),
            "metric query failed for up: Prometheus at {address} answered 400: parse error at char 3",
        ),
        (
            (200, b"<html>"),
            "metric query failed for up: Prometheus at {address} did not answer JSON",
        ),
        (
            (
                200,
                {
                    "status": "success",
                    "data": {"resultType": "matrix", "result": [{"values": [[1, "1"]]}]},
                },
            ),
            "metric query failed for up: the query returned multiple values (a range vector) at {address}",
        ),
        (
            (200, vector("many")),
            'metric query failed for up: Prometheus at {address} answered "many", not a number',
        ),
    ],
)
def test_answers_without_a_value(prometheus: FakePrometheus, answer: Any, message: str) -> None:
    store = Store(**{"MetricTemplate/shop/up": template({"address": prometheus.address})})
    prometheus.answers = [answer]
    result = run(store)
    assert (result.value, result.ok, result.max) == (None, False, 5.0)
    assert result.message == message.format(address=prometheus.address)


def test_an_address_with_a_path_prefix(prometheus: FakePrometheus) -> None:
    address = prometheus.address + "/prometheus/"
    store = Store(**{"MetricTemplate/shop/up": template({"address": address})})
    prometheus.answers = [(200, vector("1"))]
    assert run(store).value == 1.0
    assert prometheus.paths == ["/prometheus/api/v1/query"]


def test_basic_auth_from_the_secret(prometheus: FakePrometheus) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    provider = {"address": prometheus.address, "secretRef": {"name": "prom-auth"}}
    secret = {"kind": "Secret", "data": {"username": b64("flagger"), "password": b64("s3cret")}}
    store = Store(**{"MetricTemplate/shop/up": template(provider), "Secret/shop/prom-auth": secret})
    prometheus.answers = [(200, vector("1"))]
    assert run(store).value == 1.0
    assert prometheus.headers[0]["authorization"] == "Basic " + b64("flagger:s3cret")


def test_a_bearer_token_and_extra_headers(prometheus: FakePrometheus) -> None:
    provider = {
        "address": prometheus.address,
        "secretRef": {"name": "prom-token"},
        "headers": {"X-Scope-OrgID": ["tenant-1"]},
    }
    secret = {"kind": "Secret", "stringData": {"token": "abc"}}
    store = Store(
        **{"MetricTemplate/shop/up": template(provider), "Secret/shop/prom-token": secret}
    )
    prometheus.answers = [(200, vector("1"))]
    assert run(store).value == 1.0
    assert prometheus.headers[0]["authorization"] == "Bearer abc"
    assert prometheus.headers[0]["x-scope-orgid"] == "tenant-1"


@pytest.mark.parametrize(
    ("objects", "provider", "message"),
    [
        (
            {"Secret/shop/s": {"data": {"username": "ZmxhZ2dlcg=="}}},
            {"address": "http://p", "secretRef": {"name": "s"}},
            "the provider's Secret has no password (nor a token)",
        ),
        (
            {},
            {"address": "http://p", "secretRef": {"name": "s"}},
            'the provider\'s Secret "shop/s" not found',
        ),
        (
            {"Secret/shop/s": {"data": {"token": "not base64!"}}},
            {"address": "http://p", "secretRef": {"name": "s"}},
            'the provider\'s Secret "shop/s" is not base64 text',
        ),
        ({}, {"address": ""}, 'the provider address "" is not a valid URL'),
        (
            {},
            {"address": "prometheus:9090"},
            'the provider address "prometheus:9090" is not a valid URL',
        ),
        (
            {},
            {"type": "datadog"},
            'provider type "datadog" is not supported (supported: prometheus)',
        ),
    ],
)
def test_what_keeps_a_template_from_running(objects: Obj, provider: Obj, message: str) -> None:
    result = run(Store(**{"MetricTemplate/shop/up": template(provider), **objects}))
    assert result.value is None
    assert result.message == f"metric query failed for up: {message}"


def test_a_missing_template() -> None:
    result = run(Store())
    assert result.message == 'metric query failed for up: MetricTemplate "shop/up" not found'


def test_a_template_that_does_not_render(prometheus: FakePrometheus) -> None:
    query = 'up{x="{{ variables.missing }}"}'
    store = Store(**{"MetricTemplate/shop/up": template({"address": prometheus.address}, query)})
    result = run(store)
    assert result.message == (
        'metric query failed for up: MetricTemplate "shop/up": '
        '{{ variables.missing }}: templateVariables has no "missing"'
    )
    assert prometheus.queries == [], "nothing was sent"


def test_an_unreachable_prometheus_is_a_failed_check_not_an_error() -> None:
    address = f"http://127.0.0.1:{dead_port()}"
    result = run(Store(**{"MetricTemplate/shop/up": template({"address": address})}))
    assert result.value is None
    assert result.message.startswith(
        f"metric query failed for up: Prometheus at {address} cannot be reached"
    )


def test_insecure_skip_verify_accepts_a_self_signed_prometheus(
    tls_prometheus: FakePrometheus,
) -> None:
    address = tls_prometheus.address
    checked = run(Store(**{"MetricTemplate/shop/up": template({"address": address})}))
    assert checked.value is None
    assert "CERTIFICATE_VERIFY_FAILED" in checked.message
    tls_prometheus.answers = [(200, vector("2"))]
    provider = {"address": address, "insecureSkipVerify": True}
    assert run(Store(**{"MetricTemplate/shop/up": template(provider)})).value == 2.0
