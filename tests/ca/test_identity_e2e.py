"""Workload identity end to end: a control plane with its CA, `pilotfish
node`, one Workload; the sidecar holds a certificate for the Workload's
SPIFFE ID, chained to the mesh root (checked with openssl), shown by
`pilotfish proxy-config secret`, and renewed at half-life while it serves.
A hand-started `pilotfish proxy` with a service account token gets its own,
and one claiming another service account gets none."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from tests.agent.mesh_harness import DIRECT, Mesh, free_port, mesh_started, stop_process, wait_for

from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, sidecar_bootstrap

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
TTL_S = 8
WORKLOAD = """
apiVersion: pilotfish.dev/v1alpha1
kind: Workload
metadata: {name: web, namespace: shop}
spec:
  labels: {app: web, version: v1}
  serviceAccountName: web-frontend
  command: [python3, -m, http.server, $(PORT), --bind, 127.0.0.1]
  ports:
  - {name: http, port: 8000}
  terminationGracePeriodSeconds: 2
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("identity")
    plane_args = ("--workload-cert-ttl", f"{TTL_S}s")
    with mesh_started(tmp, gateway=True, plane_args=plane_args) as m:
        (tmp / "web.yaml").write_text(WORKLOAD)
        m.cli("apply", "-f", str(tmp / "web.yaml"))
        wait_for(lambda: ready(m), 60, "web is not ready")
        yield m


def ready(m: Mesh) -> bool:
    status = json.loads(m.cli("get", "workloads", "web", "-n", "shop", "-o", "json"))
    instances = (status.get("status") or {}).get("instances") or []
    return bool(instances) and all(i["ready"] for i in instances)


def instance(m: Mesh) -> dict[str, Any]:
    status = json.loads(m.cli("get", "workloads", "web", "-n", "shop", "-o", "json"))["status"]
    return dict(status["instances"][0])


def secrets_of(m: Mesh, name: str) -> dict[str, Any]:
    dump = json.loads(m.cli("proxy-config", "secret", f"{name}.shop", "-o", "json"))
    return {s["name"]: s for s in dump.get("dynamicActiveSecrets") or []}


def pems(secrets: dict[str, Any]) -> tuple[bytes, bytes]:
    chain = secrets["default"]["secret"]["tlsCertificate"]["certificateChain"]["inlineBytes"]
    root = secrets["ROOTCA"]["secret"]["validationContext"]["trustedCa"]["inlineBytes"]
    return base64.b64decode(chain), base64.b64decode(root)


def test_the_sidecar_holds_a_certificate_for_its_workload_chained_to_the_mesh_root(
    mesh: Mesh, tmp_path: Path
) -> None:
    name = instance(mesh)["name"]
    secrets = wait_for(lambda: secrets_of(mesh, name) or None, 20, "no secrets in the sidecar")
    chain, root = pems(secrets)
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "root.pem").write_bytes(root)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "chain.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and "chain.pem: OK" in verify.stdout, verify.stderr
    assert root == (mesh.tmp / "data" / "ca" / "root-cert.pem").read_bytes()
    leaf = x509.load_pem_x509_certificate(chain)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/web-frontend"
    ]
    table = mesh.cli("proxy-config", "secret", f"{name}.shop").splitlines()
    assert table[0].split() == [
        "RESOURCE", "NAME", "TYPE", "STATUS", "VALID", "CERT", "SERIAL", "NUMBER",
        "NOT", "AFTER", "NOT", "BEFORE",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"default", "ROOTCA"}
    assert "Cert Chain   ACTIVE   true" in rows["default"]
    assert "CA           ACTIVE   true" in rows["ROOTCA"]


def test_the_private_key_stays_on_the_host_and_out_of_the_config_dump(mesh: Mesh) -> None:
    found = instance(mesh)
    directory = mesh.state / "instances" / "shop" / found["name"]
    assert oct((directory / "istio-token").stat().st_mode & 0o777) == "0o600"
    registered = json.loads(
        DIRECT.open(f"http://127.0.0.1:{mesh.api_port}/api/v1/registry/instances").read()
    )["items"]
    admin = next(i["metricsPort"] for i in registered if i["name"] == found["name"])
    dump = DIRECT.open(f"http://127.0.0.1:{admin}/config_dump", timeout=5).read()
    assert b"[redacted]" not in dump  # base64 in the JSON, as Envoy's
    assert base64.b64encode(b"[redacted]") in dump
    assert b"PRIVATE KEY" not in dump
    assert not list(directory.glob("*key*")), "the key is held in memory only"


