"""The dashboard end to end, as a user sees it: Bookinfo running behind the
ingress gateway with traffic flowing, the pages opened in Debian's headless
Chromium (driven by Playwright), a fault injected on ratings, a Canary's
status; and `pilotfish stat` against the sidecars' own counters.

Screenshots of each page are saved under the test's tmp_path."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.agent.mesh_harness import (
    BOOKINFO_ISTIO,
    DIRECT,
    REPO,
    Mesh,
    free_port,
    mesh_up,
    wait_for,
)

from pilotfish.rollout.metrics.exposition import samples

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium"),
]
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RATINGS = "service:ratings.default.svc.cluster.local"
ABORT_RATINGS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort: {percentage: {value: 100}, httpStatus: 500}
    route:
    - destination: {host: ratings, subset: v1}
"""
RATINGS_V1 = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings, subset: v1}
"""
GHOST = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ghost, namespace: default}
spec:
  hosts: [ghost.example.com]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
"""
CANARY = """
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: default}
spec:
  suspend: true
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898}
  analysis:
    interval: 10s
    threshold: 5
    maxWeight: 50
    stepWeight: 10
    metrics:
    - {name: request-success-rate, interval: 1m, thresholdRange: {min: 99}}
    - {name: request-duration, interval: 1m, thresholdRange: {max: 500}}
"""


@dataclass
class Running:
    mesh: Mesh
    gateway_port: int
    traffic: threading.Event  # set: keep sending

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.mesh.api_port}"

    def get(self, path: str) -> Any:
        with DIRECT.open(self.url + path, timeout=10) as answer:
            return json.loads(answer.read())


def send_traffic(port: int, on: threading.Event, stop: threading.Event) -> None:
    while not stop.is_set():
        if on.is_set():
            with contextlib.suppress(urllib.error.URLError, OSError):
                DIRECT.open(f"http://127.0.0.1:{port}/productpage", timeout=10).read()
        stop.wait(0.25)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    stop, on = threading.Event(), threading.Event()
    with mesh_up(tmp, gateway_port=port) as mesh:
        # reviews v2 and v3 call ratings (examples/bookinfo routes every call to v1)
        mesh.cli("apply", "-f", str(BOOKINFO_ISTIO / "virtual-service-reviews-v2-v3.yaml"))
        on.set()
        sender = threading.Thread(target=send_traffic, args=(port, on, stop), daemon=True)
        sender.start()
        try:
            yield Running(mesh, port, on)
        finally:
            stop.set()
            sender.join(15)


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


def edge_health(page: Any, target: str) -> list[str]:
    found = page.eval_on_selector_all(
        f'g.edge[data-target="{target}"]', "els => els.map(e => e.dataset.health)"
    )
    return list(found)


def test_the_graph_shows_bookinfo_live_and_a_fault_on_ratings_turns_it_red(
    running: Running, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 560})
    page.goto(running.url + "/dashboard/#/graph")
    page.wait_for_selector(f'g.edge[data-target="{RATINGS}"]', timeout=60_000)
    wait_for(lambda: page.locator("g.edge").count() >= 8, 30, "not every Bookinfo edge is drawn")
    targets = set(page.eval_on_selector_all("g.edge", "els => els.map(e => e.dataset.target)"))
    for service in ("productpage", "details", "reviews", "ratings"):
        assert f"service:{service}.default.svc.cluster.local" in targets
    for workload in ("productpage-v1", "details-v1", "ratings-v1"):
        assert f"workload:default/{workload}" in targets
    gateway_edge = page.locator('g.edge[data-source="workload:istio-system/istio-ingressgateway"]')
    assert "rps" in (gateway_edge.first.text_content() or "")
    assert set(edge_health(page, RATINGS)) == {"healthy"}
    page.screenshot(path=str(tmp_path / "graph.png"))

    applied = tmp_path / "abort.yaml"
    applied.write_text(ABORT_RATINGS)
    running.mesh.cli("apply", "-f", str(applied))
    try:
        started = time.monotonic()
        # The page is not reloaded: the stream redraws it.
        wait_for(
            lambda: "failure" in edge_health(page, RATINGS), 30, "ratings' edges did not turn red"
        )
        took = time.monotonic() - started
        page.screenshot(path=str(tmp_path / "graph-fault.png"))
        label = page.locator(f'g.edge[data-target="{RATINGS}"][data-health="failure"]').first
        assert "%err" in (label.text_content() or "")
        assert took < 30
        page.select_option("#edge-label", "p99")  # Kiali's edge label menu
        edge = page.locator(f'g.edge[data-target="{RATINGS}"]').first
        wait_for(lambda: (edge.text_content() or "").endswith("ms"), 15, "no p99 labels")
    finally:
        applied.write_text(
            ABORT_RATINGS.replace(
                "  - fault:\n      abort: {percentage: {value: 100}, httpStatus: 500}\n    route:",
                "  - route:",
            )
        )
        running.mesh.cli("apply", "-f", str(applied))


