"""Istio's HTTP-traffic authorization task on Bookinfo, on a real mesh: the
control plane translates AuthorizationPolicies, the sidecars enforce them,
curl asks.

https://istio.io/latest/docs/tasks/security/authorization/authz-http/: the
sidecars the node agent runs talk mutual TLS (on by default), so a rule
naming a caller's service account (`cluster.local/ns/default/sa/...`)
matches the SPIFFE ID of its certificate; a request that reaches a sidecar
in plaintext has no principal and does not match."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.agent.mesh_harness import DIRECT, Mesh, mesh_up, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with mesh_up(tmp_path_factory.mktemp("authz")) as m:
        yield m


def get(
    port: int, headers: dict[str, str] | None = None, path: str = "/productpage"
) -> tuple[int, str]:
    """(status, body) as curl sees them, straight to a sidecar's inbound port."""
    command = ["curl", "-s", "-S", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    done = subprocess.run(
        [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, env=env
    )
    body, _, status = done.stdout.rpartition("\n")
    assert status.isdigit() and status != "000", f"curl: {done.stderr}"
    return int(status), body


def apply(mesh: Mesh, tmp: Path, *docs: dict[str, Any]) -> None:
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    mesh.cli("apply", "-f", str(path))


def policy(name: str, spec: dict[str, Any], **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": spec,
    }


def admin_port(mesh: Mesh, workload: str) -> int:
    """The workload's sidecar admin port, from the bootstrap the agent wrote."""
    for path in (mesh.state / "instances").glob("*/*/bootstrap.yaml"):
        with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
            config: Any = yaml.safe_load(path.read_text())
            if workload in str(config["node"]["id"]):
                return int(config["admin"]["address"]["socket_address"]["port_value"])
    raise AssertionError(f"no bootstrap for {workload}")


def stats(mesh: Mesh, workload: str) -> str:
    url = f"http://127.0.0.1:{admin_port(mesh, workload)}/stats"
    with DIRECT.open(url, timeout=5) as r:
        return str(r.read().decode())


PRODUCTPAGE = {"matchLabels": {"app": "productpage"}}


def test_istio_http_authorization_task(mesh: Mesh, tmp_path: Path) -> None:
    port = mesh.inbound("productpage-v1")
    assert get(port)[0] == 200

    # allow-nothing: every workload of the namespace denies every request.
    apply(mesh, tmp_path, policy("allow-nothing", {}))
    wait_for(lambda: get(port) == (403, "RBAC: access denied"), 20, "allow-nothing not enforced")

    # productpage-viewer: GET to productpage allowed; its calls to details
    # and reviews are still denied by their sidecars.
    viewer = {
        "selector": PRODUCTPAGE,
        "action": "ALLOW",
        "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
    }
    apply(mesh, tmp_path, policy("productpage-viewer", viewer))
    wait_for(lambda: get(port)[0] == 200, 20, "productpage-viewer not enforced")
    # Pushes reach the six sidecars one after another: wait for details' and reviews'.
    wait_for(
        lambda: (
            "Error fetching product details" in (body := get(port)[1])
            and "Error fetching product reviews" in body
        ),
        20,
        "details and reviews still answer productpage",
    )

    # details-viewer and reviews-viewer by service-account principal: the
    # caller's identity is its mTLS certificate's. The demo's productpage asks
    # details over gRPC, whose calls are POSTs: details-viewer allows POST too.
    def by_principal(app: str, account: str) -> dict[str, Any]:
        principal = f"cluster.local/ns/default/sa/{account}"
        methods = ["GET", "POST"] if app == "details" else ["GET"]
        return {
            "selector": {"matchLabels": {"app": app}},
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"source": {"principals": [principal]}}],
                    "to": [{"operation": {"methods": methods}}],
                }
            ],
        }

    apply(mesh, tmp_path, policy("details-viewer", by_principal("details", "bookinfo-productpage")))
    wait_for(
        lambda: "Error fetching product details" not in get(port)[1], 20, "details still denied"
    )
    apply(mesh, tmp_path, policy("reviews-viewer", by_principal("reviews", "bookinfo-productpage")))
    wait_for(
        lambda: "Error fetching product reviews" not in get(port)[1], 20, "reviews still denied"
    )
    # Another service account's principal does not match productpage's certificate.
    apply(mesh, tmp_path, policy("details-viewer", by_principal("details", "bookinfo-reviews")))
    wait_for(lambda: "Error fetching product details" in get(port)[1], 20, "details still allowed")
    # Plaintext straight to details' sidecar: no certificate, no principal.
    apply(mesh, tmp_path, policy("details-viewer", by_principal("details", "bookinfo-productpage")))
    wait_for(
        lambda: "Error fetching product details" not in get(port)[1], 20, "details still denied"
    )
    assert get(mesh.inbound("details-v1"), path="/details/0") == (403, "RBAC: access denied")

    # A DENY beats an ALLOW.
    deny = {
        "selector": PRODUCTPAGE,
        "action": "DENY",
        "rules": [{"when": [{"key": "request.headers[x-block]", "values": ["yes"]}]}],
    }
    apply(mesh, tmp_path, policy("deny-blocked", deny))
    wait_for(lambda: get(port, {"x-block": "yes"})[0] == 403, 20, "DENY not enforced")
    assert get(port)[0] == 200

    # A dry-run DENY denies nothing and is counted.
    mesh.cli("delete", "authorizationpolicy", "deny-blocked", "-n", "default")
    dry = {
        "selector": PRODUCTPAGE,
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/productpage"]}}]}],
    }
    apply(mesh, tmp_path, policy("deny-all-dry-run", dry, **{"istio.io/dry-run": "true"}))
    wait_for(
        lambda: (
            get(port)[0] == 200
            and "rbac.istio_dry_run_deny_shadow_denied" in stats(mesh, "productpage-v1")
        ),
        20,
        "no dry-run count",
    )
    assert get(port, {"x-block": "yes"})[0] == 200
    counts = dict(
        line.split(": ") for line in stats(mesh, "productpage-v1").splitlines() if ".rbac." in line
    )
    assert any(
        k.endswith("rbac.istio_dry_run_deny_shadow_denied") and int(v) >= 1
        for k, v in counts.items()
    )

    policies = ("productpage-viewer", "details-viewer", "reviews-viewer", "deny-all-dry-run")
    for name in ("allow-nothing", *policies):
        mesh.cli("delete", "authorizationpolicy", name, "-n", "default")
    wait_for(lambda: "Error fetching" not in get(port)[1], 20, "policies not removed")


