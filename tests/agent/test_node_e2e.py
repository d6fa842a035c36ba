"""The node agent end to end: a control plane with its ADS server, `pilotfish
node`, and the Bookinfo Workloads from examples/bookinfo, driven by the CLI
only. Every process is stopped at the end, and the test checks none is left."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BOOKINFO_ISTIO = REPO.parent / "shared" / "conformance" / "istio" / "bookinfo-networking"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: Callable[[], Any], timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = what()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(message)


@dataclass
class Mesh:
    tmp: Path
    env: dict[str, str]
    api_port: int
    state: Path
    plane: subprocess.Popen[bytes]
    agent: subprocess.Popen[bytes]

    def cli(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "pilotfish", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def node_cli(self, *args: str) -> str:
        return self.cli(*args, "--state-dir", str(self.state))

    def status(self, workload: str) -> dict[str, Any]:
        return json.loads(self.cli("get", "workloads", workload, "-o", "json")).get("status") or {}

    def ready(self, workload: str, replicas: int = 1) -> bool:
        status = self.status(workload)
        instances = status.get("instances") or []
        return (
            status.get("readyReplicas") == replicas
            and len(instances) == replicas
            and all(i["ready"] for i in instances)
        )

    def inbound(self, workload: str) -> int:
        return int(self.status(workload)["instances"][0]["ports"]["http"])


def page(port: int, cookie: str | None = None) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/productpage", headers={"Cookie": cookie} if cookie else {}
    )
    with DIRECT.open(request, timeout=20) as response:
        return response.read().decode()


def login(port: int, user: str) -> str:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(
            urllib.request.Request(
                f"http://127.0.0.1:{port}/login", data=f"username={user}".encode()
            ),
            timeout=10,
        )
    return str(answer.value.headers["Set-Cookie"]).split(";")[0]


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (bootstraps, state dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if str(path) in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    env = {**os.environ, "HOME": str(tmp / "home"), "PILOTFISH_CONFIG": str(tmp / "config.yaml")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN", "HTTP_PROXY", "http_proxy"):
        env.pop(var, None)
    api, xds = free_port(), free_port()
    plane = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pilotfish",
            "controlplane",
            "--data-dir",
            str(tmp / "data"),
            "--listen",
            f"127.0.0.1:{api}",
            "--xds-port",
            str(xds),
        ],
        env=env,
        stdout=(tmp / "controlplane.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    agent = None
    try:
        wait_for(lambda: (tmp / "config.yaml").exists(), 20, "the control plane did not start")
        state = tmp / "node"
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pilotfish",
                "node",
                "--state-dir",
                str(state),
                "--xds",
                f"127.0.0.1:{xds}",
            ],
            env=env,
            cwd=REPO,
            stdout=(tmp / "node.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        m = Mesh(tmp, env, api, state, plane, agent)
        m.cli("apply", "-f", "examples/bookinfo")
        for workload in (
            "details-v1",
            "ratings-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3",
            "productpage-v1",
        ):
            wait_for(
                lambda w=workload: m.ready(w), 60, f"{workload} not ready: {m.status(workload)}"
            )
        yield m
    finally:
        if agent is not None:
            _stop(agent)
        _stop(plane)


def test_bookinfo_comes_up_and_productpage_reaches_everything_through_sidecars(mesh: Mesh) -> None:
    body = page(mesh.inbound("productpage-v1"))
    assert "paperback" in body and "Error fetching" not in body
    assert "Reviews served by:</dt><u>reviews-v1-" in body  # 20-routing.yaml pins reviews to v1
    with DIRECT.open(f"http://127.0.0.1:{mesh.api_port}/api/v1/registry/instances", timeout=5) as r:
        instances = json.loads(r.read())["items"]
    assert len(instances) == 6 and all(i["healthy"] for i in instances)
    reviews = next(i for i in instances if i["workload"] == "reviews-v2")
    assert (
        reviews["labels"] == {"app": "reviews", "version": "v2"}
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
        "spec": {
            "replicas": 1,
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
    assert "scaled to 2" in mesh.cli("scale", "details-v1", "2")
    wait_for(lambda: mesh.ready("details-v1", 2), 30, "details-v1 did not scale to 2")
    logs = mesh.node_cli("logs", "details-v1")
    assert "details-v1 listening on 127.0.0.1:" in logs and "GET /health" in logs
    mesh.cli("scale", "details-v1", "1")
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
    assert "paperback" in page(mesh.inbound("productpage-v1"))


def test_down_leaves_no_process_behind(mesh: Mesh) -> None:
    assert processes_under(mesh.state)
    mesh.node_cli("down")
    assert mesh.agent.wait(timeout=30) == 0
    assert processes_under(mesh.state) == []
