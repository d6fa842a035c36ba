"""grpcio's own xDS client as the referee: a proxyless client (`xds:///`)
reads our ADS server and routes between two real versions of a gRPC service
as VirtualServices say: weights, header matches, faults, retries, and a
weight change taking effect in a running client."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mesh_processes import GrpcClient, XdsControlPlane, bootstrap, wait_until, xds_plane

TARGET = "xds:///echo.default.svc.cluster.local:7070"
FLAKY = "xds:///flaky.default.svc.cluster.local:7071"
StartClient = Callable[..., GrpcClient]
SETTLE_S = 0.6  # > the ADS debounce (0.1 s) plus a push
_clients = itertools.count()

BASE = """
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: 7070}]
---
apiVersion: v1
kind: Service
metadata: {name: flaky}
spec:
  selector: {app: flaky}
  ports: [{name: grpc, port: 7071}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def weights(v1: int, v2: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo]
  http:
  - route:
    - {{destination: {{host: echo, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: echo, subset: v2}}, weight: {v2}}}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XdsControlPlane]:
    plane = xds_plane(tmp_path_factory.mktemp("proxyless"))
    try:
        plane.start()
        apply(plane, BASE)
        plane.backend("echo-v1-0", "v1")
        plane.backend("echo-v2-0", "v2")
        plane.backend("flaky-v1-0", "v1", app="flaky", fail_first=True)
        wait_until(
            lambda: len(plane.get("/api/v1/registry/instances")["items"]) == 3,
            10,
            "backends did not register",
        )
        yield plane
    finally:
        plane.stop_all()


def apply(plane: XdsControlPlane, manifest: str) -> None:
    done = plane.cli("apply", "-f", "-", stdin=manifest)
    assert done.returncode == 0, done.stderr
    time.sleep(SETTLE_S)


@pytest.fixture
def client_for(mesh: XdsControlPlane, tmp_path: Path) -> Iterator[StartClient]:
    started: list[GrpcClient] = []

    def start(target: str = TARGET) -> GrpcClient:
        node_id = f"proxyless~127.0.0.1~client-{next(_clients)}.default~default.svc.cluster.local"
        client = GrpcClient(
            target, bootstrap(tmp_path / "bootstrap.json", mesh.xds_port, node_id), mesh.env
        )
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


def test_weighted_split_90_10(mesh: XdsControlPlane, client_for: StartClient) -> None:
    apply(mesh, weights(90, 10))
    result = client_for()
    counts = result.calls(1000)
    assert counts["errors"] == {}
    v2 = counts["replies"].get("v2", 0)
    assert counts["replies"].get("v1", 0) + v2 == 1000
    # Binomial(1000, 0.1): mean 100, sd 9.5; 55..145 is beyond 4.7 sd either way.
    assert 55 <= v2 <= 145, counts["replies"]


def test_header_match_sends_one_user_to_v2(mesh: XdsControlPlane, client_for: StartClient) -> None:
    apply(
        mesh,
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: echo, subset: v2}}]
  - route: [{destination: {host: echo, subset: v1}}]
""",
    )
    client = client_for()
    assert client.calls(40, {"end-user": "jason"})["replies"] == {"v2": 40}
    assert client.calls(40, {"end-user": "someone"})["replies"] == {"v1": 40}
    assert client.calls(40)["replies"] == {"v1": 40}


def test_fault_abort_with_grpc_status_at_its_percentage(
    mesh: XdsControlPlane, client_for: StartClient
) -> None:
    apply(
        mesh,
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - fault:
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 30}}
    route: [{destination: {host: echo, subset: v1}}]
""",
    )
    counts = client_for().calls(500)
    aborted = counts["errors"].get("UNAVAILABLE", 0)
    assert set(counts["errors"]) <= {"UNAVAILABLE"}
    assert aborted + counts["replies"].get("v1", 0) == 500
    # Binomial(500, 0.3): mean 150, sd 10.2.
    assert 100 <= aborted <= 200, counts


def test_fault_delay_at_its_percentage(mesh: XdsControlPlane, client_for: StartClient) -> None:
    apply(
        mesh,
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - fault:
      delay: {fixedDelay: 0.2s, percentage: {value: 50}}
    route: [{destination: {host: echo, subset: v1}}]
""",
    )
    counts = client_for().calls(60)
    assert counts["replies"] == {"v1": 60}
    delayed = sum(1 for latency in counts["latencies"] if latency >= 0.2)
    assert sum(1 for latency in counts["latencies"] if 0.1 < latency < 0.2) <= 3
    # Binomial(60, 0.5): mean 30, sd 3.9.
    assert 12 <= delayed <= 48, counts["latencies"]


def test_retries_hide_a_backend_that_fails_its_first_attempt(
    mesh: XdsControlPlane, client_for: StartClient
) -> None:
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - route: [{{destination: {{host: flaky}}}}]
    retries: {retries}
"""
    apply(mesh, vs.format(retries="{attempts: 0}"))
    without = client_for(FLAKY).calls(20)
    assert without["errors"] == {"UNAVAILABLE": 20}
    apply(mesh, vs.format(retries="{attempts: 3, retryOn: unavailable}"))
    with_retries = client_for(FLAKY).calls(20)
    assert with_retries == {**with_retries, "replies": {"v1": 20}, "errors": {}}


def test_weight_change_shifts_traffic_in_a_running_client(
    mesh: XdsControlPlane, client_for: StartClient
) -> None:
    apply(mesh, weights(100, 0))
    client = client_for()
    assert client.calls(50)["replies"] == {"v1": 50}
    apply(mesh, weights(0, 100))
    wait_until(lambda: client.calls(10)["replies"] == {"v2": 10}, 5, "weights did not move")
    assert client.calls(50)["replies"] == {"v2": 50}


def test_proxy_status_and_config_show_the_grpc_client(
    mesh: XdsControlPlane, client_for: StartClient
) -> None:
    apply(mesh, weights(50, 50))
    client = client_for()
    client.calls(5)
    status = mesh.cli("proxy-status")
    assert status.returncode == 0, status.stderr
    (line,) = [
        row for row in status.stdout.splitlines() if "client-" in row and "proxyless" in row
    ][-1:]
    assert line.split()[-4:] == ["SYNCED"] * 4, status.stdout
    node = line.split()[0]
    listeners = mesh.cli("proxy-config", "listeners", node)
    assert listeners.returncode == 0, listeners.stderr
    assert "echo.default.svc.cluster.local:7070" in listeners.stdout and "API" in listeners.stdout
    routes = mesh.cli("proxy-config", "routes", node)
    assert "outbound|7070|v1|echo.default.svc.cluster.local 50" in routes.stdout, routes.stdout
    endpoints = mesh.cli("proxy-config", "endpoints", node)
    assert endpoints.stdout.count("HEALTHY") >= 2, endpoints.stdout


def test_instance_that_stops_heartbeating_leaves_the_client(
    mesh: XdsControlPlane, client_for: StartClient
) -> None:
    apply(mesh, weights(100, 0))
    mesh.backend("echo-v1-1", "v1", reply="v1-second")
    heartbeat = mesh.children[-1]
    client = client_for()
    wait_until(
        lambda: set(client.calls(20)["replies"]) == {"v1", "v1-second"}, 5, "second v1 unused"
    )
    heartbeat.send_signal(signal.SIGKILL)  # the instance goes silent, its server stays up
    killed = time.monotonic()
    wait_until(lambda: client.calls(20)["replies"] == {"v1": 20}, 6, "silent instance kept")
    assert time.monotonic() - killed < 5.0
