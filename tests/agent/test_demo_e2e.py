"""`pilotfish demo` from the repository, as a user runs it: one command
brings up the control plane, the node agent, its ingress gateway and
Bookinfo; the page answers through the gateway, Istio's routing files change
what it shows, and `pilotfish down` leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.agent.mesh_harness import (
    BOOKINFO_ISTIO,
    DIRECT,
    REPO,
    bookinfo_with_gateway_port,
    free_port,
    isolated_env,
    login,
    processes_under,
    run_cli,
    wait_for,
)

from pilotfish.client import Client
from pilotfish.config import load_client_config

pytestmark = pytest.mark.slow
URL_LINE = re.compile(r"Bookinfo is up: (http://\S+)")
DASHBOARD_LINE = re.compile(r"The mesh, live: (http://\S+/dashboard/)")


@dataclass
class RunningDemo:
    tmp: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    url: str = ""

    def output(self) -> str:
        return (self.tmp / "demo.out").read_text(errors="replace")

    def cli(self, *args: str) -> str:
        return run_cli(self.env, *args)

    def page(self, cookie: str | None = None) -> str:
        headers = {"Cookie": cookie} if cookie else {}
        with DIRECT.open(urllib.request.Request(self.url, headers=headers), timeout=20) as r:
            return str(r.read().decode())

    def metrics(self, workload: str) -> list[str]:
        """The lines of `workload`'s sidecar's /stats/prometheus."""
        config = load_client_config(path=Path(self.env["PILOTFISH_CONFIG"]))
        instances = Client(config.server, config.token).instances()
        found = next(i for i in instances if i["workload"] == workload)
        url = f"http://127.0.0.1:{found['metricsPort']}/stats/prometheus"
        with DIRECT.open(url, timeout=10) as r:
            return str(r.read().decode()).splitlines()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    tmp = tmp_path_factory.mktemp("demo")
    env = isolated_env(tmp)
    argv = [sys.executable, "-m", "pilotfish", "demo", "--data-dir", str(tmp / "data")]
    argv += ["--state-dir", str(tmp / "state"), "--listen", f"127.0.0.1:{free_port()}"]
    argv += ["--xds-port", str(free_port())]
    argv += ["--examples", str(bookinfo_with_gateway_port(tmp, free_port()))]
    with (tmp / "demo.out").open("wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    running = RunningDemo(tmp, env, process)
    try:
        found = wait_for(
            lambda: process.poll() is None and URL_LINE.search(running.output()),
            120,
            "the demo printed no URL",
        )
        running.url = found.group(1)
        yield running
    finally:
        if process.poll() is None:
            running.cli("down", "--state-dir", str(tmp / "state"))
            process.wait(timeout=60)
        for line in processes_under(tmp, environ=True):  # only if `down` failed
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def test_demo_prints_the_url_and_next_steps(demo: RunningDemo) -> None:
    out = demo.output()
    assert demo.url.endswith("/productpage") and "127.0.0.1:" in demo.url
    assert "workload productpage-v1" in out and "virtual-service-reviews-test-v2.yaml" in out
    assert "pilotfish chaos kill reviews-v2" in out and "pilotfish down" in out
    # the metrics of the three kinds of traffic: HTTP, gRPC and TCP
    for pattern in ("istio_requests_total", "'request_protocol=\"grpc\"'", "istio_tcp_"):
        assert re.search(
            rf"curl -s http://127\.0\.0\.1:\d+/stats/prometheus \| grep {pattern}", out
        )


def test_demo_ends_with_the_dashboards_url(demo: RunningDemo) -> None:
    found = wait_for(
        lambda: DASHBOARD_LINE.search(demo.output().strip().splitlines()[-1]),
        10,
        "no dashboard URL",
    )
    with DIRECT.open(found.group(1), timeout=10) as answer:
        assert b"/dashboard/app.js" in answer.read()


def test_productpage_through_the_gateway_shows_reviews(demo: RunningDemo) -> None:
    body = demo.page()
    assert "The Comedy of Errors" in body and "Error fetching" not in body
    assert "Reviews served by:</dt><u>reviews-v1-" in body


def test_istio_routing_file_sends_jason_to_v2_through_the_gateway(demo: RunningDemo) -> None:
    demo.cli("apply", "-f", str(BOOKINFO_ISTIO / "virtual-service-reviews-test-v2.yaml"))
    cookie = login(int(urllib.parse.urlsplit(demo.url).port or 80), "jason")
    wait_for(lambda: "reviews-v2-" in demo.page(cookie), 15, "jason never reached reviews v2")
    body = demo.page(cookie)
    assert '<font color="black">' in body and "reviews-v1-" in demo.page()


def test_ratings_reads_redis_over_tcp_beside_http(demo: RunningDemo) -> None:
    """ratings keeps its stars in redis, reached through its declared upstream
    on localhost: the metrics show TCP traffic to redis beside the HTTP."""
    cookie = login(int(urllib.parse.urlsplit(demo.url).port or 80), "jason")
    demo.cli("apply", "-f", str(BOOKINFO_ISTIO / "virtual-service-reviews-test-v2.yaml"))
    wait_for(lambda: "reviews-v2-" in demo.page(cookie), 15, "jason never reached reviews v2")
    assert "glyphicon-star" in demo.page(cookie)  # v2 shows the stars ratings read from redis
    redis = 'destination_service="redis.default.svc.cluster.local"'
    sent = [
        line
        for line in demo.metrics("ratings-v1")
        if line.startswith("istio_tcp_sent_bytes_total{") and redis in line
    ]
    assert sent and 'reporter="source"' in sent[0] and float(sent[0].rpartition(" ")[2]) > 0
    served = [
        line
        for line in demo.metrics("redis-v1")
        if line.startswith("istio_tcp_received_bytes_total{") and 'reporter="destination"' in line
    ]
    assert served and all('connection_security_policy="mutual_tls"' in x for x in served)
    assert any("sa/bookinfo-ratings" in x for x in served), served


def test_productpage_reaches_details_over_grpc(demo: RunningDemo) -> None:
    """productpage asks details over gRPC through its declared upstream: the
    page shows the details, and both sidecars count gRPC requests (status 0)
    beside the HTTP ones and ratings' redis TCP series."""
    body = demo.page()
    assert "<dt>Type:</dt>paperback" in body and "<dt>Pages:</dt>200<" in body
    grpc = (
        'request_protocol="grpc"',
        'destination_service_name="details"',
        'grpc_response_status="0"',
        'response_code="200"',
    )
    for workload, reporter in (("productpage-v1", "source"), ("details-v1", "destination")):
        requests = [x for x in demo.metrics(workload) if x.startswith("istio_requests_total{")]
        calls = [x for x in requests if all(label in x for label in grpc)]
        assert calls and f'reporter="{reporter}"' in calls[0], (workload, requests)
        assert float(calls[0].rpartition(" ")[2]) >= 1
    assert 'connection_security_policy="mutual_tls"' in calls[0]  # details' inbound
    # beside HTTP (productpage calls reviews) and TCP (ratings reads redis)
    ratings = demo.url.replace("/productpage", "/api/v1/products/0/ratings")
    with DIRECT.open(ratings, timeout=20) as answer:
        assert answer.status == 200
    assert any(
        x.startswith("istio_requests_total{")
        and 'destination_service_name="reviews"' in x
        and 'request_protocol="http"' in x
        for x in demo.metrics("productpage-v1")
    )
    redis = 'destination_service="redis.default.svc.cluster.local"'
    tcp = [x for x in demo.metrics("ratings-v1") if x.startswith("istio_tcp_sent_bytes_total{")]
    assert any(redis in x for x in tcp), tcp


