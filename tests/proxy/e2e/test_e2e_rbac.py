"""The RBAC filter in a real sidecar, driven with curl: policies translated
by the control plane's translator, put in a static bootstrap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from harness import access_log_lines, curl, free_port, listener, route, static_cluster, vhost

from pilotfish.translate.authz import AuthzSettings, translate_rbac_http


def rbac_filters(*policies: dict[str, Any]) -> list[dict[str, Any]]:
    filters = translate_rbac_http(list(policies), AuthzSettings())
    # A JSON round trip: MessageToDict leaves OrderedDicts the YAML dumper refuses.
    return [json.loads(json.dumps(MessageToDict(f))) for f in filters]


def test_deny_is_403_rbac_access_denied_with_details_and_stats(
    start_proxy, make_backend, tmp_path: Path
) -> None:
    svc = make_backend("svc")
    port, log = free_port(), tmp_path / "access.log"
    deny = {
        "metadata": {"name": "deny-post", "namespace": "default"},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]},
    }
    dry_run = {
        "metadata": {
            "name": "would-deny-admin",
            "namespace": "default",
            "annotations": {"istio.io/dry-run": "true"},
        },
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]},
    }
    proxy = start_proxy(
        [
            listener(
                "inbound_9080",
                port,
                [vhost("all", ["*"], [route("svc")])],
                http_filters=rbac_filters(deny, dry_run),
                access_log=str(log),
            )
        ],
        [static_cluster("svc", [svc.port])],
    )
    denied = curl(f"http://127.0.0.1:{port}/items", "-X", "POST")
    assert (denied.status, denied.text) == (403, "RBAC: access denied")
    assert denied.header("content-type") == "text/plain"
    assert curl(f"http://127.0.0.1:{port}/items").status == 200
    assert curl(f"http://127.0.0.1:{port}/admin").status == 200  # dry run: counted only
    assert svc.count == 2
    lines = access_log_lines(log, 3)
    assert lines[0]["response_code_details"] == (
        "rbac_access_denied_matched_policy[ns[default]-policy[deny-post]-rule[0]]"
    )
    assert lines[1]["response_code_details"] is None
    _, stats = proxy.admin_get("/stats")
    assert "http.inbound_9080.rbac.allowed: 2" in stats
    assert "http.inbound_9080.rbac.denied: 1" in stats
    assert "http.inbound_9080.rbac.istio_dry_run_deny_shadow_denied: 1" in stats
    assert "http.inbound_9080.rbac.istio_dry_run_deny_shadow_allowed: 2" in stats
