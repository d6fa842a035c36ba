"""`pilotfish demo`: the whole mesh on this machine in one command. It starts
the control plane (embedded SQLite store) and the node agent with its
ingress gateway, applies the examples, shows progress until every Workload
is ready and the gateway answers, prints the URL and what to try next, and
stays in the foreground until Ctrl-C or `pilotfish down`.

The children run in sessions of their own, so Ctrl-C reaches the demo
alone and it stops them in order: the agent first (its instances leave the
registry while the control plane is still there to hear it), then the
control plane. Their pids are in the node's state directory (demo.pid,
controlplane.pid, agent.pid) for `pilotfish down` to find, also after the
demo itself was killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from pilotfish.api.errors import ApiError
from pilotfish.api.kinds import registry
from pilotfish.cli.commands import CliError, apply_documents
from pilotfish.cli.dashboard import dashboard_url
from pilotfish.cli.demo_canary import canary_documents, remove_leftovers, run_releases
from pilotfish.cli.manifests import Document, read_documents
from pilotfish.cli.ports import check_free
from pilotfish.client import Client
from pilotfish.objects import Obj

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
ISTIO_SAMPLES = Path("../shared/conformance/istio/bookinfo-networking")
ISTIO_SAMPLES_URL = (
    "https://raw.githubusercontent.com/istio/istio/master/samples/bookinfo/networking"
)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Demo:
    """The processes the demo started, and the flag that ends it."""

    state: Path
    stop: threading.Event = field(default_factory=threading.Event)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Demo({self.state}, {sorted(self.children)})"

    def spawn(self, role: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.state / f"{role}.log").open("ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "pilotfish", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children[role] = child
        (self.state / f"{role}.pid").write_text(str(child.pid))
        return child

    def failed(self) -> str | None:
        """A child that exited on its own, as a message."""
        for role, child in self.children.items():
            if child.poll() is not None:
                log = self.state / f"{role}.log"
                return f"the {role} exited with code {child.returncode} (see {log})"
        return None

    def shut_down(self) -> None:
        for role in ("agent", "controlplane"):
            child = self.children.pop(role, None)
            if child is not None:
                _stop(child)
            (self.state / f"{role}.pid").unlink(missing_ok=True)


def demo(args: argparse.Namespace) -> int:
    from pilotfish.cli.node import default_state_dir, pid_alive

    state = Path(args.state_dir) if args.state_dir else default_state_dir(args.node_name)
    if args.data_dir is None:
        args.data_dir = default_data_dir(args.canary)
    state.mkdir(parents=True, exist_ok=True)
    running = state / "demo.pid"
    if running.exists() and pid_alive(int(running.read_text() or 0)):
        pid = running.read_text()
        raise CliError(f"a demo already runs on {state} (pid {pid}); stop it: pilotfish down")
    docs = _examples(args.examples)
    if args.gateway_port is not None:
        docs = with_gateway_port(docs, args.gateway_port)
    if args.canary:
        docs = canary_documents(docs, args.canary_examples, args.listen)
    check_free(_ports(args, docs))
    _check_programs(docs)
    running.write_text(str(os.getpid()))
    run = Demo(state)
    previous = {s: signal.signal(s, lambda *_: run.stop.set()) for s in _SIGNALS}
    try:
        return _run(run, args, docs)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not strand children
        print("stopping the demo ...", flush=True)
        run.shut_down()
        running.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopped.", flush=True)


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _check_programs(docs: list[Document]) -> None:
    """Every Workload's program is installed (through `sh -c`, the script's
    first word), or the demo would wait for instances that never start."""
    for doc in docs:
        spec = doc.obj.get("spec") or {}
        argv = [*(spec.get("command") or []), *(spec.get("args") or [])]
        if doc.obj.get("kind") != "Workload" or not argv:
            continue
        program = str(argv[0])
        if program in ("sh", "bash") and len(argv) > 2 and argv[1] == "-c":
            program = str(argv[2]).split()[0] if str(argv[2]).split() else program
        if shutil.which(program) is None:
            raise CliError(
                f"Workload {doc.obj['metadata']['name']} runs {program}, which is not "
                "installed: scripts/setup installs what the demo needs (Debian packages too)"
            )


def default_data_dir(canary: bool) -> Path:
    """Each demo keeps its own store, so neither starts with the other's
    objects (the Bookinfo demo's reviews-v1/v2/v3 would be selected by the
    canary's service): ~/.pilotfish/data, and ~/.pilotfish/data-canary."""
    return Path.home() / ".pilotfish" / ("data-canary" if canary else "data")


def _run(run: Demo, args: argparse.Namespace, docs: list[Document]) -> int:
    server = f"http://{args.listen}"
    plane = ["controlplane", "--data-dir", str(args.data_dir), "--listen", args.listen]
    run.spawn("controlplane", [*plane, "--xds-port", str(args.xds_port)])
    if not _until(run, lambda: _answers(f"{server}/readyz"), READY_TIMEOUT_S):
        why = run.failed() or f"the control plane did not become ready at {server}"
        raise CliError(f"{why}; if an earlier demo still runs, `pilotfish down` stops it")
    own = ", the canary demo's own store" if args.canary else ""
    print(f"control plane ready at {server} (data in {args.data_dir}{own})", flush=True)
    if args.canary and (removed := remove_leftovers(Client.from_config(server), docs)):
        print(
            f"removed the Workloads {', '.join(removed)} an earlier demo left in "
            f"{args.data_dir}: the canary's service would select their instances",
            flush=True,
        )
    host = args.listen.rpartition(":")[0]
    node = ["node", "--state-dir", str(run.state), "--node-name", args.node_name]
    node += ["--server", server, "--xds", f"{host}:{args.xds_port}", "--gateway"]
    run.spawn("agent", node)
    if not apply_documents(Client.from_config(server), docs, None):
        return 1
    url = gateway_url(docs, args.path)
    if not _show_progress(run, Client.from_config(server), url, args.timeout):
        if run.stop.is_set():
            return 0
        print(run.failed() or f"not ready after {args.timeout:.0f}s; see {run.state}/*.log")
        return 1
    _next_steps(url, run.state, args.examples, args.canary)
    print(f"\nThe mesh, live: {dashboard_url(server)}   (pilotfish dashboard)", flush=True)
    if args.canary and not run_releases(Client.from_config(server), args.canary_examples, run.stop):
        return 0 if run.stop.is_set() else 1
    while not run.stop.wait(0.5):
        if (exited := run.failed()) is not None:
            print(exited, file=sys.stderr, flush=True)
            return 1
    return 0


def gateway_url(docs: list[Document], path: str) -> str:
    """The first plain-HTTP server port of the examples' Gateways, on the
    address the agent's gateway binds (127.0.0.1)."""
    port = _http_server_port(docs)
    if port is None:
        raise CliError("the examples declare no Gateway with an HTTP server: nothing to open")
    return f"http://127.0.0.1:{port['number']}{path}"


def _http_server_port(docs: list[Document]) -> Obj | None:
    """The `port` of the examples' first plain-HTTP Gateway server."""
    for doc in docs:
        if doc.obj.get("kind") != "Gateway":
            continue
        for server in (doc.obj.get("spec") or {}).get("servers") or []:
            port = server.get("port") or {}
            if str(port.get("protocol", "")).upper() in ("HTTP", "HTTP2"):
                return dict(port)
    return None


def with_gateway_port(docs: list[Document], number: int) -> list[Document]:
    """The examples with their Gateway's HTTP server on `number` (--gateway-port)."""
    port = _http_server_port(docs)
    if port is None:
        raise CliError("--gateway-port: the examples declare no Gateway with an HTTP server")
    for doc in docs:
        for server in (doc.obj.get("spec") or {}).get("servers") or []:
            if doc.obj.get("kind") == "Gateway" and server.get("port") == port:
                server["port"] = {**port, "number": number}
    return docs


def _ports(args: argparse.Namespace, docs: list[Document]) -> list[tuple[str, int, str]]:
    """What the demo will listen on, each with the flag that moves it."""
    from pilotfish.controlplane.http import parse_listen

    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        raise CliError(str(e)) from None
    gateway = _http_server_port(docs) or {}
    return [
        (host, port, "--listen"),
        (host, args.xds_port, "--xds-port"),
        ("127.0.0.1", int(gateway.get("number") or 0), "--gateway-port"),
    ]


def _examples(path: Path) -> list[Document]:
    if not path.exists():
        raise CliError(f'the examples path "{path}" does not exist')
    return read_documents([str(path)], recursive=True)


def _until(run: Demo, ready: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not run.stop.is_set() and run.failed() is None:
        if ready():
            return True
        run.stop.wait(0.2)
    return False


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# -- progress ------------------------------------------------------------------------


def _show_progress(run: Demo, client: Client, url: str, timeout: float) -> bool:
    """A bar per Workload (ready of desired) and one for the gateway, until
    all are full; False on timeout, Ctrl-C or a child's exit."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
    )
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=Console(highlight=False)) as progress:

        def ready() -> bool:
            counts = {**_workload_counts(client), f"gateway {url}": (int(_answers(url)), 1)}
            for name, (done, total) in sorted(counts.items()):
                if name not in tasks:
                    tasks[name] = progress.add_task(name, total=total)
                progress.update(tasks[name], completed=done, total=total)
            return all(done >= total for done, total in counts.values())

        return _until(run, ready, timeout)


def _workload_counts(client: Client) -> dict[str, tuple[int, int]]:
    try:
        items = client.list(registry().resolve("Workload"), None).get("items") or []
    except ApiError:
        return {"workloads": (0, 1)}
    return {
        f"workload {w['metadata']['name']}": (
            int((w.get("status") or {}).get("readyReplicas") or 0),
            int(w["spec"].get("replicas", 1)),
        )
        for w in items
    }


def _next_steps(url: str, state: Path, examples: Path, canary: bool) -> None:
    if canary:
        print(
            f"\nBookinfo is up: {url}\n\n"
            "Reload the page while the releases below run: the stars turn red as traffic moves.\n"
            "In another terminal:\n"
            "  pilotfish rollout status reviews --watch   # weight, checks, metrics\n"
            "  pilotfish describe canary reviews          # every decision, one line each\n"
            "  pilotfish rollout pause|resume|promote|abort reviews\n"
            "  pilotfish down                             # stop everything (or Ctrl-C here)",
            flush=True,
        )
        return
    samples = str(ISTIO_SAMPLES) if ISTIO_SAMPLES.is_dir() else ISTIO_SAMPLES_URL
    print(
        f"\nBookinfo is up: {url}\n\n"
        "Next steps, in another terminal:\n"
        "  pilotfish get workloads                # instances: ready, restarts, last error\n"
        "  pilotfish get instances                # where each listens: app, sidecar, admin ports\n"
        f"  pilotfish apply -f {samples}/virtual-service-reviews-test-v2.yaml\n"
        "      then sign in as jason on the page: he sees reviews v2 (black stars)\n"
        f"  pilotfish apply -f {samples}/virtual-service-reviews-50-v3.yaml\n"
        "  pilotfish chaos kill reviews-v2        # the agent brings it back\n"
        f"{_metrics_steps(state) or '  pilotfish proxy-status'}\n"
        f"  pilotfish apply -f {examples}/20-routing.yaml   # back to v1\n"
        "  pilotfish down                         # stop everything (or Ctrl-C here)\n",
        flush=True,
    )


# Where the demo's three kinds of traffic show in the sidecars' metrics: HTTP
# at the gateway, gRPC from productpage to details, TCP from ratings to redis.
METRICS_STEPS = (
    (None, "istio_requests_total", "HTTP through the gateway"),
    ("productpage-v1", "'request_protocol=\"grpc\"'", "gRPC: productpage -> details"),
    ("ratings-v1", "istio_tcp_", "TCP: ratings -> redis"),
)


def _metrics_steps(state: Path) -> str:
    """One `curl | grep` per kind of traffic, for the sidecars that exist."""
    lines = []
    for workload, pattern, what in METRICS_STEPS:
        if admin := _admin(state, workload):
            command = f"curl -s {admin}/stats/prometheus | grep {pattern}"
            lines.append(f"  {command}   # {what}")
    return "\n".join(lines)


def _admin(state: Path, workload: str | None) -> str:
    """A proxy's admin address, from the bootstrap the agent wrote: the
    gateway's (workload None), else the first sidecar of `workload`."""
    for path in sorted((state / "instances").glob("*/*/bootstrap.yaml")):
        with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
            config: Any = yaml.safe_load(path.read_text())
            node = config["node"]
            if workload is None:
                found = str(node["id"]).startswith("router~")
            else:
                found = node["metadata"]["WORKLOAD_NAME"] == workload
                found = found and str(node["id"]).startswith("sidecar~")
            if found:
                port = config["admin"]["address"]["socket_address"]["port_value"]
                return f"http://127.0.0.1:{port}"
    return ""


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