def test_a_workload_page_shows_its_golden_metrics_neighbours_and_config(
    running: Running, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(running.url + "/dashboard/#/workload/default/reviews-v2")
    page.wait_for_selector("text=Last 15 minutes", timeout=30_000)
    page.wait_for_selector("#applies h4", timeout=30_000)
    text = page.inner_text("main")
    assert "rps" in text and "inbound from" in text and "outbound to" in text
    assert "reviews-v2-" in text  # an instance
    assert "DestinationRule reviews" in text
    page.screenshot(path=str(tmp_path / "workload.png"), full_page=True)
    ghost = tmp_path / "ghost.yaml"
    ghost.write_text(GHOST)
    running.mesh.cli("apply", "-f", str(ghost))
    page.goto(running.url + "/dashboard/#/config")
    page.wait_for_selector("tr.config", timeout=30_000)
    rows = {
        tuple(r.split("\t")[:3]): r.split("\t")[3]
        for r in page.locator("tr.config").all_inner_texts()
    }
    assert rows[("VirtualService", "default", "reviews")] == "ok"
    assert rows[("VirtualService", "default", "ghost")] == (  # istioctl analyze's words
        'Error [IST0101]: Referenced host+subset in destinationrule not found: "reviews+v9"'
    )
    page.screenshot(path=str(tmp_path / "config.png"), full_page=True)


def test_releases_shows_a_canarys_weight_move_and_steers_it_with_the_token(
    running: Running, browser: Any, tmp_path: Path
) -> None:
    canary = tmp_path / "canary.yaml"
    canary.write_text(CANARY)
    running.mesh.cli("apply", "-f", str(canary))
    write_status(running, 10)
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    token = (running.mesh.tmp / "data" / "token").read_text().strip()
    page.on("dialog", lambda dialog: dialog.accept(token))
    page.goto(running.url + "/dashboard/#/releases")
    weight = page.locator('div.canary[data-name="default/podinfo"] .weight')
    wait_for(lambda: weight.inner_text() == "10%", 20, "the weight is not shown")
    write_status(running, 30)
    wait_for(lambda: weight.inner_text() == "30%", 20, "the weight did not move on the page")
    checks = page.locator('div.canary[data-name="default/podinfo"] tr.check')
    assert checks.nth(0).inner_text().split() == [
        "FAIL",
        "request-success-rate",
        "97.50",
        "≥",
        "99",
    ]
    assert checks.nth(1).inner_text().split() == ["ok", "request-duration", "120.00", "≤", "500"]
    page.screenshot(path=str(tmp_path / "releases.png"), full_page=True)
    page.click('div.canary[data-name="default/podinfo"] button[data-action="promote"]')
    wait_for(lambda: "promote sent" in page.inner_text("#status"), 20, "promote failed")
    live = running.get("/apis/flagger.app/v1beta1/namespaces/default/canaries/podinfo")
    assert "rollout.pilotfish.dev/promote" in live["metadata"]["annotations"]
    assert page.evaluate("sessionStorage.getItem('pilotfish-token')") == token
    assert page.evaluate("localStorage.length") == 0


def write_status(running: Running, weight: int) -> None:
    """The Canary's status as the controller would write it, through the API."""
    path = "/apis/flagger.app/v1beta1/namespaces/default/canaries/podinfo"
    live = running.get(path)
    analysis = {
        "time": "2026-01-01T00:00:00Z",
        "metrics": [
            {"name": "request-success-rate", "value": 97.5, "min": 99, "max": None},
            {"name": "request-duration", "value": 120.0, "min": None, "max": 500},
        ],
    }
    live["status"] = {
        **(live.get("status") or {}),
        "phase": "Progressing",
        "canaryWeight": weight,
        "lastAnalysis": analysis,
    }
    token = (running.mesh.tmp / "data" / "token").read_text().strip()
    request = urllib.request.Request(
        running.url + path + "/status",
        data=json.dumps(live).encode(),
        method="PUT",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    DIRECT.open(request, timeout=10).read()


def inbound_requests(running: Running, workload: str) -> float:
    """What the workload's sidecars counted, straight from their admin ports."""
    total = 0.0
    for item in running.get("/api/v1/registry/instances")["items"]:
        if item["workload"] != workload:
            continue
        url = f"http://{item['address']}:{item['metricsPort']}/stats/prometheus"
        with DIRECT.open(url, timeout=10) as answer:
            text = answer.read().decode()
        total += sum(
            s.value
            for s in samples(text, ("istio_requests_total",))
            if s.labels.get("reporter") == "destination"
        )
    return total


def test_stat_agrees_with_the_sidecars_counters_over_the_same_window(
    running: Running, tmp_path: Path
) -> None:
    running.traffic.clear()
    time.sleep(25)  # the background traffic falls out of a 30 s window
    before = inbound_requests(running, "productpage-v1")
    for _ in range(20):
        DIRECT.open(f"http://127.0.0.1:{running.gateway_port}/productpage", timeout=10).read()
    time.sleep(11)  # two sampler passes
    after = inbound_requests(running, "productpage-v1")
    out = running.mesh.cli("stat", "workloads", "productpage-v1", "-t", "30s", "-o", "json")
    table = running.mesh.cli("stat", "workloads", "-t", "30s")
    running.traffic.set()
    (tmp_path / "stat.txt").write_text(table)
    (row,) = json.loads(out)
    assert after - before == 20
    assert row["requests"] == after - before
    assert row["rps"] == pytest.approx(20 / 30)
    assert row["success"] == 1.0
    assert row["meshed"] == "1/1"
    head, *rows = table.splitlines()
    assert head.split() == [
        "NAME",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ]
    productpage = next(r.split() for r in rows if r.startswith("productpage-v1"))
    assert productpage[1:4] == ["1/1", "100.00%", "0.7rps"]


def test_releases_shows_the_weight_move_while_a_release_runs(
    running: Running, browser: Any, tmp_path: Path
) -> None:
    """Last in this module: it hands reviews over to a Canary, as `pilotfish
    demo --canary` does, and releases reviews v3."""
    mesh = running.mesh
    for workload in ("reviews-v1", "reviews-v2", "reviews-v3"):
        mesh.cli("delete", "workloads", workload)
    mesh.cli("delete", "virtualservices", "reviews")
    mesh.cli("delete", "destinationrules", "reviews")
    examples = REPO / "examples" / "canary"
    for name in ("10-reviews.yaml", "20-canary.yaml", "release-v3.yaml"):
        text = (
            (examples / name).read_text().replace("127.0.0.1:15080", f"127.0.0.1:{mesh.api_port}")
        )
        (tmp_path / name).write_text(text)
    mesh.cli(
        "apply", "-f", str(tmp_path / "10-reviews.yaml"), "-f", str(tmp_path / "20-canary.yaml")
    )
    path = "/apis/flagger.app/v1beta1/namespaces/default/canaries/reviews"
    wait_for(
        lambda: (running.get(path).get("status") or {}).get("phase") == "Initialized",
        120,
        "the Canary did not initialize",
    )
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(running.url + "/dashboard/#/releases")
    weight = page.locator('div.canary[data-name="default/reviews"] .weight')
    wait_for(lambda: weight.count() and weight.inner_text() == "0%", 20, "no Canary on the page")
    mesh.cli("apply", "-f", str(tmp_path / "release-v3.yaml"))
    seen: list[str] = []

    def moved() -> bool:
        shown = weight.inner_text()
        if not seen or seen[-1] != shown:
            seen.append(shown)
        return "20%" in seen

    wait_for(moved, 120, f"the weight did not move on the page: {seen}")
    assert "10%" in seen and seen.index("10%") < seen.index("20%")
    page.screenshot(path=str(tmp_path / "releases-running.png"), full_page=True)


BOOKINFO_SERVICES = {"productpage.default", "details.default", "reviews.default", "ratings.default"}


def _whole_page_load(running: Running) -> str | None:
    """The id of a trace the sidecars reported (examples/bookinfo traces every
    request) with a span from the gateway and from each Bookinfo service."""
    found = running.get("/api/traces?service=productpage.default&limit=20")
    for trace in found["data"]:
        names = {p["serviceName"] for p in trace["processes"].values()}
        if names >= BOOKINFO_SERVICES and len(names) >= 5:
            return str(trace["traceID"])
    return None


def test_a_page_load_is_one_trace_of_five_hops_on_the_traces_page(
    running: Running, browser: Any, tmp_path: Path
) -> None:
    """No collector but the control plane's own: the demo's sidecars send
    their spans to it, and the Traces page draws one page load whole."""
    trace_id = wait_for(lambda: _whole_page_load(running), 60, "no whole page load traced")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(running.url + f"/dashboard/#/trace/{trace_id}")
    page.wait_for_selector("svg.waterfall g.span", timeout=30_000)
    services = set(page.eval_on_selector_all("g.span", "els => els.map(e => e.dataset.service)"))
    assert services >= BOOKINFO_SERVICES and len(services) >= 5, services
    page.screenshot(path=str(tmp_path / "trace.png"), full_page=True)
