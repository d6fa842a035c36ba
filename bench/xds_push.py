"""How fast a configuration change reaches every sidecar: the control plane's
ADS server under many connected proxies.

Starts `pilotfish controlplane` (its own data dir and ports), applies a mesh of
N v1 Services, each with a DestinationRule (subsets v1, v2) and a weighted
VirtualService, registers E instances per service, then connects P simulated
sidecars: one grpcio ADS stream each, all in this process, each subscribing
as Envoy does (CDS and LDS wildcard, then EDS for the EDS clusters and RDS for
the routes its listeners name) and ACKing every response. Then it applies
one VirtualService change with the CLI, K times, and measures for each proxy
the time from the CLI starting (and from it returning) until the proxy has
received and ACKed routes carrying the new weights. Reports first full push,
change latency p50/p99/max, and the control plane's CPU time and RSS.

    .venv/bin/python bench/xds_push.py                  # 50 services, 100 proxies
    .venv/bin/python bench/xds_push.py --services 1000 --endpoints 5 --routed 100 --proxies 500
    .venv/bin/python bench/xds_push.py --profile         # cProfile of the control plane

The control plane and the clients are pinned to different CPUs when the
machine has two or more, so the clients' own Python work does not slow it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import struct_pb2

REPO = Path(__file__).resolve().parents[1]
PREFIX = "type.googleapis.com/"
CDS = PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = PREFIX + "envoy.config.listener.v3.Listener"
RDS = PREFIX + "envoy.config.route.v3.RouteConfiguration"
NAMESPACE = "default"
CHANGED = "svc-0"  # the service whose VirtualService changes


# -- the mesh as YAML ---------------------------------------------------------------------


def service_yaml(i: int, routed: bool = True) -> str:
    """A v1 Service; when `routed`, with a DestinationRule and a VirtualService."""
    name = f"svc-{i}"
    service = f"""apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 9080}}]
