"""Two control-plane replicas on one real etcd, a node agent and its sidecar
given both: kill -9 the replica they talk to, and they carry on with the
other by themselves. The other replica already has the instance (shared
through etcd); the sidecar keeps its config meanwhile, reconnects, serves
without a failed call, and takes a new push from the surviving replica; the
agent keeps registering."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.agent.mesh_harness import (
    DIRECT,
    REPO,
    answers,
    free_port,
    isolated_env,
    run_cli,
    stop_process,
    wait_for,
)
from tests.etcd_server import EtcdServer

DETAILS = """
apiVersion: v1
kind: Service
metadata: {name: details}
spec:
  selector: {app: details}
  ports: [{name: http, port: 9080}]
---
apiVersion: pilotfish.dev/v1alpha1
kind: Workload
metadata: {name: details-v1}
spec:
  labels: {app: details, version: v1}
  workingDir: examples/bookinfo/apps
  command: [python3, details.py]
  ports: [{name: http, port: 9080}]
  readinessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 1}
  terminationGracePeriodSeconds: 2
"""
EXTRA = """
apiVersion: v1
kind: Service
metadata: {name: pushed-after-failover}
spec:
  selector: {app: nobody}
  ports: [{name: http, port: 9080}]
"""


@dataclass
class Replica:
    data: Path
    api: int
    xds: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api}"

    def start(self, etcd: EtcdServer, env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "pilotfish", "controlplane", "--data-dir", str(self.data)]
        argv += ["--listen", f"127.0.0.1:{self.api}", "--xds-port", str(self.xds)]
        argv += ["--store", etcd.url]
        with (self.data.parent / f"{self.data.name}.log").open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: answers(f"{self.url}/readyz"), 30, f"replica {self.url} not ready")


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with DIRECT.open(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Replica, Replica, dict[str, str]]]:
    etcd = EtcdServer(tmp_path / "etcd").start()
    env = isolated_env(tmp_path)
    a = Replica(tmp_path / "a", free_port(), free_port())
    b = Replica(tmp_path / "b", free_port(), free_port())
    try:
        a.start(etcd, env)
        # The replicas share the admin token, the service-account token key
        # and the CA (docs/multi-host.md): what one issued, the other accepts.
        b.data.mkdir()
        for name in ("token", "sa-token-key"):
            shutil.copy2(a.data / name, b.data / name)
        shutil.copytree(a.data / "ca", b.data / "ca")
        b.start(etcd, {**env, "PILOTFISH_CONFIG": str(tmp_path / "b-config.yaml")})
        yield a, b, env
    finally:
        for replica in (a, b):
            if replica.process is not None:
                stop_process(replica.process)
        etcd.stop()


def test_sidecar_and_agent_fail_over_to_the_other_replica(
    replicas: tuple[Replica, Replica, dict[str, str]], tmp_path: Path
) -> None:
    a, b, env = replicas
    token = (a.data / "token").read_text().strip()
    agent_env = {**env, "PILOTFISH_TOKEN": token}
    state = tmp_path / "node"
    argv = [sys.executable, "-m", "pilotfish", "node", "--state-dir", str(state)]
    argv += ["--server", f"{a.url},{b.url}", "--xds", f"127.0.0.1:{a.xds},127.0.0.1:{b.xds}"]
    with (tmp_path / "node.log").open("ab") as log:
        agent = subprocess.Popen(argv, env=agent_env, cwd=REPO, stdout=log, stderr=log)
    try:
        (tmp_path / "details.yaml").write_text(DETAILS)
        run_cli(agent_env, "apply", "-f", str(tmp_path / "details.yaml"), "--server", a.url)
        wait_for(lambda: _ready(a, token), 60, "details-v1 did not become ready")
        instance = _get(f"{a.url}/api/v1/registry/instances", token)["items"][0]
        name, inbound = instance["name"], instance["ports"]["http"]
        assert answers(f"http://127.0.0.1:{inbound}/health")  # through the sidecar
        admin = _admin_port(state / "instances" / "default" / name / "bootstrap.yaml")
        assert "details.default.svc.cluster.local" in _config_dump(admin)

        # Registered through a only, yet b has it: registrations live in etcd.
        wait_for(
            lambda: name in json.dumps(_get(f"{b.url}/api/v1/registry/instances", token)),
            5,
            "the surviving replica does not share the registration",
        )
        assert a.process is not None
        a.process.send_signal(signal.SIGKILL)
        a.process.wait()
        # The sidecar serves on its last config, streams from b, and b (which
        # knows the instance) sends it its inbound listener: no call fails.
        answered = []
        while name not in json.dumps(_get(f"{b.url}/debug/syncz", token)):
            answered.append(answers(f"http://127.0.0.1:{inbound}/health"))
            assert len(answered) < 150, "the sidecar did not reconnect to the surviving replica"
            time.sleep(0.1)
        for _ in range(20):  # and after b's first push
            answered.append(answers(f"http://127.0.0.1:{inbound}/health"))
            time.sleep(0.1)
        assert all(answered), f"{answered.count(False)} of {len(answered)} calls failed"
        assert answers(f"http://127.0.0.1:{admin}/ready")
        assert "details.default.svc.cluster.local" in _config_dump(admin)  # kept
        (tmp_path / "extra.yaml").write_text(EXTRA)
        run_cli(agent_env, "apply", "-f", str(tmp_path / "extra.yaml"), "--server", b.url)
        wait_for(
            lambda: "pushed-after-failover" in _config_dump(admin),
            15,
            "no push from the surviving replica reached the sidecar",
        )
        wait_for(lambda: _ready(b, token), 15, "the workload is not ready as b sees it")
    finally:
        stop_process(agent)


def _ready(replica: Replica, token: str) -> bool:
    url = f"{replica.url}/apis/pilotfish.dev/v1alpha1/namespaces/default/workloads/details-v1"
    try:
        status = _get(url, token).get("status") or {}
    except OSError:
        return False
    return bool(status.get("readyReplicas") == 1)


def _admin_port(bootstrap: Path) -> int:
    config = yaml.safe_load(bootstrap.read_text())
    return int(config["admin"]["address"]["socket_address"]["port_value"])


def _config_dump(admin: int) -> str:
    with DIRECT.open(f"http://127.0.0.1:{admin}/config_dump", timeout=5) as response:
        return str(response.read().decode())
