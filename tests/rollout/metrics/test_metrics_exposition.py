"""Reading the sidecars' Prometheus text pages: the format's corners, and
agreement with prometheus_client's parser on what the proxy really writes."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from tests.rollout.metrics.sidecar_pages import Sidecar

from pilotfish.proxy.telemetry import ServiceInfo, Telemetry, WorkloadInfo, format_labels
from pilotfish.rollout.metrics.builtin import BUCKETS, REQUESTS, read_page, totals
from pilotfish.rollout.metrics.exposition import samples


def test_sample_lines_comments_timestamps_and_escapes() -> None:
    text = (
        "# HELP m A help line.\n"
        "# TYPE m counter\n"
        '\nm{a="q\\"uote",b="x,y}z"} 3\n'
        'm{a="back\\\\slash\\nline",} 4 1700000000000\n'
        "m 5\n"
        'm{a="nan"} NaN\n'
        'm{a="inf"} +Inf\n'
        "m{broken 6\n"
        "other 7\n"
    )
    found = [(s.labels, s.value) for s in samples(text, {"m"})]
    assert found == [
        ({"a": 'q"uote', "b": "x,y}z"}, 3.0),
        ({"a": "back\\slash\nline"}, 4.0),
        ({}, 5.0),
        ({"a": "inf"}, math.inf),
    ]
    assert [s.name for s in samples(text)] == ["m", "m", "m", "m", "other"]


def test_a_name_that_only_starts_like_a_wanted_one_is_not_it() -> None:
    text = "istio_requests_total_extra 1\nistio_requests_total 2\n"
    assert [s.value for s in samples(text, (REQUESTS,))] == [2.0]


def test_agrees_with_prometheus_client_on_a_real_sidecar_page() -> None:
    sidecar = Sidecar()
    sidecar.serve(200, n=5, duration_ms=7)
    sidecar.serve(503, n=2, duration_ms=120)
    sidecar.serve(200, n=3, outbound=True)
    page = sidecar.page()
    ours = {(s.name, frozenset(s.labels.items())): s.value for s in samples(page)}
    theirs = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    assert ours == theirs


@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=30))
def test_any_label_value_the_proxy_escapes_reads_back(value: str) -> None:
    line = f"m{{{format_labels([('peer', value), ('le', '+Inf')])}}} 1\n"
    assert [s.labels for s in samples(line)] == [{"peer": value, "le": "+Inf"}]


def test_a_page_keeps_only_the_inbound_request_series() -> None:
    sidecar = Sidecar()
    sidecar.serve(200, n=8, duration_ms=7)
    sidecar.serve(503, n=2, duration_ms=30)
    sidecar.serve(500, n=99, outbound=True)
    page = read_page(sidecar.page())
    assert {name for name, _ in page} == {REQUESTS, BUCKETS}
    assert all(dict(labels)["reporter"] == "destination" for _, labels in page)
    counted = totals(page)
    assert (counted.requests, counted.ok) == (10, 8)
    assert counted.buckets[5.0] == 0
    assert counted.buckets[10.0] == 8
    assert counted.buckets[50.0] == counted.buckets[math.inf] == 10


def test_an_empty_or_foreign_page_counts_nothing() -> None:
    other = Telemetry(WorkloadInfo(workload="x", namespace="y"))
    other.outbound.record(WorkloadInfo(), ServiceInfo(), 200, "", 1.0, 0, 0)
    for text in ("", "garbage\n{}\n", other.prometheus().decode()):
        assert totals(read_page(text)).requests == 0
