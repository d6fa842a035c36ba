"""Measuring analysis metrics: the built-ins from sampled sidecar pages
(rates over a window, counter resets, p99 by interpolation), MetricTemplate
rendering, and what every failure reads like."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pilotfish.model.types import Instance
from pilotfish.rollout.metrics import MeshMetrics, measure
from pilotfish.rollout.metrics.builtin import parse_totals, quantile
from pilotfish.rollout.metrics.exposition import samples
from pilotfish.rollout.metrics.templates import TemplateError, render

CANARY: dict[str, Any] = {
    "metadata": {"name": "reviews", "namespace": "shop"},
    "spec": {"targetRef": {"kind": "Deployment", "name": "reviews"}},
}


def page(ok: int, errors: int, fast: int = 0, slow: int = 0) -> str:
    """A sidecar's page: inbound counters, and one outbound series to ignore."""
    series = 'reporter="destination",destination_workload="reviews"'
    buckets = {"10": fast, "100": fast + slow, "+Inf": fast + slow}
    lines = [
        "# TYPE istio_requests_total counter",
        f'istio_requests_total{{{series},response_code="200"}} {ok}',
        f'istio_requests_total{{{series},response_code="503"}} {errors}',
        'istio_requests_total{reporter="source",response_code="500"} 99',
        *(
            f'istio_request_duration_milliseconds_bucket{{{series},le="{le}"}} {n}'
            for le, n in buckets.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def instance(name: str, workload: str = "reviews") -> Instance:
    return Instance(name=name, namespace="shop", workload=workload, address="127.0.0.1", ports={})


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sampled() -> tuple[MeshMetrics, Clock]:
    clock = Clock()
    return MeshMetrics(lambda: [], clock=clock), clock


def test_exposition_lines_with_escapes_and_comments() -> None:
    text = '# HELP x y\nm{a="q\\"uote",b="x,y"} 3\nbad line\nm 4 1700000000\nm{a="n"} NaN\n'
    found = [(s.labels, s.value) for s in samples(text, {"m"})]
    assert found == [({"a": 'q"uote', "b": "x,y"}, 3.0), ({}, 4.0)]


def test_only_inbound_series_count() -> None:
    totals = parse_totals(page(ok=8, errors=2, fast=6, slow=4))
    assert (totals.requests, totals.ok) == (10, 8)
    assert totals.buckets == {10.0: 6, 100.0: 10, float("inf"): 10}


def test_success_rate_over_a_window_across_instances(sampled: Any) -> None:
    mesh, clock = sampled
    for t, (a, b) in enumerate([((0, 0), (10, 0)), ((50, 0), (20, 10)), ((100, 0), (30, 20))]):
        clock.now = 1000.0 + 10 * t
        mesh.record(instance("r-1"), parse_totals(page(*a)), clock.now)
        mesh.record(instance("r-2"), parse_totals(page(*b)), clock.now)
    # Over the last 15 s: r-1 +50 ok; r-2 +10 ok, +10 errors.
    assert mesh.success_rate("shop", "reviews", 15) == pytest.approx(100 * 60 / 70)
    assert mesh.success_rate("shop", "ratings", 15) is None
    assert mesh.success_rate("other", "reviews", 15) is None


def test_a_restarted_sidecar_counts_from_zero_again(sampled: Any) -> None:
    mesh, clock = sampled
    for t, ok in enumerate([100, 150, 20, 70]):
        clock.now = 1000.0 + t
        mesh.record(instance("r-1"), parse_totals(page(ok, 0)), clock.now)
    # 100 -> 150 (+50), reset to 20 (+20), -> 70 (+50): 120 requests
    assert mesh.success_rate("shop", "reviews", 60) == 100.0
    first, last = mesh._edges("shop", "reviews", 60)[0]
    assert last.requests - first.requests == 120


def test_no_requests_in_the_window_is_no_value(sampled: Any) -> None:
    mesh, clock = sampled
    for t in range(3):
        clock.now = 1000.0 + t
        mesh.record(instance("r-1"), parse_totals(page(5, 0)), clock.now)
    assert mesh.success_rate("shop", "reviews", 60) is None
    assert mesh.duration_p99("shop", "reviews", 60) is None


def test_p99_interpolates_inside_its_bucket() -> None:
    # 100 requests: 90 under 10 ms, 10 between 10 and 100 ms; rank 99 is 9/10 of the way.
    assert quantile(0.99, {10.0: 90, 100.0: 100, float("inf"): 100}) == pytest.approx(91.0)
    assert quantile(0.5, {10.0: 100, float("inf"): 100}) == pytest.approx(5.0)
    assert quantile(0.99, {10.0: 0, float("inf"): 100}) == 10.0, "+Inf: the highest bound"
    assert quantile(0.99, {}) is None


def test_builtin_metrics_through_measure(sampled: Any) -> None:
    mesh, clock = sampled
    for t, counts in enumerate([(0, 0, 0, 0), (95, 5, 90, 10)]):
        clock.now = 1000.0 + t
        mesh.record(instance("r-1"), parse_totals(page(*counts)), clock.now)
    rate = measure(
        CANARY,
        {"name": "request-success-rate", "interval": "30s", "thresholdRange": {"min": 99}},
        mesh=mesh,
        lookup=lambda *a: None,
    )
    assert (rate.value, rate.min, rate.ok) == (95.0, 99.0, False)
    p99 = measure(
        CANARY,
        {"name": "request-duration", "thresholdRange": {"max": 500}},
        mesh=mesh,
        lookup=lambda *a: None,
    )
    assert p99.ok and p99.value == pytest.approx(91.0)
    idle = measure(
        {**CANARY, "spec": {"targetRef": {"name": "ratings"}}},
        {"name": "request-success-rate", "interval": "1m"},
        mesh=mesh,
        lookup=lambda *a: None,
    )
    assert idle.value is None and not idle.ok
    assert idle.message == (
        "no values found for request-success-rate: ratings.shop received no requests in the last 1m"
    )


def test_template_variables_as_flagger_names_them() -> None:
    model = {"name": "c", "namespace": "shop", "target": "reviews", "interval": "1m"}
    query = 'rate(x{ns="{{ namespace }}",w=~"{{target}}",v="{{ variables.v }}"}[{{ interval }}])'
    assert render(query, model, {"v": "2"}) == 'rate(x{ns="shop",w=~"reviews",v="2"}[1m])'
    with pytest.raises(TemplateError, match='unknown template variable "nope"'):
        render("{{ nope }}", model, {})
    with pytest.raises(TemplateError, match='templateVariables has no "v"'):
        render("{{ variables.v }}", model, {})


class FakePrometheus(BaseHTTPRequestHandler):
    """Answers /api/v1/query with what the test put in `answers`."""

    answers: list[tuple[int, Any]] = []
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        code, body = self.answers.pop(0)
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prometheus_address() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {}, "value": [1, v]} for v in values]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_metric_templates_and_their_failures(prometheus_address: str) -> None:
    template = {
        "spec": {
            "provider": {"type": "prometheus", "address": prometheus_address},
            "query": 'up{namespace="{{ namespace }}"}',
        }
    }
    stored = {("MetricTemplate", "shop", "up"): template}

    def lookup(kind: str, namespace: str, name: str) -> Any:
        return stored.get((kind, namespace, name))

    metric = {"name": "up", "templateRef": {"name": "up"}, "thresholdRange": {"max": 5}}
    FakePrometheus.answers = [
        (200, vector("3")),
        (200, vector()),
        (200, vector("NaN")),
        (400, {"status": "error", "error": "parse error at char 3"}),
    ]
    assert measure(CANARY, metric, mesh=MeshMetrics(list), lookup=lookup).value == 3.0
    assert "namespace%3D%22shop%22" in FakePrometheus.seen[0]
    messages = [
        measure(CANARY, metric, mesh=MeshMetrics(list), lookup=lookup).message for _ in range(3)
    ]
    assert messages[0] == "no values found for up: no values found"
    assert "NaN" in messages[1]
    assert messages[2].endswith("answered 400: parse error at char 3")
    missing = measure(
        CANARY,
        {"name": "x", "templateRef": {"name": "gone"}},
        mesh=MeshMetrics(list),
        lookup=lookup,
    )
    assert missing.message == 'no values found for x: MetricTemplate "shop/gone" not found'
    stored[("MetricTemplate", "shop", "dd")] = {"spec": {"provider": {"type": "datadog"}}}
    other = measure(
        CANARY, {"name": "x", "templateRef": {"name": "dd"}}, mesh=MeshMetrics(list), lookup=lookup
    )
    assert 'provider type "datadog" is not supported' in other.message


def test_an_unreachable_prometheus_is_a_failed_check_not_an_error() -> None:
    template = {
        "spec": {"provider": {"type": "prometheus", "address": "http://127.0.0.1:9"}, "query": "up"}
    }
    result = measure(
        CANARY,
        {"name": "up", "templateRef": {"name": "t"}},
        mesh=MeshMetrics(list),
        lookup=lambda *a: template,
    )
    assert result.value is None and "cannot be reached" in result.message
