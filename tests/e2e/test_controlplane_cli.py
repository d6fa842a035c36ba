"""The control plane as a process, driven by the CLI only (and curl, as a user would)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from processes import REPO, ControlPlane

PILOTFISH = (sys.executable, "-m", "pilotfish")
BOOKINFO = str(REPO / "examples" / "bookinfo")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_apply_get_describe_delete(controlplane: ControlPlane) -> None:
    out = ok(controlplane.cli("apply", "-f", BOOKINFO))
    assert "service/reviews created" in out
    assert "virtualservice.networking.istio.io/reviews created" in out
    assert "destinationrule.networking.istio.io/reviews created" in out

    again = ok(controlplane.cli("apply", "-f", BOOKINFO))
    assert "virtualservice.networking.istio.io/reviews unchanged" in again

    table = ok(controlplane.cli("get", "vs")).splitlines()
    assert table[0].split() == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
    assert any(line.split()[:1] == ["reviews"] and '["reviews"]' in line for line in table[1:])

    vs = yaml.safe_load(ok(controlplane.cli("get", "virtualservice", "reviews", "-o", "yaml")))
    assert vs["spec"]["http"][0]["route"][0]["destination"] == {"host": "reviews", "subset": "v1"}
    assert vs["metadata"]["namespace"] == "default" and vs["metadata"]["generation"] == 1
    assert {m["manager"] for m in vs["metadata"]["managedFields"]} == {"pilotfish"}

    described = ok(controlplane.cli("describe", "dr", "reviews"))
    assert "Name:         reviews" in described and "Namespace:    default" in described

    listed = json.loads(ok(controlplane.cli("get", "services", "-A", "-o", "json")))
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == [
        "details",
        "productpage",
        "ratings",
        "redis",
        "reviews",
    ]

    out = ok(controlplane.cli("delete", "vs", "ratings"))
    assert out.strip() == 'virtualservice.networking.istio.io "ratings" deleted'
    missing = controlplane.cli("get", "vs", "ratings")
    assert missing.returncode == 1
    assert (
        'Error from server (NotFound): virtualservices.networking.istio.io "ratings" not found'
        in missing.stderr
    )


def test_delete_waits_for_finalizers_as_kubectl_does(controlplane: ControlPlane) -> None:
    held = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "held", "finalizers": ["example.com/hold"]},
        "data": {"a": "b"},
    }
    ok(controlplane.cli("apply", "-f", "-", stdin=yaml.safe_dump(held)))
    out = ok(controlplane.cli("delete", "configmap", "held", "--wait=false"))
    assert out.strip() == 'configmap "held" deleted'
    marked = json.loads(ok(controlplane.cli("get", "configmap", "held", "-o", "json")))
    assert "deletionTimestamp" in marked["metadata"], "a finalizer holds it"
    timed_out = controlplane.cli("delete", "configmap", "held", "--timeout=1s")
    assert timed_out.returncode == 1
    assert "timed out waiting for the condition on configmaps/held" in timed_out.stderr
    waiting = subprocess.Popen(
        [*PILOTFISH, "delete", "configmap", "held"],
        env=controlplane.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    assert waiting.poll() is None, "it waits while the finalizer is there"
    released = {**held, "metadata": {"name": "held"}}  # the applier lets go of its finalizer
    ok(controlplane.cli("apply", "-f", "-", stdin=yaml.safe_dump(released)))
    assert waiting.wait(timeout=10) == 0
    assert controlplane.cli("get", "configmap", "held").returncode == 1


def test_a_changed_spec_is_configured_and_bumps_generation(
    controlplane: ControlPlane, tmp_path: Path
) -> None:
    ok(controlplane.cli("apply", "-f", BOOKINFO))
    changed = (
        (REPO / "examples/bookinfo/20-routing.yaml")
        .read_text()
        .replace("subset: v1}", "subset: v2}", 1)
    )
    out = ok(controlplane.cli("apply", "-f", "-", stdin=changed))
    assert "destinationrule.networking.istio.io/reviews unchanged" in out
    assert "virtualservice.networking.istio.io/reviews configured" in out
    vs = json.loads(ok(controlplane.cli("get", "vs", "reviews", "-o", "json")))
    assert vs["metadata"]["generation"] == 2
    assert vs["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v2"


def test_invalid_config_is_rejected_with_its_field_and_never_stored(
    controlplane: ControlPlane,
) -> None:
    bad = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: -5
"""
    result = controlplane.cli("apply", "-f", "-", stdin=bad)
    assert result.returncode == 1
    assert "Error from server (Invalid)" in result.stderr
    assert "VirtualService default/broken: spec.http[0].route[0].weight" in result.stderr
    assert controlplane.cli("get", "vs", "broken").returncode == 1


