"""A real Prometheus (Debian's /usr/bin/prometheus) finds a real pilotfish
sidecar through the control plane's HTTP service discovery, scrapes it every
second, and answers a MetricTemplate written as Flagger's own Istio queries;
the mesh's built-in sampler reads the same sidecar and must agree."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.proxy.e2e.harness import (
    Backend,
    Proxy,
    bootstrap,
    curl_many,
    env_without_proxy,
    free_port,
    listener,
    route,
    static_cluster,
    vhost,
    write_bootstrap,
)

from pilotfish.client.registration import registration
from pilotfish.controlplane.api import Request
from pilotfish.controlplane.mesh_api import MeshApi
from pilotfish.registry.instances import InstanceRegistry, instance_from_json
from pilotfish.rollout.metrics import MeshMetrics, measure
from pilotfish.rollout.metrics.prometheus import Provider, QueryError, instant_query

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
NODE = {
    "NAME": "reviews-1",
    "WORKLOAD_NAME": "reviews",
    "NAMESPACE": "shop",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {"app": "reviews", "version": "v2"},
}
CANARY = {
    "metadata": {"name": "reviews", "namespace": "shop"},
    "spec": {"targetRef": {"kind": "Deployment", "name": "reviews"}},
}
# Flagger's own Istio queries (pkg/metrics/observers/istio.go), as MetricTemplates.
SUCCESS_RATE = """
sum(rate(istio_requests_total{reporter="destination",
    destination_workload_namespace="{{ namespace }}", destination_workload=~"{{ target }}",
    response_code!~"5.*"}[{{ interval }}]))
/
sum(rate(istio_requests_total{reporter="destination",
    destination_workload_namespace="{{ namespace }}", destination_workload=~"{{ target }}"}[{{ interval }}]))
* 100"""
DURATION = """
histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination",
    destination_workload_namespace="{{ namespace }}", destination_workload=~"{{ target }}"}[{{ interval }}])) by (le))"""
TOTAL = 'sum(istio_requests_total{reporter="destination",destination_workload="reviews"})'


@dataclass
class Sidecar:
    proxy: Proxy
    inbound: int


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    """A pilotfish proxy fronting a backend, as reviews-1 in shop."""
    app = Backend("reviews").start()
    inbound, admin = free_port(), free_port()
    config = bootstrap(
        [
            listener(
                "inbound", inbound, [vhost("all", ["*"], [route("inbound|9080||")])], inbound=True
            )
        ],
        [static_cluster("inbound|9080||", [app.port])],
        admin,
        NODE,
    )
    proxy = Proxy(write_bootstrap(tmp_path, config), admin, tmp_path / "proxy.stderr")
    proxy.start()
    try:
        yield Sidecar(proxy, inbound)
    finally:
        proxy.stop()
        app.stop()


@pytest.fixture
def registry() -> InstanceRegistry:
    return InstanceRegistry()


@pytest.fixture
def discovery(registry: InstanceRegistry) -> Iterator[str]:
    """The control plane's MeshApi on a real HTTP server: its SD URL."""
    api = MeshApi(registry, None)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            request = Request.of("GET", self.path)
            answer = api(request, request.path)
            assert answer is not None
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/registry/prometheus-targets"
    server.shutdown()
    server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path, discovery: str) -> Iterator[str]:
    """Prometheus scraping every second whatever the discovery URL lists; its address."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "pilotfish-sidecars",
                "http_sd_configs": [{"url": discovery, "refresh_interval": "1s"}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env_without_proxy(),
        )
    address = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: _value(address, "vector(1)") == 1.0, 20, "Prometheus never answered", log_path)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait(done: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"{what} within {timeout}s\n{tail}")
        time.sleep(0.2)


def _value(address: str, query: str) -> float | None:
    try:
        return instant_query(Provider(address), query)
    except QueryError:
        return None


def send(sidecar: Sidecar, ok: int, errors: int, delay: str = "") -> None:
    base = f"http://127.0.0.1:{sidecar.inbound}/?{delay and f'delay={delay}&'}"
    urls = [base] * ok + [base + "status=500"] * errors
    statuses = [status for status, _ in curl_many(urls, fields=())]
    assert sorted(statuses) == [200] * ok + [500] * errors


def register(registry: InstanceRegistry, sidecar: Sidecar) -> None:
    """The sidecar as reviews-1 in shop, as its node agent registers it."""
    body = registration(
        name="reviews-1",
        namespace="shop",
        workload="reviews",
        labels={"app": "reviews"},
        service_account="reviews",
        ports={"http": sidecar.inbound},
        app_ports={},
        metrics_port=sidecar.proxy.admin_port,
        healthy=True,
    )
    # Nothing renews it here, as a node agent would: a lease as long as the
    # test, since a registration whose lease ran out is no longer served.
    registry.register(instance_from_json(body)[0], ttl=600.0)


def template(address: str, query: str) -> dict[str, Any]:
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "MetricTemplate",
        "metadata": {"name": "t", "namespace": "shop"},
        "spec": {"provider": {"type": "prometheus", "address": address}, "query": query},
    }


def test_flaggers_queries_on_a_real_prometheus_agree_with_the_sampler(
    sidecar: Sidecar, registry: InstanceRegistry, prometheus: str
) -> None:
    # Before any scrape: invisible to rate(), as to the sampler's first sample.
    send(sidecar, ok=200, errors=100)
    register(registry, sidecar)
    mesh = MeshMetrics(registry.instances)
    mesh.sample()
    up = (
        'up{job="pilotfish-sidecars",namespace="shop",workload="reviews",instance_name="reviews-1"}'
    )
    wait(lambda: _value(prometheus, up) == 1.0, 15, "Prometheus never scraped the sidecar")
    wait(lambda: _value(prometheus, TOTAL) == 300.0, 10, "Prometheus never saw the first requests")

    # The analysis window: 90 of 100 requests succeed, each taking 35 ms or more.
    send(sidecar, ok=90, errors=10, delay="0.035")
    wait(lambda: _value(prometheus, TOTAL) == 400.0, 10, "Prometheus never saw the requests")
    time.sleep(2.5)  # a few more scrapes: rate() extrapolates every series alike
    mesh.sample()

    def lookup(query: str) -> Callable[[str, str, str], dict[str, Any] | None]:
        return lambda kind, namespace, name: template(prometheus, query)

    metric = {"name": "success", "interval": "1m", "templateRef": {"name": "t"}}
    from_prometheus = measure(CANARY, metric, mesh=mesh, lookup=lookup(SUCCESS_RATE))
    assert from_prometheus.message == ""
    assert from_prometheus.value == pytest.approx(90.0, abs=1e-9)
    builtin = measure(CANARY, {"name": "request-success-rate"}, mesh=mesh, lookup=lookup(""))
    assert builtin.value == pytest.approx(90.0, abs=1e-9)

    metric = {"name": "latency", "interval": "1m", "templateRef": {"name": "t"}}
    p99 = measure(CANARY, metric, mesh=mesh, lookup=lookup(DURATION)).value
    assert p99 is not None and p99 > 25, "every request of the window took 35 ms or more"
    assert mesh.duration_p99("shop", "reviews", 60) == pytest.approx(p99, rel=1e-9)
    builtin = measure(CANARY, {"name": "request-duration"}, mesh=mesh, lookup=lookup(""))
    assert builtin.value == int(p99)
