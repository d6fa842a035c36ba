"""The control plane's own failover across hosts (network namespaces), end
to end: etcd in the root namespace, a control-plane replica on host a (the
leader) and one on host b, and on host c a node agent running `echo` under a
Flagger Canary (primary and canary) and a caller with retries, both given
every replica's address.

kill -9 the leader in the middle of the canary analysis: replica b takes
the lead within 15 s (the lease), the release goes on from the stored
status to Succeeded, each step is recorded once (every "Advance ... canary
weight N" Event exactly once), and the caller sees no failed request."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.agent.mesh_harness import (
    REPO,
    answers,
    free_port,
    isolated_env,
    run_cli,
    stop_process,
    wait_for,
)
from tests.etcd_server import EtcdServer, etcd_binary
from tests.netns.netns import Host, Network, netns  # noqa: F401  (the fixture)
from tests.netns.test_locality_failover_e2e import CALLER, ECHO_APP, Calls

from pilotfish.agent.node import stop_leftovers
from pilotfish.store.etcd_client import message

pytestmark = pytest.mark.slow

LEADING = "election/rollout: leading as"  # the log line of a replica taking the lead
ELECTION_KEY = b"/pilotfish-election/rollout"
STEPS = (20, 40, 60)  # stepWeight 20 up to maxWeight 60


@dataclass
class BridgeEtcd(EtcdServer):
    """etcd serving clients on the bridge's address, so replicas on other
    hosts reach it (its peer URL stays on loopback: one member)."""

    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"


@dataclass
class Replica:
    host: Host
    data: Path
    api: int = field(default_factory=free_port)
    xds: int = field(default_factory=free_port)
    xds_tls: int = field(default_factory=free_port)  # 15012-style: off loopback, xDS is TLS only
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{self.api}"

    @property
    def log(self) -> Path:
        return self.data.parent / f"replica-{self.host.label}.log"

    def start(self, etcd: EtcdServer, env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "pilotfish", "controlplane", "--data-dir", str(self.data)]
        argv += ["--listen", f"{self.host.address}:{self.api}", "--xds-port", str(self.xds)]
        argv += ["--xds-tls-port", str(self.xds_tls), "--store", etcd.url]
        argv += ["--api-plaintext-off-loopback"]  # failover is this test's subject, not TLS
        with self.log.open("ab") as log:
            self.process = self.host.popen(
                argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: answers(f"{self.url}/readyz"), 30, f"replica {self.url} not ready")

    def leading(self) -> bool:
        return self.log.exists() and LEADING in self.log.read_text(errors="replace")


@dataclass
class Cluster:
    tmp: Path
    a: Replica
    b: Replica
    c: Host
    env: dict[str, str]
    etcd: EtcdServer

    @property
    def state(self) -> Path:
        return self.tmp / "node-c"

    def cli(self, *args: str, check: bool = True) -> str:
        return run_cli(self.env, *args, check=check, timeout=60)

    def apply(self, *objects: dict[str, Any]) -> None:
        path = self.tmp / f"apply-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump_all(objects))
        self.cli("apply", "-f", str(path))

    def canary_status(self) -> dict[str, Any]:
        out = self.cli("get", "canaries", "echo", "-o", "json", check=False)
        return (json.loads(out).get("status") or {}) if out.strip() else {}

    def ready(self, workload: str) -> bool:
        out = self.cli("get", "workloads", workload, "-o", "json", check=False)
        status = (json.loads(out).get("status") or {}) if out.strip() else {}
        return bool(status.get("readyReplicas") == 1)

    def wait_phase(self, phase: str, timeout: float = 90) -> None:
        try:
            wait_for(lambda: self.canary_status().get("phase") == phase, timeout, "")
        except AssertionError:
            raise AssertionError(f"the Canary never reached {phase}:\n{self.describe()}") from None

    def lease_left(self) -> float:
        """The latest the leader's lease can run out, in seconds from now:
        etcd's whole seconds are rounded down."""
        client = self.etcd.client()
        try:
            (key,) = client.call("Range", message("RangeRequest", key=ELECTION_KEY)).kvs
            request = message("LeaseTimeToLiveRequest", ID=key.lease)
            return float(client.call("LeaseTimeToLive", request).TTL) + 1
        finally:
            client.close()

    def describe(self) -> str:
        return self.cli("describe", "canary", "echo", check=False) + self.cli(
            "get", "workloads", check=False
        )

    def events(self) -> list[tuple[str, int]]:
        out = json.loads(self.cli("get", "events", "-o", "json"))
        return [
            (e["message"], int(e.get("count", 1)))
            for e in out["items"]
            if e["involvedObject"]["name"] == "echo"
        ]


