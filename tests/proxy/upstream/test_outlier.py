"""Outlier detection: consecutive errors eject, time brings hosts back, ejections grow and are capped."""

from collections import Counter

from upstream_kit import level, localities, make_cluster

from pilotfish.proxy.upstream import Cluster, LocalOrigin


def cluster(n: int = 10, **outlier: object) -> Cluster:
    config = {"interval": "10s", "base_ejection_time": "30s", **outlier}
    return make_cluster(localities(level(0, n)), outlier_detection=config)


def fail(c: Cluster, host: object, times: int, now: float, status: int = 500) -> None:
    for _ in range(times):
        c.report(host, status, now)  # type: ignore[arg-type]


def test_five_consecutive_5xx_eject_the_host() -> None:
    c = cluster()
    bad = c.hosts[0]
    fail(c, bad, 4, 1.0)
    assert not bad.ejected
    fail(c, bad, 1, 1.0)
    assert bad.ejected and bad.health_flags() == "/failed_outlier_check"
    assert bad not in Counter(c.pick() for _ in range(500))
    assert c.stats()["outlier_detection.ejections_enforced_consecutive_5xx"] == 1


def test_a_success_resets_the_count() -> None:
    c = cluster()
    bad = c.hosts[0]
    fail(c, bad, 4, 1.0)
    c.report(bad, 200, 1.0)
    fail(c, bad, 4, 1.0)
    assert not bad.ejected


def test_host_returns_after_base_ejection_time_and_second_ejection_lasts_twice_as_long() -> None:
    c = cluster()
    bad = c.hosts[0]
    fail(c, bad, 5, 0.0)
    c.tick(20.0)
    assert bad.ejected
    c.tick(30.0)
    assert not bad.ejected
    assert bad in Counter(c.pick() for _ in range(100))
    fail(c, bad, 5, 31.0)
    c.tick(40.0), c.tick(50.0), c.tick(60.0), c.tick(70.0), c.tick(80.0)
    assert bad.ejected  # 60 s this time: back at the check after 91 s
    c.tick(90.0)
    assert bad.ejected
    c.tick(100.0)
    assert not bad.ejected


def test_ejection_time_is_capped_by_max_ejection_time() -> None:
    c = cluster(max_ejection_time="40s", max_ejection_percent=100)
    bad = c.hosts[0]
    now = 0.0
    for _ in range(4):
        fail(c, bad, 5, now)
        assert bad.ejected
        assert bad.ejected_until - now <= 40.0
        now = bad.ejected_until
        c.tick(now)
        assert not bad.ejected


def test_unejection_happens_lazily_on_report_without_a_timer() -> None:
    c = cluster()
    bad, good = c.hosts[0], c.hosts[1]
    fail(c, bad, 5, 0.0)
    c.report(good, 200, 35.0)
    assert not bad.ejected


def test_max_ejection_percent_caps_ejections() -> None:
    c = cluster(n=10, max_ejection_percent=20)
    for h in c.hosts[:5]:
        fail(c, h, 5, 1.0)
    assert sum(h.ejected for h in c.hosts) == 2
    assert c.stats()["outlier_detection.ejections_overflow"] == 3


def test_default_max_ejection_percent_still_ejects_one_host() -> None:
    c = cluster(n=3)
    fail(c, c.hosts[0], 5, 1.0)
    fail(c, c.hosts[1], 5, 1.0)
    assert [h.ejected for h in c.hosts] == [True, False, False]


def test_always_eject_one_host_is_off_unless_set() -> None:
    # A BoolValue in the proto: unset, it is false (the message itself was
    # once taken for the flag, and any message is true).
    off = cluster(n=3, max_ejection_percent=0)
    fail(off, off.hosts[0], 5, 1.0)
    assert not off.hosts[0].ejected
    assert off.stats()["outlier_detection.ejections_overflow"] == 1
    on = cluster(n=3, max_ejection_percent=0, always_eject_one_host=True)
    fail(on, on.hosts[0], 5, 1.0)
    fail(on, on.hosts[1], 5, 1.0)
    assert [h.ejected for h in on.hosts] == [True, False, False]