def test_renewal_at_half_life_changes_the_serial_while_the_sidecar_serves(mesh: Mesh) -> None:
    found = instance(mesh)
    port = int(found["ports"]["http"])

    def serial() -> str:
        chain, _ = pems(secrets_of(mesh, found["name"]))
        return format(x509.load_pem_x509_certificate(chain).serial_number, "x")

    first = wait_for(lambda: serial(), 20, "no certificate")
    failures, served, deadline = 0, 0, time.monotonic() + 2 * TTL_S
    second = first
    while second == first and time.monotonic() < deadline:
        try:
            with DIRECT.open(f"http://127.0.0.1:{port}/", timeout=5) as response:
                served += response.status == 200
        except OSError:
            failures += 1
        second = serial()
        time.sleep(0.3)
    assert second != first, "the certificate was not renewed within its lifetime"
    assert failures == 0 and served > 0


def test_the_ingress_gateway_holds_its_service_accounts_certificate(mesh: Mesh) -> None:
    found = list((mesh.state / "instances" / "istio-system").glob("istio-ingressgateway-*"))
    assert len(found) == 1
    bootstrap = yaml.safe_load((found[0] / "bootstrap.yaml").read_text())
    admin = bootstrap["admin"]["address"]["socket_address"]["port_value"]
    secrets = wait_for(lambda: _dump_secrets(admin), 20, "no certificate for the gateway")
    leaf = x509.load_pem_x509_certificate(pems(secrets)[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    ]


def test_a_hand_started_proxy_gets_the_identity_its_token_allows_and_no_other(
    mesh: Mesh, tmp_path: Path
) -> None:
    token = mesh.cli("create", "token", "billing", "-n", "vm").strip()
    (tmp_path / "token").write_text(token + "\n")
    good = _hand_started(mesh, tmp_path, "billing")
    bad = _hand_started(mesh, tmp_path, "payments")
    try:
        secrets = wait_for(lambda: _dump_secrets(good[1]), 20, "no certificate for billing")
        leaf = x509.load_pem_x509_certificate(pems(secrets)[0])
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
            "spiffe://cluster.local/ns/vm/sa/billing"
        ]
        log = tmp_path / "payments.log"
        wait_for(lambda: "PERMISSION_DENIED" in log.read_text(), 20, "no refusal logged")
        assert "the token of service account 'billing' in namespace 'vm' may not hold" in (
            log.read_text()
        )
        assert _dump_secrets(bad[1]) is None
    finally:
        stop_process(good[0])
        stop_process(bad[0])


def _hand_started(mesh: Mesh, tmp: Path, account: str) -> tuple[subprocess.Popen[bytes], int]:
    """`pilotfish proxy` with a bootstrap written as Istio's (the agent's own
    writer): NAMESPACE vm, SERVICE_ACCOUNT `account`."""
    admin = free_port()
    who = SidecarIdentity(f"{account}-0", "vm", account, {"app": account}, account, account)
    bootstrap = sidecar_bootstrap(
        who, admin_port=admin, outbound_port=free_port(), xds=XdsServer("127.0.0.1", mesh.xds_port)
    )
    path = tmp / f"{account}.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    argv = [sys.executable, "-m", "pilotfish", "proxy", "--bootstrap", str(path)]
    argv += ["--ca-token-file", str(tmp / "token")]
    with (tmp / f"{account}.log").open("ab") as log:
        process = subprocess.Popen(
            argv, env={**mesh.env, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT
        )
    return process, admin


def _dump_secrets(admin: int) -> dict[str, Any] | None:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{admin}/config_dump", timeout=2
        ) as response:
            dump = json.loads(response.read())
    except OSError:
        return None
    for config in dump["configs"]:
        if config.get("@type", "").endswith("SecretsConfigDump"):
            found = {s["name"]: s for s in config.get("dynamicActiveSecrets") or []}
            return found or None
    return None
