"""Istio's locality failover across three hosts (network namespaces), end to
end: a control plane in the root namespace (xDS over TLS, as off loopback it
must be); on each host a node agent with
its own locality; `echo` with an instance on host b (the caller's locality)
and one on host c (another zone); a caller on host a calling echo through
its sidecar, with retries, as an application does.

The caller is served by its own locality; with host b cut off (its link
down) it is served by host c with no failed request, and by host b again
once the link is back. A node agent killed and restarted on host b adopts
its instance: same processes, still serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.agent.mesh_harness import REPO, free_port, isolated_env, run_cli, stop_process, wait_for
from tests.netns.netns import Host, Network, netns  # noqa: F401  (the fixture)

from pilotfish.agent.node import stop_leftovers

pytestmark = pytest.mark.slow

LOCALITIES = {"a": "us-east/zone-a/sub1", "b": "us-east/zone-a/sub1", "c": "us-east/zone-b/sub1"}
ECHO_APP = """
import http.server, os
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = os.environ["POD_NAME"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
"""
# As an application calls a service: through its sidecar as HTTP proxy.
CALLER = """
import sys, time, urllib.error, urllib.request
proxy = urllib.request.ProxyHandler({"http": "http://127.0.0.1:" + sys.argv[1]})
opener = urllib.request.build_opener(proxy)
while True:
    started = time.monotonic()
    try:
        with opener.open("http://echo.default.svc.cluster.local/", timeout=20) as r:
            line = "ok " + r.read().decode()
    except urllib.error.HTTPError as e:
        line = f"fail {e.code} {e.headers.get('x-pilotfish-flags')} {e.read()[:80]!r}"
    except Exception as e:
        line = "fail " + repr(e)
    print(f"{time.monotonic():.3f} {time.monotonic() - started:.3f} {line}", flush=True)
    time.sleep(0.05)
"""


def config(app: Path) -> str:
    def workload(name: str, node: str, app_label: str) -> dict[str, Any]:
        return {
            "apiVersion": "pilotfish.dev/v1alpha1",
            "kind": "Workload",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "nodeName": node,
                "replicas": 1,
                "labels": {"app": app_label, "version": name},
                "command": ["python3", str(app)],
                "ports": [{"name": "http", "port": 80}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "terminationGracePeriodSeconds": 2,
            },
        }

    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 80}]},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {
                "host": "echo.default.svc.cluster.local",
                "trafficPolicy": {
                    "connectionPool": {"tcp": {"connectTimeout": "250ms"}},
                    "outlierDetection": {
                        "consecutive5xxErrors": 1,
                        "interval": "1s",
                        "baseEjectionTime": "3s",
                        "maxEjectionPercent": 100,
                    },
                },
            },
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {
                "hosts": ["echo.default.svc.cluster.local"],
                "http": [
                    {
                        "route": [{"destination": {"host": "echo.default.svc.cluster.local"}}],
                        "retries": {
                            "attempts": 5,
                            "perTryTimeout": "1s",
                            "retryOn": "connect-failure,reset,5xx,gateway-error",
                        },
                    }
                ],
            },
        },
        workload("caller", "host-a", "caller"),
        workload("echo-b", "host-b", "echo"),
        workload("echo-c", "host-c", "echo"),
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


@dataclass
class Cluster:
    tmp: Path
    net: Network
    env: dict[str, str]
    api: str
    xds: str
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def host(self, label: str) -> Host:
        return next(h for h in self.net.hosts if h.label == label)

    def state(self, label: str) -> Path:
        return self.tmp / f"node-{label}"

    def start_agent(self, label: str) -> None:
        host = self.host(label)
        argv = [sys.executable, "-m", "pilotfish", "node", "--node-name", f"host-{label}"]
        argv += ["--server", self.api, "--xds", self.xds, "--address", host.address]
        argv += ["--xds-root-cert", str(self.tmp / "data" / "ca" / "root-cert.pem")]  # 15012-style
        argv += ["--locality", LOCALITIES[label], "--state-dir", str(self.state(label))]
        with (self.tmp / f"node-{label}.log").open("ab") as log:
            self.agents[label] = host.popen(
                argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )

    def cli(self, *args: str) -> str:
        return run_cli(self.env, *args, timeout=60)

    def ready(self, workload: str) -> bool:
        status = json.loads(self.cli("get", "workloads", workload, "-o", "json")).get("status")
        instances = (status or {}).get("instances") or []
        return len(instances) == 1 and bool(instances[0]["ready"])

    def instance_record(self, label: str, name: str) -> tuple[Path, dict[str, Any]]:
        (path,) = (self.state(label) / "instances" / "default").glob(f"{name}-*/instance.json")
        return path.parent, json.loads(path.read_text())


@pytest.fixture
def mesh(netns: Callable[[int], Network], tmp_path: Path) -> Iterator[Cluster]:  # noqa: F811
    net = netns(3)
    env = isolated_env(tmp_path)
    api, xds, xds_tls = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "pilotfish", "controlplane", "--data-dir", str(tmp_path / "data")]
    argv += ["--listen", f"{net.gateway}:{api}", "--xds-port", str(xds)]
    argv += ["--xds-tls-port", str(xds_tls)]  # off loopback xDS is TLS only (plaintext: loopback)
    argv += ["--api-plaintext-off-loopback"]  # localities are this test's subject, not TLS
    with (tmp_path / "controlplane.log").open("ab") as log:
        plane = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    cluster = Cluster(tmp_path, net, env, f"http://{net.gateway}:{api}", f"{net.gateway}:{xds_tls}")
    try:
        wait_for(lambda: (tmp_path / "config.yaml").exists(), 30, "no control plane")
        token = (tmp_path / "data" / "token").read_text().strip()
        cluster.env = {**env, "PILOTFISH_TOKEN": token, "PILOTFISH_SERVER": cluster.api}
        for label in "abc":
            cluster.start_agent(label)
        yield cluster
    finally:
        for agent in cluster.agents.values():
            stop_process(agent)  # SIGTERM: an agent stops what it runs
        for label in "abc":
            stop_leftovers(cluster.state(label))
        stop_process(plane)


class Calls:
    """The caller's output, read as it comes: (time, latency, outcome)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[tuple[float, float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            at, took, outcome = raw.decode().strip().split(" ", 2)
            self.lines.append((float(at), float(took), outcome))

    def since(self, start: int) -> list[str]:
        return [outcome for _, _, outcome in self.lines[start:]]

    def served_by(self, workload: str, start: int, count: int) -> bool:
        """The last `count` calls after `start` were all served by `workload`."""
        recent = self.since(start)[-count:]
        return len(recent) == count and all(o.startswith(f"ok {workload}-") for o in recent)


def test_callers_fail_over_to_the_next_locality_and_back(mesh: Cluster) -> None:
    app = mesh.tmp / "echo.py"
    app.write_text(textwrap.dedent(ECHO_APP))
    manifest = mesh.tmp / "mesh.yaml"
    manifest.write_text(config(app))
    mesh.cli("apply", "-f", str(manifest))
    for workload in ("caller", "echo-b", "echo-c"):
        wait_for(lambda w=workload: mesh.ready(w), 90, f"{workload} never ready")
    _, caller = mesh.instance_record("a", "caller")
    a, b = mesh.host("a"), mesh.host("b")
    process = a.popen(
        [sys.executable, "-c", CALLER, str(caller["ports"]["outbound"])], stdout=subprocess.PIPE
    )
    calls = Calls(process)

    # Served by its own locality: host b, never host c (another zone).
    wait_for(lambda: calls.served_by("echo-b", 0, 20), 60, "not served by its own locality")
    start = len(calls.lines)
    time.sleep(2)
    assert all(o.startswith("ok echo-b-") for o in calls.since(start)), calls.since(start)

    # Host b cut off: host c serves, and no call fails.
    cut = len(calls.lines)
    cut_at = time.monotonic()
    b.link_down()
    wait_for(lambda: calls.served_by("echo-c", cut, 20), 30, "host c never served")
    over = next(at for at, _, o in calls.lines[cut:] if o.startswith("ok echo-c-"))
    slowest = max(took for _, took, _ in calls.lines[cut:])
    print(
        f"failover: first call served by host c {over - cut_at:.2f} s after the cut; "
        f"slowest call {slowest:.2f} s"
    )

    # Long enough for host b's registration to run out (3 s lease): the
    # control plane drops its endpoint too, as for a host that is gone.
    time.sleep(max(0.0, cut_at + 6 - time.monotonic()))

    # The link back: host b serves again.
    back = len(calls.lines)
    back_at = time.monotonic()
    b.link_up()
    wait_for(lambda: calls.served_by("echo-b", back, 20), 60, "host b never served again")
    home = next(at for at, _, o in calls.lines[back:] if o.startswith("ok echo-b-"))
    print(f"failback: first call served by host b {home - back_at:.2f} s after the link is up")
    (mesh.tmp / "calls.txt").write_text(
        "\n".join(f"{at - cut_at:.3f} {took:.3f} {o}" for at, took, o in calls.lines)
        + f"\nback at {back_at - cut_at:.3f}\n"
    )
    failed = [o for o in calls.since(0) if not o.startswith("ok ")]
    assert failed == [], failed[:5]

    # A node agent killed and restarted on host b adopts its instance.
    directory, _ = mesh.instance_record("b", "echo-b")
    before = json.loads((directory / "pids.json").read_text())
    restart = len(calls.lines)
    mesh.agents["b"].kill()
    mesh.agents["b"].wait()
    mesh.start_agent("b")
    wait_for(lambda: mesh.ready("echo-b"), 60, "echo-b not adopted")
    after = json.loads((directory / "pids.json").read_text())
    assert (after["app"], after["sidecar"]) == (before["app"], before["sidecar"])
    for pid in (after["app"], after["sidecar"]):
        os.kill(pid, 0)  # still the same processes, alive
    time.sleep(3)
    assert calls.served_by("echo-b", restart, 20)
    failed = [o for o in calls.since(0) if not o.startswith("ok ")]
    assert failed == [], failed[:5]
