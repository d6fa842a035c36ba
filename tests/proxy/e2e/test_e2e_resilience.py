"""Resilience through a real proxy: retries, upstream failures and their
response flags, timeouts, outlier detection and circuit breakers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from harness import (
    access_log_lines,
    admin_clusters_health,
    closed_port,
    curl,
    curl_many,
    free_port,
    listener,
    route,
    static_cluster,
    timed_curl,
    vhost,
    wait_for,
)


def one_route_proxy(start_proxy, cluster, action=None, access_log=None):
    """A proxy whose only route sends everything to `cluster`; its port."""
    port = free_port()
    start_proxy(
        [
            listener(
                "in",
                port,
                [vhost("all", ["*"], [route(cluster["name"], action=action)])],
                access_log=access_log,
            )
        ],
        [cluster],
    )
    return port


def test_retries_hide_a_first_attempt_failure(start_proxy, make_backend) -> None:
    flaky = make_backend("flaky", fail_first=1)
    port = one_route_proxy(
        start_proxy,
        static_cluster("flaky", [flaky.port]),
        {"retry_policy": {"retry_on": "5xx", "num_retries": 2}},
    )
    r = curl(f"http://127.0.0.1:{port}/")
    assert (r.status, r.text) == (200, "flaky\n")
    assert flaky.count == 2


@pytest.mark.parametrize(
    ("retry_policy", "fail_status"),
    [
        ({"retry_on": "gateway-error", "num_retries": 1}, 502),
        ({"retry_on": "retriable-4xx", "num_retries": 1}, 409),
        (
            {
                "retry_on": "retriable-status-codes",
                "retriable_status_codes": [418],
                "num_retries": 1,
            },
            418,
        ),
    ],
    ids=["gateway-error", "retriable-4xx", "retriable-status-codes"],
)
def test_retry_on_conditions(start_proxy, make_backend, retry_policy, fail_status) -> None:
    flaky = make_backend("flaky", fail_first=1, fail_status=fail_status)
    port = one_route_proxy(
        start_proxy, static_cluster("flaky", [flaky.port]), {"retry_policy": retry_policy}
    )
    r = curl(f"http://127.0.0.1:{port}/")
    assert (r.status, r.text) == (200, "flaky\n")
    assert flaky.count == 2


def test_not_retried_when_condition_does_not_match(start_proxy, make_backend) -> None:
    flaky = make_backend("flaky", fail_first=1, fail_status=500)
    port = one_route_proxy(
        start_proxy,
        static_cluster("flaky", [flaky.port]),
        {"retry_policy": {"retry_on": "gateway-error", "num_retries": 3}},
    )
    r = curl(f"http://127.0.0.1:{port}/")
    assert (r.status, r.text) == (500, "flaky failing\n")
    assert flaky.count == 1


def test_retries_exhausted_answer_the_upstream_503_with_urx(
    start_proxy, make_backend, tmp_path: Path
) -> None:
    broken = make_backend("broken", always_status=503)
    log = tmp_path / "access.log"
    port = one_route_proxy(
        start_proxy,
        static_cluster("broken", [broken.port]),
        {"retry_policy": {"retry_on": "5xx", "num_retries": 2}},
        access_log=str(log),
    )
    r = curl(f"http://127.0.0.1:{port}/")
    # The caller gets the upstream's own last answer.
    assert (r.status, r.text, r.header("x-backend")) == (503, "broken failing\n", "broken")
    assert broken.count == 3  # the first try and two retries
    [line] = access_log_lines(log, 1)
    assert line["response_code"] == 503
    assert "URX" in line["response_flags"].split(",")


def test_connect_failure_is_503_uf(start_proxy) -> None:
    port = one_route_proxy(start_proxy, static_cluster("gone", [closed_port()]))
    r, elapsed = timed_curl(f"http://127.0.0.1:{port}/")
    assert r.status == 503
    assert r.flags == "UF"
    assert elapsed < 2


def test_no_endpoints_is_503_uh(start_proxy) -> None:
    port = one_route_proxy(start_proxy, static_cluster("empty", []))
    r = curl(f"http://127.0.0.1:{port}/")
    assert r.status == 503
    assert r.flags == "UH"


def test_per_try_timeout_retries_then_504_ut(start_proxy, make_backend) -> None:
    slow = make_backend("slow", delay=1.5)
    port = one_route_proxy(
        start_proxy,
        static_cluster("slow", [slow.port]),
        {
            "timeout": "10s",
            "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.3s"},
        },
    )
    r, elapsed = timed_curl(f"http://127.0.0.1:{port}/")
    assert r.status == 504
    assert "UT" in (r.flags or "").split(",")
    assert elapsed < 1.4  # two tries of 0.3 s, not the backend's 1.5 s
    assert wait_for(lambda: slow.count == 2, timeout=2)


def test_route_timeout_is_504_ut(start_proxy, make_backend) -> None:
    slow = make_backend("slow", delay=1.5)
    port = one_route_proxy(start_proxy, static_cluster("slow", [slow.port]), {"timeout": "0.3s"})
    r, elapsed = timed_curl(f"http://127.0.0.1:{port}/")
    assert r.status == 504
    assert r.flags == "UT"
    assert 0.25 < elapsed < 1.2


def test_max_stream_duration_is_504_dt_with_envoys_details(
    start_proxy, make_backend, tmp_path: Path
) -> None:
    """A route's max_stream_duration ends the stream as Envoy's connection
    manager does: 504 (the request had all come), `downstream duration
    timeout`, flag DT, details max_duration_timeout; no grpc-status for a
    plain HTTP caller. The sooner of it and the route timeout wins."""
    slow = make_backend("slow", delay=1.5)
    log = tmp_path / "access.log"
    action = {"timeout": "10s", "max_stream_duration": {"max_stream_duration": "0.3s"}}
    port = one_route_proxy(start_proxy, static_cluster("slow", [slow.port]), action, str(log))
    r, elapsed = timed_curl(f"http://127.0.0.1:{port}/")
    assert (r.status, r.flags, r.body) == (504, "DT", b"downstream duration timeout")
    assert r.header("grpc-status") is None
    assert 0.25 < elapsed < 1.2
    [line] = access_log_lines(log, 1)
    assert (line["response_flags"], line["response_code_details"]) == ("DT", "max_duration_timeout")


def test_a_route_timeout_sooner_than_max_stream_duration_is_504_ut(
    start_proxy, make_backend
) -> None:
    slow = make_backend("slow", delay=1.5)
    action = {"timeout": "0.3s", "max_stream_duration": {"max_stream_duration": "5s"}}
    port = one_route_proxy(start_proxy, static_cluster("slow", [slow.port]), action)
    r, _ = timed_curl(f"http://127.0.0.1:{port}/")
    assert (r.status, r.flags) == (504, "UT")


def test_a_longer_route_timeout_fires_on_time_too(start_proxy, make_backend) -> None:
    # Past exchange.PRECISE_WITHIN_S the timer is armed by the connections' sweep.
    slow = make_backend("slow", delay=3)
    port = one_route_proxy(start_proxy, static_cluster("slow", [slow.port]), {"timeout": "1.2s"})
    r, elapsed = timed_curl(f"http://127.0.0.1:{port}/")
    assert (r.status, r.flags) == (504, "UT")
    assert 1.15 < elapsed < 1.6


def test_outlier_detection_ejects_and_brings_back(start_proxy, make_backend) -> None:
    good, bad = make_backend("good"), make_backend("bad", always_status=503)
    proxy_port = free_port()
    cluster = static_cluster(
        "svc",
        [good.port, bad.port],
        outlier_detection={
            "consecutive_5xx": 3,
            "interval": "0.1s",
            "base_ejection_time": "1s",
            "max_ejection_percent": 50,
        },
    )
    proxy = start_proxy(
        [listener("in", proxy_port, [vhost("all", ["*"], [route("svc")])])], [cluster]
    )
    url = f"http://127.0.0.1:{proxy_port}/"
    bad_host = f"127.0.0.1:{bad.port}"

    def health() -> dict[str, str]:
        return admin_clusters_health(proxy.admin_get("/clusters")[1], "svc")

    assert health() == {f"127.0.0.1:{good.port}": "healthy", bad_host: "healthy"}
    for _ in range(8):  # round robin: the bad endpoint sees its third 5xx in a row
        curl(url)
    assert bad.count == 3
    assert "failed_outlier_check" in health()[bad_host]
    # While ejected, everything goes to the good one.
    results = curl_many([url] * 20, parallel=4)
    assert Counter(h["x-backend"] for _, h in results) == {"good": 20}
    assert bad.count == 3
    # It heals; after base_ejection_time it is back in rotation.
    bad.always_status = None
    assert wait_for(lambda: health()[bad_host] == "healthy", timeout=4), health()
    results = curl_many([url] * 10, parallel=1)
    assert Counter(h["x-backend"] for _, h in results) == {"good": 5, "bad": 5}


def test_circuit_breaker_overflow_is_503_uo(start_proxy, make_backend) -> None:
    slow = make_backend("slow", delay=0.8)
    cluster = static_cluster(
        "slow",
        [slow.port],
        circuit_breakers={
            "thresholds": [
                {
                    "max_connections": 1,
                    "max_pending_requests": 1,
                    "max_requests": 1,
                    "max_retries": 1,
                }
            ]
        },
    )
    port = one_route_proxy(start_proxy, cluster)
    results = curl_many(
        [f"http://127.0.0.1:{port}/"] * 8, fields=("x-pilotfish-flags", "%{time_total}"), parallel=8
    )
    ok = [r for r in results if r[0] == 200]
    overflow = [r for r in results if r[0] == 503]
    assert len(ok) + len(overflow) == 8, results
    assert 1 <= len(ok) <= 2, results  # one in flight, at most one pending
    assert len(overflow) >= 6, results
    for _, fields in overflow:
        assert fields["x-pilotfish-flags"] == "UO"
        assert float(fields["%{time_total}"]) < 0.5  # answered at once, not queued
