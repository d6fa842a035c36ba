"""A node agent told the control plane's TLS port (istiod's 15012) and the
mesh root: its sidecar streams ADS and gets its workload certificate over
TLS only (the port it dials speaks nothing else), verifying the control
plane against the root; a bootstrap without the root is refused up front."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tests.agent.mesh_harness import DIRECT, Mesh, free_port, isolated_env, mesh_started, wait_for

DETAILS = """\
apiVersion: v1
kind: Service
metadata: {name: details}
spec:
  ports: [{name: http, port: 9080}]
  selector: {app: details}
---
apiVersion: pilotfish.dev/v1alpha1
kind: Workload
metadata: {name: details-v1}
spec:
  replicas: 1
  labels: {app: details, version: v1}
  serviceAccountName: bookinfo-details
  workingDir: examples/bookinfo/apps
  command: [python3, details.py]
  ports: [{name: http, port: 9080}]
  readinessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 1}
"""


def instance_dir(m: Mesh) -> Path:
    (record,) = (m.state / "instances" / "default").glob("details-v1-*/instance.json")
    return record.parent


def config_dump(admin: int) -> list[dict[str, Any]]:
    with DIRECT.open(f"http://127.0.0.1:{admin}/config_dump", timeout=10) as response:
        configs: list[dict[str, Any]] = json.load(response)["configs"]
    return configs


def test_a_sidecar_gets_config_and_certificate_over_tls_only(tmp_path: Path) -> None:
    tls = free_port()
    root = tmp_path / "data" / "ca" / "root-cert.pem"
    agent = ("--xds", f"127.0.0.1:{tls}", "--xds-root-cert", str(root))
    with mesh_started(tmp_path, plane_args=("--xds-tls-port", str(tls)), agent_args=agent) as m:
        (tmp_path / "details.yaml").write_text(DETAILS)
        m.cli("apply", "-f", str(tmp_path / "details.yaml"))
        wait_for(lambda: m.ready("details-v1"), 60, f"not ready: {m.status('details-v1')}")
        directory = instance_dir(m)
        bootstrap = yaml.safe_load((directory / "bootstrap.yaml").read_text())
        (xds_cluster,) = bootstrap["static_resources"]["clusters"]
        context = xds_cluster["transport_socket"]["typed_config"]["common_tls_context"]
        assert context["validation_context"]["trusted_ca"] == {"filename": str(root)}
        ports = json.loads((directory / "instance.json").read_text())["ports"]
        configs = config_dump(ports["admin"])
        secrets = next(c for c in configs if c["@type"].endswith("SecretsConfigDump"))
        by_name = {s["name"]: s["secret"] for s in secrets["dynamicActiveSecrets"]}
        trusted = by_name["ROOTCA"]["validationContext"]["trustedCa"]["inlineBytes"]
        assert base64.b64decode(trusted) == root.read_bytes()  # issued by the mesh CA
        assert "tlsCertificate" in by_name["default"]
        dumped = json.dumps(configs)
        assert "outbound|9080||details.default.svc.cluster.local" in dumped  # config from ADS


def test_the_node_agent_wants_the_root_for_port_15012(tmp_path: Path) -> None:
    env = {**isolated_env(tmp_path), "PILOTFISH_SERVER": "http://127.0.0.1:1"}
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for extra, error in (
        ((), "--xds: port 15012 is xDS over TLS: give the mesh root to verify it with"),
        (("--xds-root-cert", str(tmp_path / "none.pem")), "none.pem: No such file or directory"),
        (("--xds-root-cert", str(tmp_path / "junk.pem")), "junk.pem: not a PEM certificate"),
    ):
        argv = ["node", "--state-dir", str(tmp_path / "node"), "--xds", "10.0.0.1:15012", *extra]
        done = subprocess.run(
            [sys.executable, "-m", "pilotfish", *argv], env=env, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert done.returncode != 0 and error in done.stderr, done.stderr
        assert not (tmp_path / "node").exists()  # nothing started