def test_sidecars_talk_mutual_tls_by_default(demo: RunningDemo) -> None:
    """Istio's default: every hop between sidecars is mTLS without asking, and
    an inbound port shows the workload's SPIFFE certificate to openssl."""
    assert "Reviews served by:" in demo.page()  # gateway -> productpage -> reviews -> ratings
    config = load_client_config(path=Path(demo.env["PILOTFISH_CONFIG"]))
    instances = Client(config.server, config.token).instances()
    reviews = next(i for i in instances if i["workload"] == "reviews-v1")
    assert reviews["labels"]["security.istio.io/tlsMode"] == "istio"
    secret = demo.cli("proxy-config", "secret", f"{reviews['name']}.default")
    assert "default" in secret and "ROOTCA" in secret and "ACTIVE" in secret
    metrics_url = f"http://127.0.0.1:{reviews['metricsPort']}/stats/prometheus"
    with DIRECT.open(metrics_url, timeout=10) as r:
        metrics = r.read().decode()
    inbound = [
        line
        for line in metrics.splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert inbound and all('connection_security_policy="mutual_tls"' in x for x in inbound)
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/' in inbound[0]
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{reviews['ports']['http']}"],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    assert (
        b"URI:spiffe://cluster.local/ns/default/sa/"
        in subprocess.run(
            ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
            input=done.stdout,
            capture_output=True,
            timeout=10,
        ).stdout
    )


def test_down_stops_everything(demo: RunningDemo) -> None:
    assert processes_under(demo.tmp, environ=True)
    assert "stopped (demo" in demo.cli("down", "--state-dir", str(demo.tmp / "state"))
    assert demo.process.wait(timeout=30) == 0
    assert "stopped." in demo.output()
    assert processes_under(demo.tmp, environ=True) == []