def test_conflicting_field_manager_and_force(controlplane: ControlPlane) -> None:
    ok(controlplane.cli("apply", "-f", BOOKINFO))
    token = yaml.safe_load(Path(controlplane.env["PILOTFISH_CONFIG"]).read_text())["token"]
    other = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews"},
        "spec": {"hosts": ["reviews", "reviews.example.com"]},
    }
    url = (
        f"{controlplane.server}/apis/networking.istio.io/v1/namespaces/default/"
        "virtualservices/reviews?fieldManager=alice&force=true"
    )
    curl = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PATCH",
        url,
        "-H",
        "Content-Type: application/apply-patch+yaml",
        "--data-binary",
        json.dumps(other),
    ]
    # No token on loopback is system:anonymous, who may not write: 403, as apiserver.
    assert subprocess.run(curl, capture_output=True, text=True).stdout == "403"
    bad = [*curl, "-H", "Authorization: Bearer not-the-token"]
    assert subprocess.run(bad, capture_output=True, text=True).stdout == "401"
    authorized = [*curl, "-H", f"Authorization: Bearer {token}"]
    assert subprocess.run(authorized, capture_output=True, text=True).stdout == "200"

    conflict = controlplane.cli("apply", "-f", f"{BOOKINFO}/20-routing.yaml")
    assert conflict.returncode == 1
    assert 'conflict with "alice"' in conflict.stderr and ".spec.hosts" in conflict.stderr

    diff = controlplane.cli("diff", "-f", f"{BOOKINFO}/20-routing.yaml", "--force-conflicts")
    assert diff.returncode == 1 and "-  - reviews.example.com" in diff.stdout

    ok(controlplane.cli("apply", "-f", f"{BOOKINFO}/20-routing.yaml", "--force-conflicts"))
    vs = json.loads(ok(controlplane.cli("get", "vs", "reviews", "-o", "json")))
    assert vs["spec"]["hosts"] == ["reviews"]
    assert ok(controlplane.cli("diff", "-f", f"{BOOKINFO}/20-routing.yaml")) == ""


def test_server_dry_run_stores_nothing(controlplane: ControlPlane) -> None:
    out = ok(controlplane.cli("apply", "-f", f"{BOOKINFO}/10-services.yaml", "--dry-run=server"))
    assert "service/reviews created (server dry run)" in out
    assert "No resources found" in controlplane.cli("get", "svc").stderr


def test_watch_streams_changes(controlplane: ControlPlane) -> None:
    ok(controlplane.cli("apply", "-f", f"{BOOKINFO}/10-services.yaml"))
    watcher = subprocess.Popen(
        [sys.executable, "-m", "pilotfish", "get", "vs", "-w", "-o", "name"],
        env=controlplane.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        ok(controlplane.cli("apply", "-f", f"{BOOKINFO}/20-routing.yaml"))
        assert watcher.stdout is not None
        first = watcher.stdout.readline().strip()
        assert first.startswith("virtualservice.networking.istio.io/")
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=10)


