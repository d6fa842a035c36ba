"""The dashboard's data without a mesh: sidecar pages as the sidecar prints
them, fed through the sampler (with a scraper that returns them), read back
as a graph, as `stat` rows, and over the control plane's HTTP port."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from pilotfish.controlplane.main import ControlPlane
from pilotfish.dashboard.api import canary_rows
from pilotfish.dashboard.graph import build_graph, health
from pilotfish.dashboard.sampler import MeshSampler
from pilotfish.dashboard.series import MAX_SERIES, SLOTS, Edge, SeriesStore
from pilotfish.dashboard.stat import stat_rows
from pilotfish.dashboard.svg import draw
from pilotfish.model.types import Instance
from pilotfish.proxy.telemetry import ServiceInfo, Telemetry, WorkloadInfo
from pilotfish.rollout.metrics.builtin import Totals

RATINGS = ServiceInfo("ratings.default.svc.cluster.local", "ratings", "default")
REVIEWS = WorkloadInfo(workload="reviews-v2", namespace="default", app="reviews", version="v2")
RATINGS_V1 = WorkloadInfo(workload="ratings-v1", namespace="default", app="ratings", version="v1")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def page(telemetry: Telemetry) -> str:
    """The page the sidecar serves at /stats/prometheus."""
    return telemetry.prometheus().decode()


def instance(name: str, workload: str) -> Instance:
    return Instance(name, "default", workload, "127.0.0.1", {"http": 9080}, metrics_port=15090)


class Pages:
    """A scraper that returns what the test put there for each instance."""

    def __init__(self) -> None:
        self.text: dict[str, str] = {}

    def __call__(self, instances):  # type: ignore[no-untyped-def]
        return [(i, self.text[i.name]) for i in instances if i.name in self.text]


def test_a_fault_the_caller_injects_turns_its_edge_red_and_the_callee_hop_stays_green() -> None:
    reviews, ratings = Telemetry(REVIEWS), Telemetry(RATINGS_V1)
    reviews_out, ratings_in = reviews.outbound, ratings.inbound
    instances = [instance("reviews-v2-0", "reviews-v2"), instance("ratings-v1-0", "ratings-v1")]
    pages = Pages()
    sampler = MeshSampler(lambda: instances, scraper=pages, clock=lambda: 1000.0)

    def scrape(at: float) -> None:
        pages.text = {"reviews-v2-0": page(reviews), "ratings-v1-0": page(ratings)}
        sampler.sample(at)

    scrape(1000.0)  # the baseline
    for _ in range(8):  # 8 calls that reached ratings
        reviews_out.record(RATINGS_V1, RATINGS, 200, "", 3.0, 0, 10)
        ratings_in.record(REVIEWS, RATINGS, 200, "", 2.0, 0, 10)
    for _ in range(2):  # 2 aborted by reviews' own sidecar: ratings never saw them
        # The caller's sidecar names the host as it was asked for: "ratings".
        reviews_out.record(
            WorkloadInfo(), ServiceInfo("ratings", "ratings", "unknown"), 500, "FI", 0.1, 0, 0
        )
    scrape(1005.0)

    counted = sampler.store.window(1000.0)
    graph = build_graph(counted, 10.0, set(sampler.meshed()), 1005.0)
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    to_service = edges[("workload:default/reviews-v2", "service:ratings.default.svc.cluster.local")]
    to_workload = edges[
        ("service:ratings.default.svc.cluster.local", "workload:default/ratings-v1")
    ]
    assert (to_service["requests"], to_service["errorRate"], to_service["health"]) == (
        10,
        0.2,
        "failure",
    )
    assert to_service["rps"] == 1.0
    assert (to_workload["requests"], to_workload["health"]) == (8, "healthy")
    assert 1 < to_workload["p50"] <= 5  # every call took 2 ms: the (1, 5] bucket
    svg = draw(graph)
    assert 'data-health="failure"' in svg and "1.00rps 20%err" in svg


def test_a_restarted_sidecar_counts_from_zero_again_as_rate_does() -> None:
    ratings = Telemetry(RATINGS_V1)
    pages = Pages()
    instances = [instance("ratings-v1-0", "ratings-v1")]
    sampler = MeshSampler(lambda: instances, scraper=pages)
    for _ in range(5):
        ratings.inbound.record(REVIEWS, RATINGS, 200, "", 2.0, 0, 10)
    pages.text = {"ratings-v1-0": page(ratings)}
    sampler.sample(1000.0)
    restarted = Telemetry(RATINGS_V1)
    for _ in range(3):
        restarted.inbound.record(REVIEWS, RATINGS, 503, "", 2.0, 0, 10)
    pages.text = {"ratings-v1-0": page(restarted)}
    sampler.sample(1005.0)
    (counts,) = sampler.store.window(0.0).values()
    assert (counts.requests, counts.ok) == (3, 0)


def test_memory_is_bounded_by_slots_per_edge_and_edges() -> None:
    store = SeriesStore(resolution_s=5.0, max_series=2)
    edges = [
        Edge("destination", "default", f"w{i}", "s", "default", "s", "default", "d", "http", "none")
        for i in range(3)
    ]
    one = Totals(1.0, 1.0, {1.0: 1.0, float("inf"): 1.0})
    for slot in range(SLOTS + 50):
        store.add(slot * 5.0, {e: one for e in edges})
    window = store.window(0.0)
    assert len(window) == 2  # the third edge was refused
    assert store.dropped == SLOTS + 50
    assert all(t.requests == SLOTS for t in window.values())  # the oldest 50 slots dropped
    assert MAX_SERIES * SLOTS < 200_000  # the documented bound's factors


def test_health_uses_kialis_default_thresholds() -> None:
    assert health(0, 0) == "idle"
    assert health(0, 100) == "healthy"
    assert health(1, 1000) == "degraded"
    assert health(9.99, 100) == "degraded"
    assert health(10, 100) == "failure"
    assert health(100 - 90.00000000000001, 100) == "failure"  # float noise at the threshold


def test_stat_rows_count_what_the_resource_received_or_sent() -> None:
    hop = ("default", "productpage-v1", "reviews.default.svc.cluster.local", "default", "reviews")
    inbound = Edge("destination", *hop, "default", "reviews-v2", "http", "none")
    outbound = Edge("source", *hop, "default", "reviews-v2", "http", "unknown")
    counted = {
        inbound: Totals(60.0, 57.0, {10.0: 60.0, float("inf"): 60.0}),
        outbound: Totals(62.0, 57.0, {10.0: 62.0, float("inf"): 62.0}),
    }
    known = {("default", "reviews-v2"): "1/1", ("default", "details-v1"): "1/1"}
    rows = stat_rows("workloads", counted, {}, 60.0, known)
    by_name = {r["name"]: r for r in rows}
    assert by_name["reviews-v2"]["rps"] == 1.0 and by_name["reviews-v2"]["success"] == 0.95
    assert by_name["details-v1"]["rps"] is None  # registered, no traffic: a row of dashes
    to_rows = stat_rows("workloads", counted, {}, 60.0, {}, to="reviews")
    assert [(r["name"], r["requests"]) for r in to_rows] == [("productpage-v1", 62.0)]
    assert stat_rows("workloads", counted, {}, 60.0, {}, source="details-v1") == []
    services = stat_rows("services", counted, {}, 60.0, {})
    assert [(r["name"], r["requests"]) for r in services] == [("reviews", 60.0)]
    canary = {
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"targetRef": {"name": "reviews-v2"}},
        "status": {"canaryWeight": 30},
    }
    leaves = canary_rows([canary], {("default", "reviews-v2"): by_name["reviews-v2"]})
    assert [(r["leaf"], r["weight"], r["rps"]) for r in leaves] == [
        ("reviews-v2-primary", 70, None),
        ("reviews-v2", 30, 1.0),
    ]


def test_the_graph_streams_as_server_sent_events_on_the_api_port(tmp_path: Path) -> None:
    plane = ControlPlane.open(tmp_path / "data", "127.0.0.1:0", tmp_path / "config.yaml")
    plane.server.start()
    try:
        url = plane.server.url
        with DIRECT.open(url + "/dashboard/api/graph/stream?window=30s", timeout=10) as answer:
            assert answer.headers["Content-Type"] == "text/event-stream"
            first = answer.readline()
            assert answer.readline() == b"\n"
        assert first.startswith(b"data: ")
        graph = json.loads(first[len(b"data: ") :])
        assert (graph["windowSeconds"], graph["nodes"], graph["edges"]) == (30.0, [], [])
        with DIRECT.open(url + "/dashboard/", timeout=10) as answer:
            assert b'<script src="/dashboard/app.js">' in answer.read()
        try:
            DIRECT.open(url + "/dashboard/api/graph?window=2h", timeout=10)
            raise AssertionError("a window past the retention was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400
            assert "keeps the last 1h" in json.loads(e.read())["message"]
        try:
            DIRECT.open(url + "/dashboard/api/graph?label=bytes", timeout=10)
            raise AssertionError("an unknown edge label was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400
            assert json.loads(e.read())["message"] == (
                'invalid label "bytes": expected one of rps, errors, p99'
            )
    finally:
        plane.close()
