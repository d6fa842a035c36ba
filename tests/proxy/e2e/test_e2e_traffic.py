"""Traffic policies through a real proxy: fault injection, mirroring and
consistent hashing."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest
from harness import (
    access_log_lines,
    closed_port,
    curl,
    curl_many,
    fault_filter,
    fault_per_route,
    free_port,
    listener,
    route,
    static_cluster,
    timed_curl,
    vhost,
    wait_for,
)


def fault_proxy(start_proxy, backend, per_route, access_log=None) -> int:
    port = free_port()
    start_proxy(
        [
            listener(
                "in",
                port,
                [vhost("all", ["*"], [route("svc", typed_per_filter_config=per_route)])],
                http_filters=[fault_filter()],
                access_log=access_log,
            )
        ],
        [static_cluster("svc", [backend.port])],
    )
    return port


def test_fault_abort_percentage(start_proxy, make_backend) -> None:
    backend = make_backend("svc")
    port = fault_proxy(start_proxy, backend, fault_per_route(abort_status=503, abort_percent=50))
    n = 200
    results = curl_many([f"http://127.0.0.1:{port}/"] * n)
    aborted = [h for status, h in results if status == 503]
    passed = [h for status, h in results if status == 200]
    assert len(aborted) + len(passed) == n
    # Binomial(200, 0.5): mean 100, sd 7.1; five sd either side.
    assert 65 <= len(aborted) <= 135, len(aborted)
    assert all(h["x-pilotfish-flags"] == "FI" and h["x-backend"] == "" for h in aborted)
    assert all(h["x-backend"] == "svc" for h in passed)
    assert backend.count == len(passed)  # aborted requests never reach the upstream


def test_fault_fixed_delay(start_proxy, make_backend, tmp_path: Path) -> None:
    backend = make_backend("svc")
    log = tmp_path / "access.log"
    port = fault_proxy(start_proxy, backend, fault_per_route(delay="0.5s"), access_log=str(log))
    r, elapsed = timed_curl(f"http://127.0.0.1:{port}/")
    assert (r.status, r.text) == (200, "svc\n")
    assert 0.5 <= elapsed < 1.5
    [line] = access_log_lines(log, 1)
    assert "DI" in line["response_flags"].split(",")


def test_fault_delay_percentage(start_proxy, make_backend) -> None:
    backend = make_backend("svc")
    port = fault_proxy(start_proxy, backend, fault_per_route(delay="0.4s", delay_percent=50))
    n = 80
    results = curl_many([f"http://127.0.0.1:{port}/"] * n, fields=("%{time_total}",), parallel=n)
    assert all(status == 200 for status, _ in results)
    delayed = sum(1 for _, h in results if float(h["%{time_total}"]) >= 0.4)
    # Binomial(80, 0.5): mean 40, sd 4.5; five sd either side.
    assert 17 <= delayed <= 63, delayed


def mirror_proxy(start_proxy, primary_port: int, shadow_port: int) -> int:
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
                                "primary",
                                action={
                                    "request_mirror_policies": [
                                        {
                                            "cluster": "shadow",
                                            "runtime_fraction": {
                                                "default_value": {"numerator": 100}
                                            },
                                        }
                                    ]
                                },
                            )
                        ],
                    )
                ],
            )
        ],
        [static_cluster("primary", [primary_port]), static_cluster("shadow", [shadow_port])],
    )
    return port


def test_mirror_receives_copies_with_shadow_host(start_proxy, make_backend) -> None:
    primary, shadow = make_backend("primary"), make_backend("shadow", always_status=500)
    port = mirror_proxy(start_proxy, primary.port, shadow.port)
    for i in range(5):
        r = curl(f"http://127.0.0.1:{port}/echo?n={i}", headers={"Host": "reviews"})
        assert r.status == 200
        assert r.json()["backend"] == "primary"  # the shadow's 500 never shows
    assert wait_for(lambda: shadow.count == 5, timeout=3), shadow.count
    assert sorted(s.path for s in shadow.requests) == [f"/echo?n={i}" for i in range(5)]
    assert {s.headers["host"] for s in shadow.requests} == {"reviews-shadow"}
    assert primary.count == 5


def test_mirror_down_does_not_touch_the_caller(start_proxy, make_backend) -> None:
    primary = make_backend("primary")
    port = mirror_proxy(start_proxy, primary.port, closed_port())
    for _ in range(3):
        r, elapsed = timed_curl(f"http://127.0.0.1:{port}/")
        assert (r.status, r.text, r.flags) == (200, "primary\n", None)
        assert elapsed < 1


def test_mirror_slow_does_not_delay_the_caller(start_proxy, make_backend) -> None:
    primary, shadow = make_backend("primary"), make_backend("shadow", delay=2.0)
    port = mirror_proxy(start_proxy, primary.port, shadow.port)
    r, elapsed = timed_curl(f"http://127.0.0.1:{port}/")
    assert (r.status, r.text) == (200, "primary\n")
    assert elapsed < 1.0
    assert wait_for(lambda: shadow.count == 1, timeout=2)


@pytest.mark.parametrize("lb_policy", ["RING_HASH", "MAGLEV"])
def test_consistent_hash_sticks_per_key(start_proxy, make_backend, lb_policy: str) -> None:
    backends = [make_backend(f"b{i}") for i in range(3)]
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
                                action={"hash_policy": [{"header": {"header_name": "x-user"}}]},
                            )
                        ],
                    )
                ],
            )
        ],
        [static_cluster("svc", [b.port for b in backends], lb_policy=lb_policy)],
    )
    keys = [f"user-{i}" for i in range(12)]
    chosen: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        results = curl_many([f"http://127.0.0.1:{port}/"] * 6, "-H", f"x-user: {key}", parallel=6)
        for status, h in results:
            assert status == 200
            chosen[key].add(h["x-backend"])
    assert all(len(picked) == 1 for picked in chosen.values()), dict(chosen)
    # Different keys spread over the endpoints (not all pinned to one).
    spread = Counter(next(iter(picked)) for picked in chosen.values())
    assert len(spread) >= 2, spread