"""
    if not routed:
        return service
    return f"""{service}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {name}
  trafficPolicy: {{connectionPool: {{http: {{http1MaxPendingRequests: 100}}}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
{virtual_service_yaml(name, 90)}"""


def virtual_service_yaml(name: str, v1_weight: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: {name}, subset: v2}}}}]
  - route:
    - {{destination: {{host: {name}, subset: v1}}, weight: {v1_weight}}}
    - {{destination: {{host: {name}, subset: v2}}, weight: {100 - v1_weight}}}
    retries: {{attempts: 2, retryOn: 5xx}}
    timeout: 5s
"""


# -- the control plane process --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    directory: Path
    cpu: int | None
    profile: bool
    port: int = field(default_factory=free_port)
    xds_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTFISH_")}
        env.update(HOME=str(self.directory), PILOTFISH_CONFIG=str(self.directory / "config.yaml"))
        return env

    def start(self) -> None:
        command = [sys.executable]
        if self.profile:
            command += ["-m", "cProfile", "-o", str(self.directory / "controlplane.prof")]
        command += ["-m", "pilotfish", "controlplane", "--data-dir", str(self.directory / "data")]
        command += ["--listen", f"127.0.0.1:{self.port}", "--xds-port", str(self.xds_port)]
        if self.cpu is not None:
            command = ["taskset", "-c", str(self.cpu), *command]
        log = (self.directory / "controlplane.log").open("wb")
        self.process = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"control plane not ready; see {self.directory / 'controlplane.log'}")

    def cli(self, *args: str, stdin: str | None = None) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pilotfish", *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
        )
        if done.returncode != 0:
            raise SystemExit(f"pilotfish {' '.join(args)} failed: {done.stderr}")

    def cpu_seconds(self) -> float:
        """utime + stime of the control plane process, all threads."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB: resident now, and at its peak."""
        assert self.process is not None
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class Workload:
    """A registered instance, which one simulated sidecar fronts."""

    name: str
    workload: str
    address: str
    labels: dict[str, str]

    def registration(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": NAMESPACE,
            "workload": self.workload,
            "address": self.address,
            "ports": {"http": 9080},
            "appPorts": {"http": 8080},
            "labels": self.labels,
            "ttlSeconds": 300,
        }


def workloads(services: int, endpoints: int) -> list[Workload]:
    """E instances per service, versions alternating v1, v2."""
    return [
        Workload(
            name=f"svc-{i}-{j}",
            workload=f"svc-{i}-v{1 + j % 2}",
            address=f"10.{i // 250}.{i % 250}.{j + 1}",
            labels={"app": f"svc-{i}", "version": f"v{1 + j % 2}"},
        )
        for i in range(services)
        for j in range(endpoints)
    ]


def register(plane: ControlPlane, instances: list[Workload]) -> None:
    """Over the REST API, as `pilotfish register` does, with a lease longer
    than the run."""
    sys.path.insert(0, str(REPO / "src"))
    from pilotfish.client import Client
    from pilotfish.config import load_client_config

    config = load_client_config(path=plane.directory / "config.yaml")
    client = Client(config.server, config.token)
    for instance in instances:
        client.register_instance(instance.registration())


# -- a simulated sidecar ----------------------------------------------------------------------


@dataclass
class Received:
    """One RDS response; its routes are decoded only once the clock stopped,
    so that one simulated proxy's decoding does not delay the others."""

    version: str
    at: float  # when the ACK for it was sent (monotonic)
    response: DiscoveryResponse

    @functools.cached_property
    def weights(self) -> dict[str, int]:
        """Of the changed service's default route."""
        return _weights(self.response)


class SimulatedSidecar:
    """One ADS stream subscribing as Envoy does: CDS and LDS for everything,
    then EDS for the EDS clusters and RDS for the routes the listeners name;
    every response is ACKed as soon as it is read. It fronts `fronts` (its
    inbound listener and cluster), or nothing: a caller only."""

    def __init__(self, index: int, channel: grpc.Channel, fronts: Workload | None) -> None:
        self.index = index
        self.fronts = fronts or Workload(
            f"client-{index}", "client", "127.0.0.1", {"app": "client", "version": "v1"}
        )
        self.node_id = (
            f"sidecar~{self.fronts.address}~{self.fronts.name}.{NAMESPACE}~"
            f"{NAMESPACE}.svc.cluster.local"
        )
        self.requests: queue.SimpleQueue[DiscoveryRequest | None] = queue.SimpleQueue()
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.acked: dict[str, str] = {}
        self.counts: dict[str, int] = {}  # resources in the latest response, by type
        self.routes: list[Received] = []
        self.error: str = ""
        self._subscribed: dict[str, list[str]] = {CDS: [], LDS: []}
        self._first = True
        self._changed = threading.Event()

    def __repr__(self) -> str:
        return f"<SimulatedSidecar {self.index} acked={self.acked}>"

    def run(self) -> None:
        self._send(CDS, [])
        self._send(LDS, [])
        try:
            for response in self.stub.StreamAggregatedResources(self._outgoing()):
                self._on_response(response)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{e.code()}: {e.details()}"

    def close(self) -> None:
        self.requests.put(None)

    def _outgoing(self) -> Iterator[DiscoveryRequest]:
        while (request := self.requests.get()) is not None:
            yield request

    def _send(self, type_url: str, names: list[str], ack: DiscoveryResponse | None = None) -> None:
        request = DiscoveryRequest(type_url=type_url, resource_names=names)
        if self._first:
            request.node.id = self.node_id
            request.node.metadata.CopyFrom(self._metadata())
            self._first = False
        if ack is not None:
            request.version_info, request.response_nonce = ack.version_info, ack.nonce
        self.requests.put(request)

    def _metadata(self) -> struct_pb2.Struct:
        meta = struct_pb2.Struct()
        meta.update(
            {
                "NAMESPACE": NAMESPACE,
                "WORKLOAD_NAME": self.fronts.workload,
                "NAME": self.fronts.name,
                "LABELS": self.fronts.labels,
                "SERVICE_ACCOUNT": "default",
                "INSTANCE_IPS": self.fronts.address,
                "OUTBOUND_PORT": "15001",
            }
        )
        return meta

    def _on_response(self, response: DiscoveryResponse) -> None:
        type_url = response.type_url
        names = self._names_for(response)
        self._send(type_url, self._subscribed.get(type_url, []), ack=response)
        now = time.monotonic()
        self.acked[type_url] = response.version_info
        self.counts[type_url] = len(response.resources)
        if type_url == RDS:
            self.routes.append(Received(response.version_info, now, response))
        for follow_type, follow_names in names.items():
            if sorted(follow_names) != sorted(self._subscribed.get(follow_type, [])):
                self._subscribed[follow_type] = sorted(follow_names)
                self._send(follow_type, sorted(follow_names))

    def _names_for(self, response: DiscoveryResponse) -> dict[str, list[str]]:
        """What a CDS or LDS response makes the proxy ask for next."""
        if response.type_url == CDS:
            clusters = [_unpack(r, Cluster) for r in response.resources]
            return {EDS: [c.name for c in clusters if c.type == Cluster.EDS]}
        if response.type_url == LDS:
            routes = set()
            for resource in response.resources:
                listener = _unpack(resource, Listener)
                for chain in listener.filter_chains:
                    for network_filter in chain.filters:
                        manager = hcm_pb2.HttpConnectionManager()
                        if network_filter.typed_config.Unpack(manager) and manager.HasField("rds"):
                            routes.add(manager.rds.route_config_name)
            return {RDS: sorted(routes)}
        return {}


def _unpack(resource: Any, kind: type[Any]) -> Any:
    out = kind()
    resource.Unpack(out)
    return out


def _weights(response: DiscoveryResponse) -> dict[str, int]:
    """Subset -> weight on the changed service's last (default) route."""
    for resource in response.resources:
        config = _unpack(resource, RouteConfiguration)
        for vhost in config.virtual_hosts:
            if vhost.name.startswith(f"{CHANGED}.{NAMESPACE}.svc"):
                action = vhost.routes[-1].route
                return {
                    c.name.split("|")[2]: c.weight.value for c in action.weighted_clusters.clusters
                }
    return {}


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Fleet:
    sidecars: list[SimulatedSidecar]
    channels: list[grpc.Channel]
    threads: list[threading.Thread]

    @staticmethod
    def connect(xds_port: int, count: int, fronted: list[Workload]) -> Fleet:
        """`count` sidecars, the first ones fronting `fronted` in order."""
        fleet = Fleet([], [], [])
        for i in range(count):
            channel = grpc.insecure_channel(f"127.0.0.1:{xds_port}")
            sidecar = SimulatedSidecar(i, channel, fronted[i] if i < len(fronted) else None)
            thread = threading.Thread(target=sidecar.run, daemon=True, name=f"sidecar-{i}")
            fleet.sidecars.append(sidecar)
            fleet.channels.append(channel)
            fleet.threads.append(thread)
            thread.start()
        return fleet

    def all_have(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(predicate(s) for s in self.sidecars):
                return True
            errors = [s.error for s in self.sidecars if s.error]
            if errors:
                raise SystemExit(f"an ADS stream failed: {errors[0]}")
            time.sleep(0.01)
        return False

    def close(self) -> None:
        for sidecar in self.sidecars:
            sidecar.close()
        for channel in self.channels:
            channel.close()
        for thread in self.threads:
            thread.join(timeout=5)


def fully_synced(sidecar: SimulatedSidecar) -> bool:
    return all(sidecar.acked.get(t) for t in (CDS, EDS, LDS, RDS))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class ChangeResult:
    cli_s: float  # how long the CLI took, start to exit
    from_start: list[float]  # per proxy: ACK time minus CLI start
    from_exit: list[float]  # per proxy: ACK time minus CLI exit
    cpu_s: float


def change_once(plane: ControlPlane, fleet: Fleet, v1_weight: int) -> ChangeResult:
    """Apply one weight change; each proxy's first new routes after it are
    timed, then checked to carry the new weights."""
    wanted = {"v1": v1_weight, "v2": 100 - v1_weight}
    old = {s.index: s.routes[-1].version for s in fleet.sidecars}
    cpu_before = plane.cpu_seconds()
    started = time.monotonic()
    plane.cli("apply", "-f", "-", stdin=virtual_service_yaml(CHANGED, v1_weight))
    exited = time.monotonic()

    def first_new(sidecar: SimulatedSidecar) -> Received | None:
        routes = sidecar.routes
        return next(
            (r for r in routes if r.at >= started and r.version != old[sidecar.index]), None
        )

    if not fleet.all_have(lambda s: first_new(s) is not None, 60):
        missing = sum(first_new(s) is None for s in fleet.sidecars)
        raise SystemExit(f"{missing} proxies never got the change")
    time.sleep(0.3)  # let the push's tail (other types, other threads) finish
    cpu = plane.cpu_seconds() - cpu_before
    arrivals = [first_new(s) for s in fleet.sidecars]
    wrong = [r.weights for r in arrivals if r is None or r.weights != wanted]
    if wrong:
        raise SystemExit(f"{len(wrong)} proxies got other routes than the change: {wrong[0]}")
    times = [r.at for r in arrivals if r is not None]
    return ChangeResult(
        exited - started, [t - started for t in times], [t - exited for t in times], cpu
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="xds-push-"))
    cpus = os.cpu_count() or 1
    plane = ControlPlane(directory, 0 if cpus >= 2 else None, args.profile)
    if cpus >= 2:
        os.sched_setaffinity(0, set(range(1, cpus)))
    fleet: Fleet | None = None
    result: dict[str, Any] = {"services": args.services, "endpoints": args.endpoints}
    result["routed"] = args.routed
    result["proxies"] = args.proxies
    result["fronting"] = min(args.proxies, args.services * args.endpoints)
    try:
        plane.start()
        result["idle_rss_mb"] = plane.memory_mb()[0]
        started = time.monotonic()
        mesh = "---\n".join(service_yaml(i, i < args.routed) for i in range(args.services))
        plane.cli("apply", "-f", "-", stdin=mesh)
        instances = workloads(args.services, args.endpoints)
        register(plane, instances)
        result["config_s"] = time.monotonic() - started
        time.sleep(1.5)  # the registration burst's pushes are done before proxies connect
        cpu_before, started = plane.cpu_seconds(), time.monotonic()
        fleet = Fleet.connect(plane.xds_port, args.proxies, instances)
        if not fleet.all_have(fully_synced, 600):
            raise SystemExit("not every proxy got its first full push")
        result["first_push_s"] = time.monotonic() - started
        result["first_push_cpu_s"] = plane.cpu_seconds() - cpu_before
        result["resources"] = {
            name: fleet.sidecars[0].counts.get(t, 0)
            for name, t in (("CDS", CDS), ("EDS", EDS), ("LDS", LDS), ("RDS", RDS))
        }
        time.sleep(1.0)
        changes = [change_once(plane, fleet, 10 * (1 + k % 8)) for k in range(args.changes)]
        result["changes"] = [vars(c) for c in changes]
        result["rss_mb"], result["peak_rss_mb"] = plane.memory_mb()
    finally:
        if fleet is not None:
            fleet.close()
        plane.stop()
        if args.profile:
            print(f"profile: {directory / 'controlplane.prof'}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return result


def report(result: dict[str, Any]) -> str:
    changes = [ChangeResult(**c) for c in result["changes"]]
    start = [x for c in changes for x in c.from_start]
    exit_ = [x for c in changes for x in c.from_exit]
    per_change_max = [max(c.from_start) for c in changes]
    ms = 1000.0
    rows = [
        ("services x endpoints", f"{result['services']} x {result['endpoints']}"),
        ("with VirtualService + DestinationRule", str(result["routed"])),
        ("proxies (ADS streams)", f"{result['proxies']} ({result['fronting']} front an instance)"),
        ("resources per proxy", ", ".join(f"{k} {v}" for k, v in result["resources"].items())),
        ("apply config + register", f"{result['config_s']:.1f} s"),
        ("first full push, all proxies ACKed", f"{result['first_push_s']:.2f} s"),
        ("  control plane CPU for it", f"{result['first_push_cpu_s']:.2f} s"),
        ("VS change: CLI run time (median)", f"{statistics.median(c.cli_s for c in changes) * ms:.0f} ms"),  # noqa: E501
        (
            "VS change, from CLI exit: p50 / p99 / max",
            f"{percentile(exit_, 0.5) * ms:.0f} / {percentile(exit_, 0.99) * ms:.0f} / "
            f"{max(exit_) * ms:.0f} ms",
        ),
        (
            "VS change, from CLI start: p50 / p99 / max",
            f"{percentile(start, 0.5) * ms:.0f} / {percentile(start, 0.99) * ms:.0f} / "
            f"{max(start) * ms:.0f} ms",
        ),
        (
            "  slowest proxy per change (from start)",
            ", ".join(f"{x * ms:.0f}" for x in per_change_max) + " ms",
        ),
        (
            "  control plane CPU per change (median)",
            f"{statistics.median(c.cpu_s for c in changes) * ms:.0f} ms",
        ),
        ("control plane RSS: idle / now / peak", f"{result['idle_rss_mb']:.0f} / "
            f"{result['rss_mb']:.0f} / {result['peak_rss_mb']:.0f} MB"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--endpoints", type=int, default=2, help="instances per service")
    parser.add_argument(
        "--routed", type=int, help="services with a VirtualService and DestinationRule (all)"
    )
    parser.add_argument("--proxies", type=int, default=100)
    parser.add_argument("--changes", type=int, default=5, help="VirtualService changes timed")
    parser.add_argument("--profile", action="store_true", help="cProfile the control plane")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    args.routed = args.services if args.routed is None else min(args.routed, args.services)
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
