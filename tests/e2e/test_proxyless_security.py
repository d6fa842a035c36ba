"""Proxyless gRPC security with grpcio itself as the referee: `pilotfish
grpc-agent` writes each workload's xDS bootstrap and its certificate from
the mesh CA; an xDS-enabled grpcio server (`grpc.server(xds=True)`) and a
proxyless client (`xds:///`, `xds_channel_credentials`) then talk mutual TLS
as a DestinationRule and a PeerAuthentication say, and the server enforces
AuthorizationPolicy through gRPC's own RBAC filter (gRFC A41)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from mesh_processes import XdsControlPlane, wait_until, xds_plane
from tests.ports import free_port

APPS = Path(__file__).with_name("grpc_secure_apps.py")
HOST = "secure.default.svc.cluster.local"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/default"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/sleep"
SETTLE_S = 0.6  # > the ADS debounce (0.1 s) plus a push
CERT_TTL_S = 10  # short, so every test runs across renewals (at half-life: every ~5 s)

BASE = """
apiVersion: v1
kind: Service
metadata: {name: secure}
spec:
  selector: {app: secure}
  ports: [{name: grpc, port: 7070}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure}
spec:
  host: secure
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"""


def peer_authentication(mode: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: secure}}
spec:
  selector: {{matchLabels: {{app: secure}}}}
  mtls: {{mode: {mode}}}
"""


