"""A whole mesh for end-to-end tests of the node agent: a control plane with
its ADS server, `pilotfish node` (with its ingress gateway when asked), and
the Bookinfo Workloads from examples/bookinfo, driven by the CLI only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
BOOKINFO_ISTIO = REPO.parent / "shared" / "conformance" / "istio" / "bookinfo-networking"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers(url: str, timeout: float = 2) -> bool:
    """Whether `url` answers 200 (directly, whatever the proxy settings)."""
    try:
        with DIRECT.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:  # URLError is one
        return False


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
    plane: subprocess.Popen[bytes] | None
    xds_port: int
    gateway: bool = False
    gateway_port: int = 0  # where a test's own Gateway listens, when it has one
    agent: subprocess.Popen[bytes] | None = None
    plane_args: tuple[str, ...] = ()  # more `pilotfish controlplane` flags
    agent_args: tuple[str, ...] = ()  # more `pilotfish node` flags (a later --xds wins)

    def start_plane(self) -> subprocess.Popen[bytes]:
        """The control plane on this mesh's ports and data (again, after a stop)."""
        argv = [
            sys.executable,
            "-m",
            "pilotfish",
            "controlplane",
            "--data-dir",
            str(self.tmp / "data"),
        ]
        argv += ["--listen", f"127.0.0.1:{self.api_port}", "--xds-port", str(self.xds_port)]
        argv += self.plane_args
        with (self.tmp / "controlplane.log").open("ab") as log:
            self.plane = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self.plane

    def start_agent(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "pilotfish", "node", "--state-dir", str(self.state)]
        argv += ["--xds", f"127.0.0.1:{self.xds_port}", *(["--gateway"] if self.gateway else [])]
        argv += self.agent_args
        with (self.tmp / "node.log").open("ab") as log:
            self.agent = subprocess.Popen(
                argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        return self.agent

    def cli(self, *args: str, check: bool = True) -> str:
        return run_cli(self.env, *args, check=check, timeout=60)

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


def processes_under(path: Path, *, environ: bool = False) -> list[str]:
    """Command lines of live processes that mention `path` (bootstraps, state
    dir), or with `environ` also in their environment (an app started with
    HOME under `path`, whose command line names nothing of it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split()[2]
            env = (proc / "environ").read_bytes().decode(errors="replace") if environ else ""
        except OSError:
            continue
        if (str(path) in cmdline or str(path) in env) and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


BOOKINFO_WORKLOADS = (
    "details-v1",
    "ratings-v1",
    "redis-v1",
    "reviews-v1",
    "reviews-v2",
    "reviews-v3",
    "productpage-v1",
)


def bookinfo_with_gateway_port(tmp: Path, port: int) -> Path:
    """examples/bookinfo with its Gateway on `port` instead of 8080, so tests
    run beside a demo (the Workloads' relative paths still resolve from REPO)."""
    target = tmp / "bookinfo"
    shutil.copytree(REPO / "examples" / "bookinfo", target, ignore=shutil.ignore_patterns("apps"))
    gateway = target / "40-gateway.yaml"
    gateway.write_text(gateway.read_text().replace("number: 8080", f"number: {port}"))
    # the declared upstreams (ratings' redis on 127.0.0.1:16379, productpage's
    # details gRPC on 127.0.0.1:19090) move aside too
    workloads = target / "30-workloads.yaml"
    text = workloads.read_text()
    for local in (16379, 19090):
        port = free_port()
        text = text.replace(f"127.0.0.1:{local}", f"127.0.0.1:{port}")
        text = text.replace(f"localPort: {local}", f"localPort: {port}")
    workloads.write_text(text)
    return target


@contextmanager
def mesh_up(tmp: Path, gateway_port: int | None = None) -> Iterator[Mesh]:
    """The mesh with Bookinfo ready; with `gateway_port`, the agent's gateway
    serves Bookinfo there. Every process is stopped on the way out."""
    with mesh_started(tmp, gateway=bool(gateway_port)) as m:
        # a copy whatever the gateway: ratings' redis upstream gets a free local port
        m.cli("apply", "-f", str(bookinfo_with_gateway_port(tmp, gateway_port or free_port())))
        for workload in BOOKINFO_WORKLOADS:
            wait_for(
                lambda w=workload: m.ready(w), 60, f"{workload} not ready: {m.status(workload)}"
            )
        yield m


def run_cli(env: dict[str, str], *args: str, check: bool = True, timeout: float = 120) -> str:
    """`pilotfish ARGS` from the repository; its output, asserting success
    when `check`."""
    done = subprocess.run(
        [sys.executable, "-m", "pilotfish", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def isolated_env(tmp: Path) -> dict[str, str]:
    """This environment with HOME and the client config under `tmp`, and no
    server, token or proxy of the user's."""
    env = {**os.environ, "HOME": str(tmp / "home"), "PILOTFISH_CONFIG": str(tmp / "config.yaml")}
    for var in ("PILOTFISH_SERVER", "PILOTFISH_TOKEN", "HTTP_PROXY", "http_proxy"):
        env.pop(var, None)
    return env


@contextmanager
def mesh_started(
    tmp: Path,
    *,
    gateway: bool = False,
    plane_args: tuple[str, ...] = (),
    agent_args: tuple[str, ...] = (),
) -> Iterator[Mesh]:
    """A control plane (with `plane_args`) and a node agent (with its gateway
    when asked) and nothing applied yet; every process is stopped on the way out."""
    m = Mesh(tmp, isolated_env(tmp), free_port(), tmp / "node", None, free_port(), gateway=gateway)
    m.plane_args, m.agent_args = plane_args, agent_args
    try:
        m.start_plane()
        wait_for(lambda: (tmp / "config.yaml").exists(), 20, "the control plane did not start")
        m.start_agent()
        yield m
    finally:
        if m.agent is not None:
            stop_process(m.agent)
        if m.plane is not None:
            stop_process(m.plane)
