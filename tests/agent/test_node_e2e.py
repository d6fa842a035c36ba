"""The node agent end to end: a control plane with its ADS server, `pilotfish
node`, and the Bookinfo Workloads from examples/bookinfo, driven by the CLI
only. Every process is stopped at the end, and the test checks none is left."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator

import pytest
from tests.agent.mesh_harness import (
    BOOKINFO_ISTIO,
    BOOKINFO_WORKLOADS,
    DIRECT,
    Mesh,
    login,
    mesh_up,
    page,
    processes_under,
    wait_for,
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with mesh_up(tmp_path_factory.mktemp("mesh")) as m:
        yield m


def test_bookinfo_comes_up_and_productpage_reaches_everything_through_sidecars(mesh: Mesh) -> None:
    body = page(mesh.inbound("productpage-v1"))
    assert "paperback" in body and "Error fetching" not in body
    assert "Reviews served by:</dt><u>reviews-v1-" in body  # 20-routing.yaml pins reviews to v1
    with DIRECT.open(f"http://127.0.0.1:{mesh.api_port}/api/v1/registry/instances", timeout=5) as r:
        instances = json.loads(r.read())["items"]
    assert len(instances) == len(BOOKINFO_WORKLOADS) and all(i["healthy"] for i in instances)
    reviews = next(i for i in instances if i["workload"] == "reviews-v2")
    assert (
        # the agent's sidecars take mutual TLS, as Istio's injected pods say
        reviews["labels"]
        == {"app": "reviews", "version": "v2", "security.istio.io/tlsMode": "istio"}
        and reviews["serviceAccount"] == "bookinfo-reviews"
    )
    assert reviews["ports"]["http"] != reviews["appPorts"]["http"]


def test_istio_request_routing_task_jason_sees_v2(mesh: Mesh) -> None:
    port = mesh.inbound("productpage-v1")
    mesh.cli("apply", "-f", str(BOOKINFO_ISTIO / "virtual-service-reviews-test-v2.yaml"))
    cookie = login(port, "jason")
    wait_for(lambda: "reviews-v2-" in page(port, cookie), 10, "jason never reached reviews v2")
    for _ in range(5):
        body = page(port, cookie)
        assert "reviews-v2-" in body and '<font color="black">' in body
        assert "reviews-v1-" in page(port)


def test_istio_fault_injection_task_ratings_abort_for_jason(mesh: Mesh) -> None:
    port = mesh.inbound("productpage-v1")
    mesh.cli("apply", "-f", str(BOOKINFO_ISTIO / "virtual-service-reviews-test-v2.yaml"))
    mesh.cli("apply", "-f", str(BOOKINFO_ISTIO / "virtual-service-ratings-test-abort.yaml"))
    cookie = login(port, "jason")
    wait_for(
        lambda: "Ratings service is currently unavailable" in page(port, cookie),
        10,
        "no abort for jason",
    )
    mesh.cli("apply", "-f", "examples/bookinfo/20-routing.yaml", "--force-conflicts")


def test_chaos_kill_is_healed_and_counted(mesh: Mesh) -> None:
    out = mesh.node_cli("chaos", "kill", "ratings-v1")
    assert out.startswith("killed ratings-v1-")
    status = wait_for(
        lambda: (s := mesh.status("ratings-v1"))["instances"][0]["restarts"] >= 1 and s,
        10,
        "the kill was not seen",
    )
    assert "app exited with code -9" in status["instances"][0]["lastError"]
    wait_for(lambda: mesh.ready("ratings-v1"), 20, "ratings-v1 was not healed")


def test_a_crash_loop_shows_in_status_and_get(mesh: Mesh) -> None:
    workload = {
        "apiVersion": "pilotfish.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "crasher"},
        "spec": {  # no replicas: the stored default (1) shows as DESIRED
            "labels": {"app": "crasher"},
            "command": ["python3", "-c", "import sys; print('boom'); sys.exit(3)"],
            "ports": [{"name": "http", "port": 80}],
        },
    }
    (mesh.tmp / "crasher.yaml").write_text(json.dumps(workload))
    mesh.cli("apply", "-f", str(mesh.tmp / "crasher.yaml"))
    status = wait_for(
        lambda: (
            (s := mesh.status("crasher")).get("instances")
            and s["instances"][0]["restarts"] >= 2
            and s
        ),
        20,
        "no crash loop seen",
    )
    instance = status["instances"][0]
    assert status["readyReplicas"] == 0 and "exited with code 3: boom" in instance["lastError"]
    assert instance["phase"] == "CrashLoopBackOff" or instance["restarts"] >= 2
    table = mesh.cli("get", "workloads")
    row = next(line for line in table.splitlines() if line.startswith("crasher "))
    assert row.split()[:4] == [
        "crasher",
        "0",
        "1",
        str(mesh.status("crasher")["restarts"]),
    ] or row.split()[:3] == ["crasher", "0", "1"], table
    assert "boom" in row, table
    mesh.cli("delete", "workload", "crasher")
    wait_for(
        lambda: not processes_under(mesh.state / "instances" / "default" / instance["name"]),
        20,
        "crasher not stopped",
    )


def test_scale_and_logs(mesh: Mesh) -> None:
    assert mesh.cli("scale", "details-v1", "2") == "workload.pilotfish.dev/details-v1 scaled\n"
    wait_for(lambda: mesh.ready("details-v1", 2), 30, "details-v1 did not scale to 2")
    logs = mesh.node_cli("logs", "details-v1")
    assert "details-v1 listening on 127.0.0.1:" in logs and "GET /health" in logs
    mesh.cli("scale", "workload/details-v1", "--replicas", "1")
    wait_for(lambda: mesh.ready("details-v1", 1), 30, "details-v1 did not scale back to 1")


def test_configmap_change_rolls_productpage_forward(mesh: Mesh) -> None:
    before = mesh.status("productpage-v1")["instances"][0]["name"]
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "productpage-config"},
        "data": {"SESSION_SECRET": "rotated"},
    }
    (mesh.tmp / "config.yaml.in").write_text(json.dumps(config))
    mesh.cli("apply", "-f", str(mesh.tmp / "config.yaml.in"))

    def rolled() -> bool:
        status = mesh.status("productpage-v1")
        names = [i["name"] for i in status.get("instances") or []]
        return before not in names and mesh.ready("productpage-v1")

    wait_for(rolled, 40, "productpage was not rolled forward")
    # details over gRPC: the new sidecar binds productpage's declared upstream
    # (127.0.0.1:19090) once the old one, which held it during the surge, stops
    wait_for(
        lambda: "paperback" in page(mesh.inbound("productpage-v1")),
        10,
        "the new productpage never reached details through its declared upstream",
    )


def test_a_restarted_agent_adopts_the_running_instances(mesh: Mesh) -> None:
    """An agent that dies (SIGKILL: it stops nothing) and starts again takes
    over its instances: same processes, ready again, no restart."""

    def app_pids() -> dict[str, int]:
        found = {}
        for pids_file in (mesh.state / "instances" / "default").glob("*/pids.json"):
            pids = json.loads(pids_file.read_text())
            if pids.get("app"):
                found[pids_file.parent.name] = pids["app"]
        return found

    # Instances replaced by the tests above may still be on their way out.
    def one_each() -> dict[str, int] | None:
        found = app_pids()
        return found if len(found) == len(BOOKINFO_WORKLOADS) else None

    before = wait_for(one_each, 20, "not one instance per workload")
    port = mesh.inbound("productpage-v1")
    assert mesh.agent is not None
    mesh.agent.kill()
    mesh.agent.wait()
    assert "paperback" in page(port)  # the instances serve on without their agent
    mesh.start_agent()
    for workload in BOOKINFO_WORKLOADS:
        wait_for(lambda w=workload: mesh.ready(w), 30, f"{workload} not adopted")
    assert app_pids() == before
    assert all(processes_under(mesh.state / "instances" / "default" / name) for name in before)
    body = page(mesh.inbound("productpage-v1"))
    assert "paperback" in body and "Error fetching" not in body


def test_down_leaves_no_process_behind(mesh: Mesh) -> None:
    assert processes_under(mesh.state)
    mesh.node_cli("down")
    assert mesh.agent is not None and mesh.agent.wait(timeout=30) == 0
    assert processes_under(mesh.state) == []


def test_the_state_directory_is_private_to_the_agent_user(mesh: Mesh) -> None:
    """Instances' files (Secrets mounted for them, app and sidecar logs) live
    under it, each with its own mode: only the directory keeps others out."""
    assert stat.S_IMODE(mesh.state.stat().st_mode) == 0o700