def test_sigterm_then_restart_keeps_everything(controlplane: ControlPlane) -> None:
    ok(controlplane.cli("apply", "-f", BOOKINFO))
    config_before = Path(controlplane.env["PILOTFISH_CONFIG"]).read_text()
    assert controlplane.stop(signal.SIGTERM) == 0
    unreachable = controlplane.cli("get", "vs")
    assert unreachable.returncode == 1 and "cannot reach the control plane" in unreachable.stderr
    controlplane.start()
    assert Path(controlplane.env["PILOTFISH_CONFIG"]).read_text() == config_before
    names = ok(controlplane.cli("get", "vs", "-o", "name")).split()
    assert names == [
        "virtualservice.networking.istio.io/bookinfo",  # 40-gateway.yaml
        "virtualservice.networking.istio.io/ratings",
        "virtualservice.networking.istio.io/reviews",
    ]
    out = ok(controlplane.cli("apply", "-f", BOOKINFO))
    assert "created" not in out


def test_validate_needs_no_server(controlplane: ControlPlane, tmp_path: Path) -> None:
    controlplane.stop()
    conformance = REPO.parent / "shared" / "conformance" / "istio" / "bookinfo-networking"
    out = ok(controlplane.cli("validate", "-f", str(conformance)))
    assert " documents valid (" in out and out.strip().endswith("files read)")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec: {}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n"
        "spec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n"
    )
    result = controlplane.cli("validate", "-f", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{bad}: ServiceEntry default/se: spec.hosts: Required value"
    ]
    assert "1 of 2 documents valid" in result.stdout


def test_a_registration_the_control_plane_refuses_stops_the_proxy_at_start(
    controlplane: ControlPlane, tmp_path: Path
) -> None:
    """`pilotfish proxy --register` with a port the registry refuses: a clear
    error and no proxy left running, rather than warnings while it serves."""
    config = {
        "node": {
            "id": "sidecar~127.0.0.1~hello-0.default~default",
            "metadata": {"NAME": "hello-0"},
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [*PILOTFISH, "proxy", "--bootstrap", str(path), "--register", "--port", "http=70000"],
        env=controlplane.env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode != 0
    assert "--register: the control plane refused" in done.stderr, done.stderr
    assert "ports.http: must be a port number in 1-65535" in done.stderr, done.stderr
    assert "hello-0" not in controlplane.cli("get", "instances").stdout


def test_secrets_need_a_token_and_read_only_tokens_read_them(controlplane: ControlPlane) -> None:
    db = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db"},
        "stringData": {"password": "hunter2"},
    }
    ok(controlplane.cli("apply", "-f", "-", stdin=yaml.safe_dump(db)))
    url = f"{controlplane.server}/api/v1/namespaces/default/secrets/db"
    anonymous = subprocess.run(["curl", "-sS", url], capture_output=True, text=True)
    status = json.loads(anonymous.stdout)
    assert status["code"] == 403 and "hunter2" not in anonymous.stdout
    assert status["message"] == (
        'secrets "db" is forbidden: User "system:anonymous" cannot get resource "secrets" '
        'in API group "" in the namespace "default"'
    )
    # Minted while the control plane runs, by a command that reads its data directory.
    token = ok(
        controlplane.cli(
            "token", "create", "--read-only", "ci", "--data-dir", str(controlplane.data_dir)
        )
    ).strip()
    read = subprocess.run(
        ["curl", "-sS", url, "-H", f"Authorization: Bearer {token}"], capture_output=True, text=True
    )
    assert json.loads(read.stdout)["data"] == {"password": "aHVudGVyMg=="}  # stringData folded
    env = {**controlplane.env, "PILOTFISH_TOKEN": token}
    denied = subprocess.run(
        [*PILOTFISH, "delete", "secret", "db"], env=env, capture_output=True, text=True, timeout=30
    )
    assert denied.returncode == 1
    assert (
        'Error from server (Forbidden): secrets "db" is forbidden: User "ci" cannot delete'
        in denied.stderr
    )
