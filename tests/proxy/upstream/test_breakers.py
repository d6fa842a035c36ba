"""Circuit breakers: overflow is refused at once and counted; releasing makes room."""

from upstream_kit import level, localities, make_cluster

from pilotfish.proxy.upstream import CircuitBreakers, Thresholds
from pilotfish.proxy.upstream.breakers import RetryBudget


def test_envoy_defaults() -> None:
    c = make_cluster(localities(level(0, 1)))
    t = c.breakers.thresholds
    assert (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries) == (
        1024,
        1024,
        1024,
        3,
    )


def test_request_overflow_and_release() -> None:
    c = make_cluster(
        localities(level(0, 1)),
        circuit_breakers={"thresholds": [{"max_requests": 2, "max_retries": 1}]},
    )
    b = c.breakers
    assert b.try_acquire_request() and b.try_acquire_request()
    assert not b.try_acquire_request()
    assert c.stats()["upstream_rq_pending_overflow"] == 1
    assert c.stats()["circuit_breakers.default.rq_open"] == 1
    b.release_request()
    assert b.try_acquire_request()
    assert b.try_acquire_retry() and not b.try_acquire_retry()
    assert c.stats()["upstream_rq_retry_overflow"] == 1


def test_pending_and_connection_limits() -> None:
    b = CircuitBreakers(Thresholds(max_connections=1, max_pending_requests=1))
    assert b.try_acquire_connection() and not b.try_acquire_connection()
    assert b.try_acquire_pending() and not b.try_acquire_pending()
    b.release_connection(), b.release_pending()
    assert b.try_acquire_connection() and b.try_acquire_pending()
    assert b.counters()["upstream_cx_overflow"] == 1
    assert b.counters()["upstream_rq_pending_overflow"] == 1


def test_high_priority_thresholds_are_separate() -> None:
    c = make_cluster(
        localities(level(0, 1)),
        circuit_breakers={
            "thresholds": [{"max_requests": 1}, {"priority": "HIGH", "max_requests": 5}]
        },
    )
    assert c.breakers_for(False).thresholds.max_requests == 1
    assert c.breakers_for(True).thresholds.max_requests == 5


def test_retry_budget_scales_with_requests_in_flight() -> None:
    b = CircuitBreakers(
        Thresholds(retry_budget=RetryBudget(budget_percent=50, min_retry_concurrency=1))
    )
    for _ in range(10):
        b.try_acquire_request()
    assert b.max_retries() == 5


def test_remaining_gauges_when_tracked() -> None:
    b = CircuitBreakers(Thresholds(max_requests=3, track_remaining=True))
    b.try_acquire_request()
    assert b.gauges()["circuit_breakers.default.remaining_rq"] == 2
