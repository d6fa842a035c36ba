"""Istio's HTTP-traffic authorization task on Bookinfo, on a real mesh: the
control plane translates AuthorizationPolicies, the sidecars enforce them.

https://istio.io/latest/docs/tasks/security/authorization/authz-http/ with
what pilotfish cannot do yet said plainly: there is no mutual TLS on the
wire, so a peer has no verified identity and a rule naming service-account
principals never matches (as in Envoy on a plaintext connection)."""

from __future__ import annotations

import contextlib
import sys
import urllib.error
import urllib.request
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


def get(port: int, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/productpage", headers=headers or {})
    try:
        with DIRECT.open(request, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


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

    # details-viewer by service-account principal: without mutual TLS the
    # caller has no verified identity, so it does not match.
    by_principal = {
        "selector": {"matchLabels": {"app": "details"}},
        "action": "ALLOW",
        "rules": [
            {
                "from": [
                    {"source": {"principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]}}
                ],
                "to": [{"operation": {"methods": ["GET"]}}],
            }
        ],
    }
    apply(mesh, tmp_path, policy("details-viewer", by_principal))
    wait_for(lambda: "rbac.denied" in stats(mesh, "details-v1"), 20, "details saw no request")
    assert "Error fetching product details" in get(port)[1]

    # The same policy by the caller's address matches: it was the principal.
    by_ip = {**by_principal, "rules": [{"from": [{"source": {"ipBlocks": ["127.0.0.0/8"]}}]}]}
    apply(mesh, tmp_path, policy("details-viewer", by_ip))
    wait_for(
        lambda: "Error fetching product details" not in get(port)[1], 20, "details still denied"
    )

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

    for name in ("allow-nothing", "productpage-viewer", "details-viewer", "deny-all-dry-run"):
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