@dataclass
class Mesh:
    plane: XdsControlPlane
    port: int  # the xDS-enabled server's
    client_dir: Path
    server_dir: Path

    def apply(self, manifest: str) -> None:
        done = self.plane.cli("apply", "-f", "-", stdin=manifest)
        assert done.returncode == 0, done.stderr
        time.sleep(SETTLE_S)

    def delete(self, kind: str, name: str) -> None:
        done = self.plane.cli("delete", kind, name)
        assert done.returncode == 0, done.stderr
        time.sleep(SETTLE_S)

    def call(
        self, method: str = "Call", calls: int = 1, plaintext: bool = False, target: str = ""
    ) -> Any:
        target = target or (f"127.0.0.1:{self.port}" if plaintext else f"xds:///{HOST}:7070")
        args = ["call", "--target", target, "--method", method, "--calls", str(calls)]
        done = subprocess.run(
            [sys.executable, str(APPS), *args, *(["--plaintext"] if plaintext else [])],
            env={**self.plane.env, "GRPC_XDS_BOOTSTRAP": str(self.client_dir / "bootstrap.json")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def grpc_agent(
    plane: XdsControlPlane,
    name: str,
    account: str,
    directory: Path,
    labels: dict[str, str],
    token_of: str = "",
) -> subprocess.Popen[str]:
    """`pilotfish grpc-agent` holding `account`'s identity, with the token of
    `token_of` (default: the same account), once its bootstrap is written."""
    token = plane.cli("create", "token", token_of or account)
    assert token.returncode == 0, token.stderr
    token_file = directory.parent / f"{name}.token"
    token_file.write_text(token.stdout.strip())
    label_args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
    agent = plane.pilotfish(
        "grpc-agent",
        name,
        "--service-account",
        account,
        *label_args,
        "--xds",
        f"127.0.0.1:{plane.xds_port}",
        "--dir",
        str(directory),
        "--ca-token-file",
        str(token_file),
        "--refresh-interval",
        "1s",
        stdout=subprocess.PIPE,
    )
    plane.children.append(agent)
    assert agent.stdout is not None
    assert agent.stdout.readline().startswith("bootstrap: "), "grpc-agent wrote no bootstrap"
    return agent


def certified(agent: subprocess.Popen[str]) -> None:
    assert agent.stdout is not None
    line = agent.stdout.readline()
    assert line.startswith("certificate: serial "), line


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("proxyless-security")
    plane = xds_plane(tmp, "--workload-cert-ttl", f"{CERT_TTL_S}s")
    try:
        plane.start()
        found = Mesh(plane, free_port(), tmp / "client", tmp / "server")
        found.apply(BASE + "---" + peer_authentication("STRICT"))
        certified(grpc_agent(plane, "secure-0", "default", found.server_dir, {"app": "secure"}))
        certified(grpc_agent(plane, "sleep-0", "sleep", found.client_dir, {"app": "sleep"}))
        server = subprocess.Popen(
            [sys.executable, str(APPS), "serve", "--port", str(found.port)],
            env={**plane.env, "GRPC_XDS_BOOTSTRAP": str(found.server_dir / "bootstrap.json")},
            stdout=subprocess.PIPE,
            text=True,
        )
        plane.children.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "serving"
        plane.children.append(plane.register("secure-0", found.port, {"app": "secure"}))
        wait_until(
            lambda: len(plane.get("/api/v1/registry/instances")["items"]) == 1,
            10,
            "the server did not register",
        )
        yield found
    finally:
        plane.stop_all()


def test_grpc_agent_writes_a_bootstrap_and_a_mesh_certificate(mesh: Mesh) -> None:
    bootstrap = json.loads((mesh.server_dir / "bootstrap.json").read_text())
    provider = bootstrap["certificate_providers"]["default"]
    assert provider["plugin_name"] == "file_watcher"
    assert provider["config"]["private_key_file"] == str(mesh.server_dir / "key.pem")
    assert bootstrap["server_listener_resource_name_template"] == (
        "xds.istio.io/grpc/lds/inbound/%s"
    )
    assert stat.S_IMODE((mesh.server_dir / "key.pem").stat().st_mode) == 0o600
    (leaf,) = x509.load_pem_x509_certificates((mesh.server_dir / "cert-chain.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SERVER_ID]
    root = x509.load_pem_x509_certificate((mesh.server_dir / "root-cert.pem").read_bytes())
    leaf.verify_directly_issued_by(root)


def test_mutual_tls_and_the_server_sees_the_clients_spiffe_id(mesh: Mesh) -> None:
    answer = mesh.call(calls=3)
    assert answer["errors"] == {}, answer
    for reply in answer["replies"]:
        auth = reply["auth"]
        assert auth["transport_security_type"] == ["tls"], auth
        assert CLIENT_ID in auth["x509_subject_alternative_name"], auth


def test_a_token_gets_no_certificate_for_another_identity(mesh: Mesh, tmp_path: Path) -> None:
    directory = tmp_path / "thief"
    agent = grpc_agent(mesh.plane, "thief-0", "default", directory, {}, token_of="sleep")
    assert agent.stdout is not None
    refused = agent.stdout.readline()
    agent.terminate()
    agent.wait(timeout=10)
    assert "PERMISSION_DENIED" in refused and f"may not hold {SERVER_ID}" in refused, refused
    assert not (directory / "key.pem").exists() and not (directory / "cert-chain.pem").exists()


def serial(pem_file: Path) -> int:
    return x509.load_pem_x509_certificates(pem_file.read_bytes())[0].serial_number


def test_renewal_at_half_life_replaces_the_files_and_fails_no_call(mesh: Mesh) -> None:
    chain = mesh.client_dir / "cert-chain.pem"
    first, presented = serial(chain), set()
    deadline = time.monotonic() + CERT_TTL_S * 0.8  # past the next half-life
    while time.monotonic() < deadline:
        answer = mesh.call()
        assert answer["errors"] == {}, answer
        presented.add(answer["replies"][0]["auth"]["x509_pem_cert"][0])
    assert serial(chain) != first
    assert len(presented) >= 2, "the server saw one client certificate only"


def test_a_plaintext_client_is_refused_by_a_strict_server(mesh: Mesh) -> None:
    assert mesh.call()["errors"] == {}  # serving, to mesh clients
    answer = mesh.call(plaintext=True, calls=2)
    assert answer["replies"] == [] and answer["errors"] == {"UNAVAILABLE": 2}, answer


def test_permissive_serves_plaintext_as_istio_builds_it_for_proxyless(mesh: Mesh) -> None:
    mesh.apply(peer_authentication("PERMISSIVE") + "---" + BASE.replace("ISTIO_MUTUAL", "DISABLE"))
    try:
        wait_until(lambda: mesh.call(plaintext=True)["errors"] == {}, 10, "plaintext refused")
        (reply,) = mesh.call(plaintext=True)["replies"]
        assert reply["auth"].get("transport_security_type") != ["tls"], reply
        assert mesh.call()["errors"] == {}  # the proxyless client follows DISABLE
    finally:
        mesh.apply(peer_authentication("STRICT") + "---" + BASE)
    wait_until(lambda: mesh.call(plaintext=True)["replies"] == [], 10, "STRICT not back")


def deny(name: str, rule: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: secure}}}}
  action: DENY
  rules: [{rule}]
"""


def test_authorization_deny_by_path_and_by_principal(mesh: Mesh) -> None:
    mesh.apply(deny("no-secrets", "{to: [{operation: {paths: [/pilotfish.test.Echo/Secret]}}]}"))
    wait_until(
        lambda: mesh.call("Secret")["errors"] == {"PERMISSION_DENIED": 1}, 10, "Secret not denied"
    )
    assert mesh.call("Call", calls=3)["errors"] == {}
    mesh.delete("authorizationpolicy", "no-secrets")
    wait_until(lambda: mesh.call("Secret")["errors"] == {}, 10, "Secret still denied")
    mesh.apply(
        deny("not-sleep", "{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}")
    )
    try:
        wait_until(
            lambda: mesh.call("Call")["errors"] == {"PERMISSION_DENIED": 1},
            10,
            "the sleep principal was not denied",
        )
    finally:
        mesh.delete("authorizationpolicy", "not-sleep")


def test_the_server_acks_its_listener_and_proxy_config_shows_it(mesh: Mesh) -> None:
    status = mesh.plane.cli("proxy-status")
    assert status.returncode == 0, status.stderr
    (row,) = [line for line in status.stdout.splitlines() if "secure-0" in line]
    assert "SYNCED" in row and "NACK" not in row and "STALE" not in row, status.stdout
    listeners = mesh.plane.cli("proxy-config", "listeners", "secure-0.default")
    assert listeners.returncode == 0, listeners.stderr
    name = f"xds.istio.io/grpc/lds/inbound/0.0.0.0:{mesh.port}"
    (shown,) = [line.split() for line in listeners.stdout.splitlines() if name in line]
    assert shown == [name, "0.0.0.0", str(mesh.port), "HTTP", "Route:", f"inbound|http|{mesh.port}"]


NODE_MESH = f"""
apiVersion: v1
kind: Service
metadata: {{name: node-secure}}
spec:
  selector: {{app: node-secure}}
  ports: [{{name: grpc, port: 7071}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: node-secure}}
spec:
  host: node-secure
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: node-secure}}
spec:
  selector: {{matchLabels: {{app: node-secure}}}}
  mtls: {{mode: STRICT}}