AUTHORIZER = """
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Check(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        allowed = self.headers.get("x-ext-authz") == "allow"
        body = b"" if allowed else b"denied by ext_authz for not found header `x-ext-authz: allow`"
        self.send_response(200 if allowed else 403)
        self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

port = int(os.environ.get("PILOTFISH_PORT_HTTP") or os.environ["PORT"])
ThreadingHTTPServer(("127.0.0.1", port), Check).serve_forever()
"""


def test_custom_policy_with_an_authorizer_in_the_mesh(mesh: Mesh, tmp_path: Path) -> None:
    """Istio's ext-authz task: the authorizer a Workload of the mesh, the
    provider in the mesh config, a CUSTOM policy on productpage."""
    script = tmp_path / "ext_authz.py"
    script.write_text(AUTHORIZER)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ext-authz", "namespace": "default"},
        "spec": {"selector": {"app": "ext-authz"}, "ports": [{"name": "http", "port": 8000}]},
    }
    workload = {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "ext-authz", "namespace": "default"},
        "spec": {
            "labels": {"app": "ext-authz"},
            "command": [sys.executable, str(script)],
            "ports": [{"name": "http", "port": 8000}],
        },
    }
    provider = {
        "name": "sample-ext-authz-http",
        "envoyExtAuthzHttp": {
            "service": "ext-authz.default.svc.cluster.local",
            "port": 8000,
            "includeRequestHeadersInCheck": ["x-ext-authz"],
            "headersToDownstreamOnDeny": ["x-ext-authz-check-result"],
        },
    }
    mesh_config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": yaml.safe_dump({"extensionProviders": [provider]})},
    }
    custom = policy(
        "ext-authz",
        {
            "selector": PRODUCTPAGE,
            "action": "CUSTOM",
            "provider": {"name": "sample-ext-authz-http"},
            "rules": [{"to": [{"operation": {"paths": ["/productpage"]}}]}],
        },
    )
    apply(mesh, tmp_path, service, workload, mesh_config, custom)
    wait_for(lambda: mesh.ready("ext-authz"), 60, "the authorizer is not ready")
    port = mesh.inbound("productpage-v1")
    wait_for(lambda: get(port)[0] == 403, 30, "the CUSTOM policy is not enforced")
    assert get(port) == (403, "denied by ext_authz for not found header `x-ext-authz: allow`")
    assert get(port, {"x-ext-authz": "allow"})[0] == 200
    mesh.cli("delete", "authorizationpolicy", "ext-authz", "-n", "default")
    wait_for(lambda: get(port)[0] == 200, 30, "the CUSTOM policy was not removed")
