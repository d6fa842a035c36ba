"""The /clusters admin text, in Envoy's `cluster::host::field::value` format."""

from upstream_kit import level, localities, make_cluster

from pilotfish.proxy.upstream import render_clusters


def test_clusters_text_lists_hosts_with_health_and_counters() -> None:
    c = make_cluster(
        localities(level(0, 2), level(1, 0, unhealthy=1, base=100)),
        outlier_detection={"max_ejection_percent": 100},
    )
    h = c.hosts[0]
    h.request_started()
    for _ in range(5):
        c.report(h, 503, 1.0)
    lines = render_clusters([c]).splitlines()
    assert "svc::default_priority::max_connections::1024" in lines
    assert "svc::high_priority::max_retries::3" in lines
    assert "svc::10.0.0.1:8000::rq_active::1" in lines
    assert "svc::10.0.0.1:8000::rq_error::5" in lines
    assert "svc::10.0.0.1:8000::health_flags::/failed_outlier_check" in lines
    assert "svc::10.0.0.1:8001::health_flags::healthy" in lines
    assert "svc::10.0.0.1:8100::health_flags::/failed_eds_health" in lines
    assert "svc::10.0.0.1:8100::priority::1" in lines
    assert "svc::10.0.0.1:8000::weight::1" in lines
