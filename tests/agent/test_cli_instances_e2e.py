"""The commands around a running Workload, as kubectl and istioctl users
reach for them: `get instances` (node, address, app, sidecar and admin
ports), `proxy-config ... WORKLOAD_OR_INSTANCE`, `scale --replicas`,
`logs --tail/--since`, against a control plane and a node agent running
Bookinfo's details service."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml
from tests.agent.mesh_harness import DIRECT, REPO, Mesh, mesh_started, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("instances")
    docs = [
        d
        for path in ("10-services.yaml", "30-workloads.yaml")
        for d in yaml.safe_load_all((REPO / "examples" / "bookinfo" / path).read_text())
        if d and d["metadata"]["name"] in ("details", "details-v1")
    ]
    (tmp / "details.yaml").write_text(yaml.safe_dump_all(docs))
    with mesh_started(tmp) as m:
        m.cli("apply", "-f", str(tmp / "details.yaml"))
        wait_for(lambda: m.ready("details-v1"), 60, "details-v1 not ready")
        yield m


def test_get_instances_shows_where_each_instance_listens(mesh: Mesh) -> None:
    rows = mesh.cli("get", "instances").splitlines()
    header = [h.strip() for h in rows[0].split("  ") if h.strip()]
    assert header == [
        "NAME",
        "WORKLOAD",
        "READY",
        "STATUS",
        "RESTARTS",
        "NODE",
        "ADDRESS",
        "APP PORTS",
        "SIDECAR PORTS",
        "ADMIN PORT",
    ]
    cells = rows[1].split()
    status = mesh.status("details-v1")["instances"][0]
    assert cells[:7] == [
        status["name"],
        "details-v1",
        "1/1",
        status["phase"],
        "0",
        "local",
        "127.0.0.1",
    ]
    # details has two named ports (http, and grpc for productpage's calls)
    assert cells[8] == f"grpc={status['ports']['grpc']},http={status['ports']['http']}"
    app_ports = dict(port.split("=") for port in cells[7].split(","))
    assert sorted(app_ports) == ["grpc", "http"]
    app_port = int(app_ports["http"])
    with DIRECT.open(f"http://127.0.0.1:{app_port}/health", timeout=5) as answer:
        assert answer.status == 200  # the application itself, behind its sidecar
    with DIRECT.open(f"http://127.0.0.1:{cells[9]}/ready", timeout=5) as answer:
        assert answer.status == 200  # the sidecar's admin port
    listed = json.loads(mesh.cli("get", "instances", "-o", "json"))
    assert [i["workload"] for i in listed["items"]] == ["details-v1"]


def test_get_workloads_wide_fills_the_node(mesh: Mesh) -> None:
    rows = mesh.cli("get", "workloads", "-o", "wide").splitlines()
    node_at = rows[0].index("NODE")
    assert rows[1][node_at:].split()[0] == "local"


def test_proxy_config_takes_a_workload_or_an_instance_name(mesh: Mesh) -> None:
    instance = mesh.status("details-v1")["instances"][0]["name"]
    by_workload = mesh.cli("proxy-config", "clusters", "details-v1")
    by_instance = mesh.cli("proxy-config", "clusters", instance)
    by_prefix = mesh.cli("proxy-config", "clusters", "workload/details-v1")
    assert by_workload == by_instance == by_prefix
    assert by_workload.splitlines()[0].split() == [
        "SERVICE",
        "FQDN",
        "PORT",
        "SUBSET",
        "DIRECTION",
        "TYPE",
    ]
    assert "details.default.svc.cluster.local" in by_workload
    missing = subprocess.run(
        [sys.executable, "-m", "pilotfish", "proxy-config", "clusters", "workload/nope"],
        env=mesh.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert 'no instance of workload "nope" is registered in default' in missing.stderr


def test_logs_tail_and_since(mesh: Mesh) -> None:
    everything = mesh.node_cli("logs", "details-v1").splitlines()
    assert len(everything) > 3
    assert mesh.node_cli("logs", "details-v1", "--tail", "2").splitlines() == everything[-2:]
    assert mesh.node_cli("logs", "details-v1", "--tail=0") == ""
    sidecar = mesh.node_cli("logs", "details-v1", "--sidecar", "--since", "1h").splitlines()
    assert sidecar and sidecar == mesh.node_cli("logs", "details-v1", "--sidecar").splitlines()
    instance = mesh.status("details-v1")["instances"][0]["name"]
    assert mesh.node_cli("logs", instance, "--tail", "1").splitlines() == everything[-1:]


def test_scale_with_replicas_flag_and_positional(mesh: Mesh) -> None:
    assert (
        mesh.cli("scale", "details-v1", "--replicas", "2")
        == "workload.pilotfish.dev/details-v1 scaled\n"
    )
    wait_for(lambda: mesh.ready("details-v1", 2), 30, "details-v1 did not scale to 2")
    assert len(mesh.cli("get", "instances").splitlines()) == 3
    assert (
        mesh.cli("scale", "workload/details-v1", "1")
        == "workload.pilotfish.dev/details-v1 scaled\n"
    )
    wait_for(lambda: mesh.ready("details-v1", 1), 30, "details-v1 did not scale back to 1")
    both = subprocess.run(
        [sys.executable, "-m", "pilotfish", "scale", "details-v1", "1", "--replicas", "2"],
        env=mesh.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 1 and "give the number of replicas once" in both.stderr
