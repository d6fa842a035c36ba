"""Envoy's own stats, as `/stats` text and as `envoy_*` Prometheus families."""

from __future__ import annotations

from telemetry_fixtures import bootstrap_node, families, samples

from pilotfish.proxy.stats import (
    StatsRegistry,
    count_status,
    listener_stat_name,
    prometheus_page,
)
from pilotfish.proxy.telemetry import Telemetry, WorkloadInfo, service_from_cluster_name

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


def busy_registry() -> StatsRegistry:
    stats = StatsRegistry()
    cluster = stats.cluster(REVIEWS)
    for code in (200, 200, 201, 404, 503):
        cluster.upstream_rq_total += 1
        count_status(cluster, code)
    cluster.upstream_rq_retry += 2
    http = stats.http("outbound_0.0.0.0_15001")
    http.downstream_rq_total += 2
    count_status(http, 200)
    count_status(http, 404)
    http.downstream_cx_active = 1
    stats.listener(listener_stat_name("0.0.0.0", 15001)).downstream_cx_total += 4
    stats.state = lambda: {  # what the live cluster and server say when read
        ("cluster", REVIEWS): {
            "upstream_cx_active": 3,
            "upstream_rq_pending_overflow": 1,
            "outlier_detection.ejections_active": 1,
            "circuit_breakers.default.rq_open": 0,
        },
        ("cluster", "idle"): {"membership_total": 2},
        ("server", "server"): {"live": 1},
    }
    return stats


def test_stats_text_is_envoys_name_colon_value_sorted() -> None:
    lines = busy_registry().text().decode().splitlines()
    assert lines == sorted(lines)
    values = dict(line.split(": ") for line in lines)
    assert values[f"cluster.{REVIEWS}.upstream_rq_total"] == "5"
    assert values[f"cluster.{REVIEWS}.upstream_rq_2xx"] == "3"
    assert values[f"cluster.{REVIEWS}.upstream_rq_200"] == "2"
    assert values[f"cluster.{REVIEWS}.upstream_rq_5xx"] == "1"
    assert values[f"cluster.{REVIEWS}.upstream_rq_completed"] == "5"
    assert values[f"cluster.{REVIEWS}.upstream_rq_retry"] == "2"
    assert values[f"cluster.{REVIEWS}.upstream_rq_pending_overflow"] == "1"
    assert values[f"cluster.{REVIEWS}.upstream_cx_active"] == "3"
    assert values[f"cluster.{REVIEWS}.outlier_detection.ejections_active"] == "1"
    assert values[f"cluster.{REVIEWS}.circuit_breakers.default.rq_open"] == "0"
    assert values["http.outbound_0.0.0.0_15001.downstream_rq_4xx"] == "1"
    assert values["listener.0.0.0.0_15001.downstream_cx_total"] == "4"
    assert values["server.live"] == "1"
    assert values["cluster.idle.membership_total"] == "2"  # configured, no request yet


def test_prometheus_families_use_istios_tag_names() -> None:
    exposition = busy_registry().prometheus()
    wire = exposition.decode().splitlines()
    assert (
        f'envoy_cluster_upstream_rq{{response_code_class="2xx",cluster_name="{REVIEWS}"}} 3' in wire
    )
    assert f'envoy_cluster_upstream_rq_retry{{cluster_name="{REVIEWS}"}} 2' in wire
    # prometheus_client reads a counter sample as `<family>_total`, as
    # OpenMetrics names them; on the wire Envoy's counters keep their names.
    found = samples(exposition)
    cluster = ("cluster_name", REVIEWS)
    assert found["envoy_cluster_upstream_rq_total", frozenset({cluster})] == 5
    rq = "envoy_cluster_upstream_rq_total"
    assert found[rq, frozenset({cluster, ("response_code_class", "2xx")})] == 3
    assert found[rq, frozenset({cluster, ("response_code", "201")})] == 1
    assert found["envoy_cluster_upstream_cx_active", frozenset({cluster})] == 3
    assert found["envoy_cluster_upstream_rq_pending_overflow_total", frozenset({cluster})] == 1
    assert found["envoy_cluster_outlier_detection_ejections_active", frozenset({cluster})] == 1
    http = ("http_conn_manager_prefix", "outbound_0.0.0.0_15001")
    downstream = "envoy_http_downstream_rq_total"
    assert found[downstream, frozenset({http, ("response_code_class", "4xx")})] == 1
    assert found["envoy_http_downstream_cx_active", frozenset({http})] == 1
    listener = ("listener_address", "0.0.0.0_15001")
    assert found["envoy_listener_downstream_cx_total", frozenset({listener})] == 4
    assert found["envoy_server_live", frozenset()] == 1


def test_gauges_and_counters_are_typed() -> None:
    kinds = families(busy_registry().prometheus())
    assert kinds["envoy_cluster_upstream_cx_active"] == "gauge"
    assert kinds["envoy_cluster_membership_total"] == "gauge"
    assert kinds["envoy_cluster_circuit_breakers_default_rq_open"] == "gauge"
    assert kinds["envoy_server_live"] == "gauge"
    assert kinds["envoy_cluster_upstream_rq_retry"] == "counter"
    assert kinds["envoy_cluster_upstream_rq"] == "counter"


def test_a_removed_cluster_leaves_the_stats() -> None:
    stats = busy_registry()
    stats.remove_cluster(REVIEWS)
    stats.state = dict
    assert REVIEWS not in stats.text().decode()


def test_ipv6_listener_names_are_bracketed() -> None:
    assert listener_stat_name("::1", 15001) == "[::1]_15001"


def test_admin_page_has_istio_and_envoy_families_together() -> None:
    telemetry = Telemetry(WorkloadInfo.from_node(bootstrap_node()))
    telemetry.outbound.record(WorkloadInfo(), service_from_cluster_name(REVIEWS), 200, "", 1, 0, 0)
    kinds = families(prometheus_page(telemetry, busy_registry()))
    assert kinds["istio_requests"] == "counter"
    assert kinds["envoy_cluster_upstream_rq_retry"] == "counter"
    assert prometheus_page(None, None) == b""
