"""The dashboard's Traces page in Debian's headless Chromium: spans made by the
OpenTelemetry SDK across five services (eight hops, parent links) are posted
to the control plane's OTLP receiver; the search finds the trace, its
waterfall draws every span with its attributes, and a workload's page lists
its recent traces. Screenshots are saved under the test's tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.controlplane.conftest import plane  # noqa: F401  (a real control plane, port 0)
from tests.controlplane.otel_spans import BOOKINFO_HOPS, export_trace

from pilotfish.controlplane.main import ControlPlane

from .test_dashboard_e2e import browser  # noqa: F401  (Debian's Chromium, headless)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium"),
]
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def page(browser: Any) -> Any:  # noqa: F811  (the dashboard tests' Chromium)
    return browser.new_page(viewport={"width": 1200, "height": 900})


def test_the_traces_page_finds_a_trace_and_draws_every_span(
    plane: ControlPlane,  # noqa: F811  (the fixture imported above)
    page: Any,
    tmp_path: Path,
) -> None:
    url = plane.server.url
    export_trace(url + "/v1/traces")  # an older, healthy page load
    failed = export_trace(url + "/v1/traces", error_at=7)

    page.goto(url + "/dashboard/#/traces")
    page.wait_for_selector("#find-traces")
    page.select_option('select[name="service"]', "ratings.default")
    page.select_option('select[name="status"]', "error")
    page.click("#find-traces")
    page.wait_for_selector("tr.trace-result")
    rows = page.locator("tr.trace-result")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-trace-id") == failed.trace_id
    cells = rows.first.inner_text().split("\t")
    assert cells[0].startswith("istio-ingressgateway.istio-system: productpage")
    assert cells[1:4] == ["8", "5", "1"]  # spans, services, errors
    page.screenshot(path=str(tmp_path / "traces-search.png"), full_page=True)

    rows.first.locator("a").click()
    page.wait_for_selector("svg.waterfall g.span")
    drawn = page.eval_on_selector_all("g.span", "els => els.map(e => e.dataset.spanId)")
    assert drawn == failed.span_ids  # call order: each child under its parent
    services = page.eval_on_selector_all("g.span", "els => els.map(e => e.dataset.service)")
    assert services == [hop[0] for hop in BOOKINFO_HOPS]
    errors = page.eval_on_selector_all("g.span", "els => els.map(e => e.dataset.error)")
    assert errors == ["false"] * 7 + ["true"]

    page.click(f'g.span[data-span-id="{failed.span_ids[7]}"]')
    details = page.locator(f'details[data-span-id="{failed.span_ids[7]}"]')
    assert details.get_attribute("open") is not None
    text = details.inner_text()
    assert "istio.canonical_service\tratings" in text
    assert "http.status_code\t500" in text
    assert "otel.status_description\tupstream failed" in text
    assert page.locator("details.span-attrs").count() == len(BOOKINFO_HOPS)
    page.screenshot(path=str(tmp_path / "trace-waterfall.png"), full_page=True)

    page.goto(url + "/dashboard/#/workload/default/reviews-v2")
    page.wait_for_selector("#recent-traces tr.trace-result", timeout=30_000)
    listed = page.eval_on_selector_all(
        "#recent-traces tr.trace-result", "els => els.map(e => e.dataset.traceId)"
    )
    assert listed[0] == failed.trace_id and len(listed) == 2
    page.screenshot(path=str(tmp_path / "workload-traces.png"), full_page=True)


def test_a_bad_search_shows_jaegers_message(
    plane: ControlPlane,  # noqa: F811  (the fixture imported above)
    page: Any,
) -> None:
    export_trace(plane.server.url + "/v1/traces")
    page.goto(plane.server.url + "/dashboard/#/traces?service=ratings.default&minDuration=fast")
    page.wait_for_selector("#results p.bad")
    assert "malformed parameter minDuration" in page.inner_text("#results")