---
apiVersion: pilotfish.dev/v1alpha1
kind: Workload
metadata:
  name: node-secure
  annotations: {{inject.istio.io/templates: grpc-agent}}
spec:
  labels: {{app: node-secure}}
  serviceAccountName: node-secure
  command: [python3, {APPS}, serve, --port, $(PORT)]
  ports: [{{name: grpc, port: 7071}}]
"""


def test_the_node_agent_runs_a_proxyless_workload_with_grpc_agent(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.apply(NODE_MESH)
    agent = mesh.plane.pilotfish(
        "node", "--state-dir", str(tmp_path / "node"), "--xds", f"127.0.0.1:{mesh.plane.xds_port}"
    )
    target = "xds:///node-secure.default.svc.cluster.local:7071"
    try:
        wait_until(lambda: mesh.call(target=target)["errors"] == {}, 60, "never served")
        (reply,) = mesh.call(target=target)["replies"]
        assert reply["auth"]["transport_security_type"] == ["tls"], reply
        assert CLIENT_ID in reply["auth"]["x509_subject_alternative_name"], reply
        (instance,) = [
            i
            for i in mesh.plane.get("/api/v1/registry/instances")["items"]
            if i["workload"] == "node-secure"
        ]
        # callers reach the app itself; only ISTIO_MUTUAL sends it TLS
        assert instance["ports"] == instance["appPorts"], instance
        assert instance["labels"] == {"app": "node-secure"}, instance
        assert instance["serviceAccount"] == "node-secure"
        (directory,) = (tmp_path / "node" / "instances" / "default").iterdir()
        chain = x509.load_pem_x509_certificates(
            (directory / "grpc" / "cert-chain.pem").read_bytes()
        )
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://cluster.local/ns/default/sa/node-secure"
        ]
    finally:
        mesh.plane.cli("delete", "workload", "node-secure")
        agent.terminate()
        agent.wait(timeout=30)
