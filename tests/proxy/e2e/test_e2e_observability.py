"""What operators see of a real proxy: golden metrics, the access log, the
admin endpoints, graceful shutdown and bootstrap errors."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    PILOTFISH,
    REPO,
    Proxy,
    access_log_lines,
    admin_clusters_health,
    bootstrap,
    curl,
    free_port,
    listener,
    route,
    static_cluster,
    vhost,
    write_bootstrap,
)
from prometheus_client.parser import text_string_to_metric_families

from pilotfish.proxy import compiled

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"


def samples(proxy: Proxy, name: str) -> list[tuple[dict[str, str], float]]:
    status, text = proxy.admin_get("/stats/prometheus")
    assert status == 200
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def matching(found: list[tuple[dict[str, str], float]], **labels: str) -> list[float]:
    return [v for got, v in found if all(got.get(k) == want for k, want in labels.items())]


def test_golden_metrics(start_proxy, make_backend) -> None:
    reviews = make_backend("reviews")
    port = free_port()
    proxy = start_proxy(
        [
            listener(
                "outbound",
                port,
                [vhost("all", ["*"], [route(REVIEWS, prefix="/api")])],
                outbound=True,
            )
        ],
        [static_cluster(REVIEWS, [reviews.port])],
    )
    for _ in range(3):
        assert curl(f"http://127.0.0.1:{port}/api").status == 200
    assert curl(f"http://127.0.0.1:{port}/api?status=503").status == 503
    assert curl(f"http://127.0.0.1:{port}/missing").status == 404

    requests = samples(proxy, "istio_requests_total")
    ok = {
        "reporter": "source",
        "source_workload": "productpage-v1",
        "source_workload_namespace": "default",
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_service_name": "reviews",
        "response_code": "200",
        "response_flags": "-",
    }
    assert matching(requests, **ok) == [3.0], requests
    assert matching(requests, **{**ok, "response_code": "503"}) == [1.0], requests
    assert matching(requests, reporter="source", response_code="404", response_flags="NR") == [
        1.0
    ], requests

    counts = samples(proxy, "istio_request_duration_milliseconds_count")
    assert matching(counts, **ok) == [3.0], counts
    buckets = matching(samples(proxy, "istio_request_duration_milliseconds_bucket"), **ok)
    assert buckets and max(buckets) == 3.0  # the +Inf bucket holds every request
    for name in ("istio_request_bytes_count", "istio_response_bytes_count"):
        assert matching(samples(proxy, name), **ok) == [3.0], name


def test_envoy_stats_count_what_happened(start_proxy, make_backend) -> None:
    reviews = make_backend("reviews")
    port = free_port()
    proxy = start_proxy(
        [listener("outbound", port, [vhost("all", ["*"], [route(REVIEWS, prefix="/api")])])],
        [static_cluster(REVIEWS, [reviews.port]), static_cluster("unused", [reviews.port])],
    )
    for _ in range(3):
        assert curl(f"http://127.0.0.1:{port}/api").status == 200
    assert curl(f"http://127.0.0.1:{port}/missing").status == 404
    status, text = proxy.admin_get("/stats")
    assert status == 200
    stats = dict(line.split(": ") for line in text.splitlines())
    cluster = f"cluster.{REVIEWS}"
    assert stats[f"{cluster}.upstream_rq_total"] == "3"
    assert stats[f"{cluster}.upstream_rq_2xx"] == "3"
    assert int(stats[f"{cluster}.upstream_cx_total"]) >= 1
    assert stats[f"{cluster}.upstream_rq_active"] == "0"
    assert stats[f"{cluster}.membership_total"] == "1"
    assert stats[f"{cluster}.membership_healthy"] == "1"
    assert stats["cluster.unused.membership_total"] == "1"  # configured, never used
    assert stats["http.outbound.no_route"] == "1"
    assert stats["http.outbound.downstream_rq_4xx"] == "1"
    assert stats[f"listener.127.0.0.1_{port}.downstream_cx_total"] == "4"
    assert stats["server.live"] == "1"
    assert matching(samples(proxy, "envoy_cluster_membership_total"), cluster_name="unused") == [
        1.0
    ]


def test_inbound_metrics_report_as_destination(start_proxy, make_backend) -> None:
    app = make_backend("app")
    port = free_port()
    proxy = start_proxy(
        [listener("inbound", port, [vhost("all", ["*"], [route("inbound|9080||")])], inbound=True)],
        [static_cluster("inbound|9080||", [app.port])],
    )
    for _ in range(2):
        assert curl(f"http://127.0.0.1:{port}/").status == 200
    requests = samples(proxy, "istio_requests_total")
    mine = {
        "reporter": "destination",
        "destination_workload": "productpage-v1",
        "destination_workload_namespace": "default",
        "destination_app": "productpage",
        "destination_version": "v1",
        "response_code": "200",
    }
    assert matching(requests, **mine) == [2.0], requests
    assert not matching(requests, reporter="source"), requests


START_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_access_log_json_lines(start_proxy, make_backend, tmp_path: Path) -> None:
    svc = make_backend("svc")
    log = tmp_path / "access.log"
    port = free_port()
    start_proxy(
        [
            listener(
                "in",
                port,
                [vhost("all", ["*"], [route("svc", prefix="/api")])],
                access_log=str(log),
            )
        ],
        [static_cluster("svc", [svc.port])],
    )
    r = curl(
        f"http://127.0.0.1:{port}/api?x=1",
        headers={"User-Agent": "e2e-agent/1.0", "x-request-id": "req-123", "Host": "svc.test"},
        data=b"0123456789",
    )
    assert (r.status, r.text) == (200, "svc\n")
    assert curl(f"http://127.0.0.1:{port}/nowhere").status == 404
    lines = access_log_lines(log, 2)
    assert len(lines) == 2, lines
    first, second = lines
    expected: dict[str, Any] = {
        "method": "POST",
        "path": "/api?x=1",
        "protocol": "HTTP/1.1",
        "response_code": 200,
        "response_flags": "-",
        "bytes_received": 10,
        "bytes_sent": 4,
        "upstream_host": f"127.0.0.1:{svc.port}",
        "upstream_cluster": "svc",
        "user_agent": "e2e-agent/1.0",
        "request_id": "req-123",
        "authority": "svc.test",
    }
    assert {k: first.get(k) for k in expected} == expected
    assert START_TIME.fullmatch(first["start_time"]), first["start_time"]
    assert isinstance(first["duration"], int) and first["duration"] >= 0
    assert "x_forwarded_for" in first
    assert (second["response_code"], second["response_flags"]) == (404, "NR")
    assert second["path"] == "/nowhere"
    assert second["upstream_host"] is None


def test_admin_endpoints(start_proxy, make_backend) -> None:
    svc = make_backend("svc")
    port = free_port()
    proxy = start_proxy(
        [listener("inbound-app", port, [vhost("all", ["*"], [route("svc")])])],
        [static_cluster("svc", [svc.port])],
    )
    assert proxy.admin_get("/ready") == (200, "LIVE\n")
    status, info = proxy.admin_get("/server_info")
    assert status == 200
    data_path = json.loads(info)["data_path"]
    assert json.loads(info)["state"] == "LIVE"
    assert data_path["modules"] == compiled.compiled_modules()
    assert data_path["compiled"] == ("mypyc" if data_path["modules"] else "interpreted")
    status, dump = proxy.admin_get("/config_dump")
    assert status == 200
    resources = [r for c in json.loads(dump)["configs"] for r in c.get("resources", [])]
    assert any(r.get("name") == "inbound-app" for r in resources), dump[:2000]
    assert any(r.get("name") == "svc" for r in resources), dump[:2000]
    status, clusters = proxy.admin_get("/clusters")
    assert status == 200
    assert admin_clusters_health(clusters, "svc") == {f"127.0.0.1:{svc.port}": "healthy"}
    assert proxy.admin_get("/no-such-page")[0] == 404


def test_drain_then_quit_finishes_in_flight_and_exits_0(start_proxy, make_backend) -> None:
    slow = make_backend("slow", delay=1.5)
    port = free_port()
    proxy = start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("slow")])])],
        [static_cluster("slow", [slow.port])],
    )
    result: dict[str, Any] = {}
    in_flight = threading.Thread(
        target=lambda: result.update(r=curl(f"http://127.0.0.1:{port}/", timeout=8))
    )
    in_flight.start()
    assert any(slow.count == 1 or time.sleep(0.02) for _ in range(100))
    assert proxy.admin_post("/drain")[0] == 200
    assert proxy.admin_get("/ready")[0] == 503
    refused = subprocess.run(
        ["curl", "-s", "--noproxy", "*", "--max-time", "2", f"http://127.0.0.1:{port}/"],
        capture_output=True,
    )
    assert refused.returncode == 7, refused  # curl: could not connect
    assert proxy.admin_post("/quitquitquit")[0] == 200
    in_flight.join(timeout=8)
    assert (result["r"].status, result["r"].text) == (200, "slow\n")
    assert proxy.process is not None
    assert proxy.process.wait(timeout=5) == 0


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        ("bootstrap", "stats_flush_interval", "5s"),
        (
            "cluster",
            "health_checks",
            [{"timeout": "1s", "interval": "1s", "tcp_health_check": {}}],
        ),
        ("listener", "listener_filters", [{"name": "envoy.filters.listener.tls_inspector"}]),
        ("cluster", "conect_timeout", "1s"),  # a misspelt field
    ],
)
def test_unsupported_bootstrap_field_is_rejected(
    tmp_path: Path, where: str, field: str, value: object
) -> None:
    config = bootstrap(
        [listener("in", free_port(), [vhost("all", ["*"], [route("svc")])])],
        [static_cluster("svc", [free_port()])],
        free_port(),
    )
    target = {
        "bootstrap": config,
        "cluster": config["static_resources"]["clusters"][0],
        "listener": config["static_resources"]["listeners"][0],
    }[where]
    target[field] = value
    path = write_bootstrap(tmp_path, config)
    process = subprocess.Popen(
        [str(PILOTFISH), "proxy", "--bootstrap", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        _, stderr = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"the proxy started and kept running:\n{stderr.decode()[-3000:]}")
    assert process.returncode != 0
    assert field in stderr.decode(), stderr.decode()


def test_sigterm_finishes_in_flight_and_exits_0(start_proxy, make_backend) -> None:
    slow = make_backend("slow", delay=1.0)
    port = free_port()
    proxy = start_proxy(
        [listener("in", port, [vhost("all", ["*"], [route("slow")])])],
        [static_cluster("slow", [slow.port])],
    )
    result: dict[str, Any] = {}
    in_flight = threading.Thread(
        target=lambda: result.update(r=curl(f"http://127.0.0.1:{port}/", timeout=8))
    )
    in_flight.start()
    assert any(slow.count == 1 or time.sleep(0.02) for _ in range(100))
    assert proxy.stop() == 0
    in_flight.join(timeout=8)
    assert (result["r"].status, result["r"].text) == (200, "slow\n")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--port", "http=9080"], "--port, --app-port and --server go with --register"),
        (["--register"], "--register needs the instance's name in node.metadata.NAME"),
        (["--register", "--port", "http"], "--port 'http': expected NAME=VALUE"),
        (
            ["--register", "--port", "http=19080", "--app-port", "grpc=9080"],
            "--app-port grpc: no --port is named grpc",
        ),
    ],
)
def test_register_options_are_checked_before_serving(
    tmp_path: Path, args: list[str], said: str
) -> None:
    named = {"NAME": "hello-0"} if "--port" in args else {}
    config = bootstrap([], [static_cluster("svc", [free_port()])], free_port(), node_metadata=named)
    path = write_bootstrap(tmp_path, config)
    done = subprocess.run(
        [str(PILOTFISH), "proxy", "--bootstrap", str(path), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=20,
    )
    assert done.returncode != 0 and said in done.stderr, done.stderr