@pytest.fixture
def cluster(netns: Callable[[int], Network], tmp_path: Path) -> Iterator[Cluster]:  # noqa: F811
    net = netns(3)
    try:
        etcd_binary()
    except RuntimeError as e:  # etcd is not installed: say so
        pytest.skip(str(e))
    etcd = BridgeEtcd(tmp_path / "etcd", host=net.gateway).start()
    env = isolated_env(tmp_path)
    a = Replica(net.hosts[0], tmp_path / "a")
    b = Replica(net.hosts[1], tmp_path / "b")
    agent: subprocess.Popen[bytes] | None = None
    c = Cluster(tmp_path, a, b, net.hosts[2], env, etcd)
    try:
        a.start(etcd, {**env, "PILOTFISH_CONFIG": str(tmp_path / "a-config.yaml")})
        wait_for(a.leading, 20, "replica a never led")
        # The replicas share the admin token, the service-account token key
        # and the CA (docs/multi-host.md).
        b.data.mkdir()
        for name in ("token", "sa-token-key"):
            shutil.copy2(a.data / name, b.data / name)
        shutil.copytree(a.data / "ca", b.data / "ca")
        b.start(etcd, {**env, "PILOTFISH_CONFIG": str(tmp_path / "b-config.yaml")})
        token = (a.data / "token").read_text().strip()
        # The CLI talks to b, the replica that stays.
        c.env = {**env, "PILOTFISH_TOKEN": token, "PILOTFISH_SERVER": b.url}
        argv = [sys.executable, "-m", "pilotfish", "node", "--node-name", "host-c"]
        argv += ["--server", f"{a.url},{b.url}", "--address", c.c.address]
        argv += ["--xds", f"{a.host.address}:{a.xds_tls},{b.host.address}:{b.xds_tls}"]
        argv += ["--xds-root-cert", str(a.data / "ca" / "root-cert.pem")]  # the shared CA's
        argv += ["--state-dir", str(c.state)]
        with (tmp_path / "node-c.log").open("ab") as log:
            agent = c.c.popen(argv, env=c.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        yield c
    finally:
        if agent is not None:
            stop_process(agent)  # SIGTERM: an agent stops what it runs
        stop_leftovers(c.state)
        for replica in (a, b):
            if replica.process is not None:
                stop_process(replica.process)
        etcd.stop()


def workload(name: str, app: Path, **env: str) -> dict[str, Any]:
    return {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "labels": {"app": name},
            "command": ["python3", str(app)],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "ports": [{"name": "http", "port": 80}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            "terminationGracePeriodSeconds": 2,
        },
    }


def canary() -> dict[str, Any]:
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "echo"},
            "service": {
                "port": 80,
                "retries": {
                    "attempts": 5,
                    "perTryTimeout": "1s",
                    "retryOn": "connect-failure,reset,5xx,gateway-error",
                },
            },
            "analysis": {
                "interval": "2s",
                "threshold": 3,
                "stepWeight": STEPS[0],
                "maxWeight": STEPS[-1],
            },
        },
    }


def test_killing_the_leader_mid_analysis_loses_no_step_and_no_call(cluster: Cluster) -> None:
    app = cluster.tmp / "echo.py"
    app.write_text(textwrap.dedent(ECHO_APP))
    cluster.apply(workload("echo", app), workload("caller", app), canary())
    cluster.wait_phase("Initialized")
    for name in ("echo-primary", "caller"):
        wait_for(lambda n=name: cluster.ready(n), 60, f"{name} never ready")
    (record,) = (cluster.state / "instances" / "default").glob("caller-*/instance.json")
    outbound = json.loads(record.read_text())["ports"]["outbound"]
    process = cluster.c.popen([sys.executable, "-c", CALLER, str(outbound)], stdout=subprocess.PIPE)
    calls = Calls(process)
    wait_for(lambda: calls.served_by("echo-primary", 0, 10), 60, "the caller is not served")

    # A new build: the analysis starts; kill -9 the leader once it is under way.
    cluster.apply(workload("echo", app, BUILD="2"))
    wait_for(
        lambda: int(cluster.canary_status().get("canaryWeight") or 0) >= STEPS[0],
        60,
        "the analysis never started",
    )
    assert cluster.a.leading() and not cluster.b.leading()
    assert cluster.a.process is not None
    left = cluster.lease_left()
    cluster.a.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    cluster.a.process.wait()
    weight_at_kill = int(cluster.canary_status().get("canaryWeight") or 0)

    wait_for(cluster.b.leading, 20, "replica b never took the lead")
    took_over = time.monotonic() - killed_at
    cluster.wait_phase("Succeeded")
    done = time.monotonic() - killed_at
    print(
        f"leader killed at weight {weight_at_kill}, its lease ending within {left:.0f} s: "
        f"replica b led {took_over:.1f} s later; "
        f"the release Succeeded {done:.1f} s after the kill; {len(calls.lines)} calls"
    )
    # Within the lease (15 s from the dead leader's last renewal), and within
    # a second of its end: etcd expires it on its own check (every 0.5 s),
    # and b campaigns on its next tick (0.5 s) once the last second began.
    assert left <= 15 + 1, f"the leader's lease had {left} s left"  # client-go's 15 s
    assert took_over <= left + 1, f"b led {took_over - left:.1f} s after the lease was over"
    assert weight_at_kill < STEPS[-1], "the leader was killed after the analysis"

    events = cluster.events()
    for weight in STEPS:
        message = f"Advance echo.default canary weight {weight}"
        assert sum(n for m, n in events if m == message) == 1, (message, events)
    assert any(o.startswith("ok echo-") and "primary" not in o for o in calls.since(0)), (
        "the canary never served a call"
    )
    failed = [o for o in calls.since(0) if not o.startswith("ok ")]
    assert failed == [], f"{len(failed)} of {len(calls.lines)} calls failed: {failed[:5]}"