def test_gateway_failures_are_not_enforced_by_default() -> None:
    c = cluster(consecutive_5xx=100)
    fail(c, c.hosts[0], 5, 1.0, status=503)
    assert not c.hosts[0].ejected
    assert c.stats()["outlier_detection.ejections_detected_consecutive_gateway_failure"] == 1
    c2 = cluster(consecutive_5xx=100, enforcing_consecutive_gateway_failure=100)
    fail(c2, c2.hosts[0], 5, 1.0, status=502)
    assert c2.hosts[0].ejected


def test_enforcing_zero_detects_without_ejecting() -> None:
    c = cluster(enforcing_consecutive_5xx=0)
    fail(c, c.hosts[0], 5, 1.0)
    assert not c.hosts[0].ejected
    assert c.stats()["outlier_detection.ejections_detected_consecutive_5xx"] == 1


def test_connect_failures_count_as_5xx_unless_split() -> None:
    c = cluster()
    for _ in range(5):
        c.report(c.hosts[0], LocalOrigin.CONNECT_FAILED, 1.0)
    assert c.hosts[0].ejected and c.hosts[0].cx_connect_fail == 5
    split = cluster(split_external_local_origin_errors=True, consecutive_local_origin_failure=3)
    fail(split, split.hosts[0], 4, 1.0, status=LocalOrigin.TIMEOUT)
    assert split.hosts[0].ejected
    assert (
        split.stats()["outlier_detection.ejections_enforced_consecutive_local_origin_failure"] == 1
    )


def test_success_rate_ejects_the_outlier_at_the_interval() -> None:
    c = cluster(n=6, max_ejection_percent=50)
    for i, h in enumerate(c.hosts):
        for j in range(100):
            # host 0 fails every other request, never 5 in a row
            c.report(h, 500 if i == 0 and j % 2 else 200, 1.0)
    assert not c.hosts[0].ejected
    c.tick(10.0)
    assert c.hosts[0].ejected and not any(h.ejected for h in c.hosts[1:])
    assert c.hosts[1].success_rate == 100.0


def test_ejection_multiplier_decays_while_healthy() -> None:
    c = cluster()
    bad = c.hosts[0]
    fail(c, bad, 5, 0.0)
    c.tick(30.0)
    assert bad.eject_multiplier == 1
    c.tick(40.0)
    assert bad.eject_multiplier == 0


def test_counters_go_on_across_cds_pushes() -> None:
    """Envoy keeps a cluster's stats by name: a push that leaves the cluster
    as it was changes nothing, and one that changes it keeps the counters."""
    from upstream_kit import cluster_proto

    from pilotfish.proxy.upstream.cluster_set import ClusterSet

    limits = {"thresholds": [{"max_requests": 1}]}
    resource = {"outlier_detection": {"interval": "10s"}, "circuit_breakers": limits}
    proto = cluster_proto(load_assignment=localities(level(0, 3)), **resource)
    clusters = ClusterSet().with_clusters([proto])
    c = clusters.get("svc")
    assert c is not None
    fail(c, c.hosts[0], 5, 1.0)
    assert c.breakers.try_acquire_request() and not c.breakers.try_acquire_request()
    counted = {k: v for k, v in c.stats().items() if "overflow" in k or "enforced" in k}
    assert counted["upstream_rq_pending_overflow"] == 1
    assert counted["outlier_detection.ejections_enforced_total"] == 1

    same = clusters.with_clusters([proto]).get("svc")
    assert same is c and c.hosts[0].ejected and c.breakers.rq_open == 1

    changed = cluster_proto(load_assignment=localities(level(0, 3)), lb_policy="RANDOM", **resource)
    newer = clusters.with_clusters([changed]).get("svc")
    assert newer is not None and newer is not c
    assert {k: newer.stats()[k] for k in counted} == counted
