"""More of the xDS subset through a real proxy: local rate limit, CORS,
load-balancing policies, priorities, connect-failure retries and the DC
flag."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import (
    access_log_lines,
    closed_port,
    curl,
    curl_many,
    free_port,
    listener,
    route,
    static_cluster,
    vhost,
    wait_for,
)
from tests.proxy.filters.filters_sim import ALLOW_GET, RBAC_PER_ROUTE_T

RATELIMIT_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)
CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


def test_local_rate_limit_is_429_rl(start_proxy, make_backend) -> None:
    svc = make_backend("svc")
    port = free_port()
    ratelimit = {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": RATELIMIT_TYPE,
            "stat_prefix": "http_local_rate_limiter",
            "token_bucket": {"max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "60s"},
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        },
    }
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("svc")])], http_filters=[ratelimit])],
        [static_cluster("svc", [svc.port])],
    )
    statuses = [curl(f"http://127.0.0.1:{port}/") for _ in range(6)]
    assert [r.status for r in statuses] == [200, 200, 200, 429, 429, 429]
    assert all(r.flags == "RL" for r in statuses[3:])
    assert svc.count == 3


def test_cors_preflight_answered_by_the_proxy(start_proxy, make_backend) -> None:
    svc = make_backend("svc")
    port = free_port()
    policy = {
        "envoy.filters.http.cors": {
            "@type": CORS_POLICY_TYPE,
            "allow_origin_string_match": [{"exact": "https://app.test"}],
            "allow_methods": "GET,POST",
            "allow_headers": "content-type,x-custom",
            "max_age": "600",
        }
    }
    start_proxy(
        [
            listener(
                "in",
                port,
                [vhost("all", ["*"], [route("svc", typed_per_filter_config=policy)])],
                http_filters=[
                    {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS_TYPE}}
                ],
            )
        ],
        [static_cluster("svc", [svc.port])],
    )
    url = f"http://127.0.0.1:{port}/api"
    preflight = curl(
        url,
        "-X",
        "OPTIONS",
        headers={"Origin": "https://app.test", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 200
    assert preflight.header("access-control-allow-origin") == "https://app.test"
    assert "POST" in (preflight.header("access-control-allow-methods") or "")
    assert preflight.header("access-control-max-age") == "600"
    assert svc.count == 0  # the preflight never reached the upstream
    simple = curl(url, headers={"Origin": "https://app.test"})
    assert (simple.status, simple.header("access-control-allow-origin")) == (
        200,
        "https://app.test",
    )
    other = curl(url, headers={"Origin": "https://evil.test"})
    assert other.status == 200
    assert other.header("access-control-allow-origin") is None


def lb_proxy(start_proxy, ports: list[int], lb_policy: str) -> int:
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("svc")])])],
        [static_cluster("svc", ports, lb_policy=lb_policy)],
    )
    return port


def test_round_robin_alternates(start_proxy, make_backend) -> None:
    backends = [make_backend(f"b{i}") for i in range(3)]
    port = lb_proxy(start_proxy, [b.port for b in backends], "ROUND_ROBIN")
    picked = [curl(f"http://127.0.0.1:{port}/").header("x-backend") for _ in range(9)]
    assert Counter(picked) == {"b0": 3, "b1": 3, "b2": 3}
    assert all(picked[i] != picked[i + 1] for i in range(8))


@pytest.mark.parametrize("lb_policy", ["RANDOM", "LEAST_REQUEST"])
def test_lb_policy_spreads_load(start_proxy, make_backend, lb_policy: str) -> None:
    backends = [make_backend(f"b{i}") for i in range(3)]
    port = lb_proxy(start_proxy, [b.port for b in backends], lb_policy)
    results = curl_many([f"http://127.0.0.1:{port}/"] * 150, parallel=8)
    spread = Counter(h["x-backend"] for _, h in results)
    # Each of 3 endpoints should get about 50; 20 is far below any fair share.
    assert set(spread) == {"b0", "b1", "b2"} and min(spread.values()) >= 20, spread


def test_priority_failover_skips_unhealthy_priority(start_proxy, make_backend) -> None:
    primary, fallback = make_backend("primary"), make_backend("fallback")
    port = free_port()

    def endpoint(p: int, health: str) -> dict:
        address = {"socket_address": {"address": "127.0.0.1", "port_value": p}}
        return {"endpoint": {"address": address}, "health_status": health}

    cluster = static_cluster("svc", [])
    cluster["load_assignment"]["endpoints"] = [
        {"priority": 0, "lb_endpoints": [endpoint(primary.port, "UNHEALTHY")]},
        {"priority": 1, "lb_endpoints": [endpoint(fallback.port, "HEALTHY")]},
    ]
    start_proxy([listener("in", port, [vhost("all", ["*"], [route("svc")])])], [cluster])
    results = curl_many([f"http://127.0.0.1:{port}/"] * 20, parallel=4)
    assert Counter(h["x-backend"] for _, h in results) == {"fallback": 20}
    assert primary.count == 0


def test_connect_failure_retried_on_another_host(start_proxy, make_backend) -> None:
    alive = make_backend("alive")
    port = free_port()
    start_proxy(
        [
            listener(
                "in",
                port,
                [
                    vhost(
                        "all",
                        ["*"],
                        [
                            route(
                                "svc",
                                action={
                                    "retry_policy": {
                                        "retry_on": "connect-failure",
                                        "num_retries": 2,
                                        "retry_host_predicate": [
                                            {"name": "envoy.retry_host_predicates.previous_hosts"}
                                        ],
                                    }
                                },
                            )
                        ],
                    )
                ],
            )
        ],
        [static_cluster("svc", [closed_port(), alive.port])],
    )
    results = [curl(f"http://127.0.0.1:{port}/") for _ in range(6)]
    assert [(r.status, r.text) for r in results] == [(200, "alive\n")] * 6


def test_downstream_disconnect_logged_dc(start_proxy, make_backend, tmp_path: Path) -> None:
    slow = make_backend("slow", delay=1.0)
    log = tmp_path / "access.log"
    port = free_port()
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("slow")])], access_log=str(log))],
        [static_cluster("slow", [slow.port])],
    )
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: slow.count == 1, timeout=2)
    time.sleep(0.1)
    [line] = access_log_lines(log, 1, timeout=5)
    assert "DC" in line["response_flags"].split(","), json.dumps(line)


def test_rbac_per_route_opens_one_route_of_a_deny_all_listener(start_proxy, make_backend) -> None:
    """Envoy's RBACPerRoute: without `rbac` it turns the filter off for the
    route (a health check under a deny-all policy), with one it replaces the
    listener's rules there."""
    svc = make_backend("svc")
    port = free_port()
    deny_all = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": RBAC_TYPE, "rules": {"action": "ALLOW"}},
    }
    off = {"envoy.filters.http.rbac": {"@type": RBAC_PER_ROUTE_T}}
    own = {"envoy.filters.http.rbac": {"@type": RBAC_PER_ROUTE_T, "rbac": ALLOW_GET}}
    routes = [
        route("svc", prefix="/healthz", typed_per_filter_config=off),
        route("svc", prefix="/read", typed_per_filter_config=own),
        route("svc"),
    ]
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], routes)], http_filters=[deny_all])],
        [static_cluster("svc", [svc.port])],
    )
    base = f"http://127.0.0.1:{port}"
    assert curl(f"{base}/healthz", "-X", "POST").status == 200
    assert curl(f"{base}/read").status == 200
    denied = curl(f"{base}/read", "-X", "POST")
    assert (denied.status, denied.body) == (403, b"RBAC: access denied")
    assert curl(f"{base}/other").status == 403
    assert svc.count == 2
