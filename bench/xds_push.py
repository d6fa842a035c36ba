"""How fast a configuration change reaches every sidecar: the control plane's
ADS server under many connected proxies.

Starts `pilotfish controlplane` (its own data dir and ports), applies a mesh of
N v1 Services spread over K namespaces, each with a DestinationRule (subsets
v1, v2) and a weighted VirtualService, registers E instances per service,
then connects P simulated sidecars spread over C client processes: one
grpc.aio ADS stream (and connection) each, subscribing as Envoy does (CDS and
LDS wildcard, then EDS for the EDS clusters and RDS for the routes its
listeners name) and ACKing every response. Then it applies one
VirtualService change with the CLI, `--changes` times, and measures for each
*affected* proxy (one whose routes hold the changed host) the time from the
CLI starting (and from it returning) until it has received and ACKed routes
carrying the new weights; unaffected proxies must receive nothing. Reports
first full push, change latency p50/p99/max, the control plane's CPU while
idle and per change, and its RSS.

    .venv/bin/python bench/xds_push.py                  # 50 services, 100 proxies
    .venv/bin/python bench/xds_push.py --services 1000 --endpoints 2 --routed 100 \
        --proxies 2000 --namespaces 50 --sidecar        # Istio's scale, scoped
    .venv/bin/python bench/xds_push.py --profile         # cProfile of the control plane
    .venv/bin/python bench/xds_push.py --delta --change destinationrule  # incremental xDS

`--delta` makes the simulated sidecars speak incremental ADS
(DeltaAggregatedResources: wildcard CDS and LDS, EDS and RDS by name, holding
resources by name). `--change destinationrule` changes svc-0's
DestinationRule (its connection pool: a cluster) instead of its
VirtualService's weights (routes). Bytes are what the proxies received.

`--sidecar` applies, in each namespace, a default `Sidecar` whose egress is
`./*` (Istio's recommended scoping: a proxy gets its own namespace's
services only). The control plane runs on CPU 0 and the client processes on
the others when the machine has two or more, so the clients' Python work does
not slow it. Client processes stop by themselves when this one goes away or
their deadline passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREFIX = "type.googleapis.com/"
CDS = PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = PREFIX + "envoy.config.listener.v3.Listener"
RDS = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CHANGED = "svc-0"  # the service whose VirtualService changes, in namespace ns(0)
FIRST_RESPONSES_AT_ONCE = 64  # per client process: streams not yet answered (a connect storm)


def namespace_of(service: int, namespaces: int) -> str:
    return "default" if namespaces <= 1 else f"ns-{service % namespaces}"


# -- the mesh as YAML ---------------------------------------------------------------------


def service_yaml(i: int, namespace: str, routed: bool = True) -> str:
    """A v1 Service; when `routed`, with a DestinationRule and a VirtualService."""
    name = f"svc-{i}"
    service = f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 9080}}]
"""
    if not routed:
        return service
    return f"""{service}---
{destination_rule_yaml(name, namespace, 100)}---
{virtual_service_yaml(name, namespace, 90)}"""


def destination_rule_yaml(name: str, namespace: str, pending: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: {name}
  trafficPolicy: {{connectionPool: {{http: {{http1MaxPendingRequests: {pending}}}}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def virtual_service_yaml(name: str, namespace: str, v1_weight: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
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


def sidecar_yaml(namespace: str) -> str:
    """Istio's recommended default: a namespace's proxies see their own namespace."""
    return f"""apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {namespace}}}
spec:
  egress: [{{hosts: ["./*"]}}]
"""


def mesh_yaml(args: argparse.Namespace) -> str:
    docs = [
        service_yaml(i, namespace_of(i, args.namespaces), i < args.routed)
        for i in range(args.services)
    ]
    if args.sidecar:
        spaces = sorted({namespace_of(i, args.namespaces) for i in range(args.services)})
        docs += [sidecar_yaml(ns) for ns in spaces]
    return "---\n".join(docs)


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
    max_streams: int
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
        command += ["--xds-max-streams", str(self.max_streams)]
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

    def api_apply(self, text: str) -> None:
        """What `pilotfish apply` sends, from this process."""
        import yaml

        sys.path.insert(0, str(REPO / "src"))
        from pilotfish.cli.commands import FIELD_MANAGER
        from pilotfish.client import Client
        from pilotfish.config import load_client_config

        config = load_client_config(path=self.directory / "config.yaml")
        Client(config.server, config.token).apply(yaml.safe_load(text), manager=FIELD_MANAGER)

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
    namespace: str
    workload: str
    address: str
    labels: dict[str, str]

    def registration(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "workload": self.workload,
            "address": self.address,
            "ports": {"http": 9080},
            "appPorts": {"http": 8080},
            "labels": self.labels,
            "ttlSeconds": 300,  # the most a lease may be; a run stays shorter
        }


def workloads(services: int, endpoints: int, namespaces: int) -> list[Workload]:
    """E instances per service, versions alternating v1, v2."""
    return [
        Workload(
            name=f"svc-{i}-{j}",
            namespace=namespace_of(i, namespaces),
            workload=f"svc-{i}-v{1 + j % 2}",
            address=f"10.{i // 250}.{i % 250}.{j + 1}",
            labels={"app": f"svc-{i}", "version": f"v{1 + j % 2}"},
        )
        for j in range(endpoints)
        for i in range(services)
    ]


def callers(count: int, namespaces: int) -> list[Workload]:
    """Sidecars that front nothing (clients only), spread over the namespaces."""
    return [
        Workload(
            f"client-{k}", namespace_of(k, namespaces), "client", "127.0.0.1", {"app": "client"}
        )
        for k in range(count)
    ]


def preload(data_dir: Path, mesh: str) -> None:
    """The mesh written to the control plane's store before it starts, through
    the store's own validation and server-side apply, as the CLI's field
    manager: the REST API would also analyze the whole mesh on every write
    (`apply`'s warnings), which at 1,000 services takes minutes for the load."""
    import yaml

    sys.path.insert(0, str(REPO / "src"))
    from pilotfish.api.validation import validate_or_raise, with_defaults
    from pilotfish.cli.commands import FIELD_MANAGER
    from pilotfish.store.backends import StoreOptions, open_backend
    from pilotfish.store.resources import ResourceStore

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    backend = open_backend(StoreOptions(), data_dir)
    store = ResourceStore(backend, validate=validate_or_raise, default=with_defaults)
    try:
        for obj in yaml.safe_load_all(mesh):
            store.apply(obj, manager=FIELD_MANAGER)
    finally:
        store.close()


def register(plane: ControlPlane, instances: list[Workload]) -> None:
    """Over the REST API, as `pilotfish register` does, with a lease longer
    than the run."""
    sys.path.insert(0, str(REPO / "src"))
    from pilotfish.client import Client
    from pilotfish.config import load_client_config

    config = load_client_config(path=plane.directory / "config.yaml")
    client = Client(config.server, config.token)
    with ThreadPoolExecutor(8) as pool:  # the API serves each on a thread of its own
        list(pool.map(lambda i: client.register_instance(i.registration()), instances))


# -- a client process: simulated sidecars on one event loop ---------------------------------


class Decoded:
    """What responses mean to a sidecar, decoded once per version in a client
    process: a version is a hash of the resources' bytes. SotW streams log a
    type's version; delta streams log a key naming the resources the probe
    reads (`name@version`, one a line)."""

    def __init__(self, probed_cluster: str) -> None:
        self.probed_cluster = probed_cluster  # the changed service's cluster
        self._follow: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._probes: dict[tuple[str, str], Any] = {}
        self.responses: dict[tuple[str, str], Any] = {}  # SotW: until probed
        self.parts: dict[str, Any] = {}  # delta: `name@version` -> the resource

    def follow(self, response: Any) -> dict[str, list[str]]:
        """What a SotW CDS or LDS response makes the proxy ask for next."""
        key = (response.type_url, response.version_info)
        if key not in self._follow:
            self._follow[key] = _names_for(response.type_url, response.resources)
        return self._follow[key]

    def follow_one(self, type_url: str, part: str, resource: Any) -> dict[str, list[str]]:
        """What one delta resource (`name@version`) makes the proxy ask for."""
        key = (type_url, part)
        if key not in self._follow:
            self._follow[key] = _names_for(type_url, [resource])
        return self._follow[key]

    def probe(self, type_url: str, key: str) -> Any:
        """RDS: subset -> weight on the changed service's default route; CDS:
        the changed service's cluster's max pending requests; None when the
        proxy does not hold it (it is not affected)."""
        if (type_url, key) not in self._probes:
            response = self.responses.pop((type_url, key), None)
            if response is not None:
                resources = list(response.resources)
            else:
                resources = [self.parts[part] for part in key.split("\n") if part]
            self._probes[type_url, key] = _probe(type_url, resources, self.probed_cluster)
        return self._probes[type_url, key]


def _names_for(type_url: str, resources: list[Any]) -> dict[str, list[str]]:
    from envoy.config.cluster.v3.cluster_pb2 import Cluster
    from envoy.config.listener.v3.listener_pb2 import Listener
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    if type_url == CDS:
        clusters = [_unpack(r, Cluster) for r in resources]
        return {EDS: sorted(c.name for c in clusters if c.type == Cluster.EDS)}
    if type_url == LDS:
        routes = set()
        for resource in resources:
            for chain in _unpack(resource, Listener).filter_chains:
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


def _probe(type_url: str, resources: list[Any], cluster_name: str) -> Any:
    from envoy.config.cluster.v3.cluster_pb2 import Cluster
    from envoy.config.route.v3.route_pb2 import RouteConfiguration

    if type_url == CDS:
        for resource in resources:
            cluster = _unpack(resource, Cluster)
            if cluster.name == cluster_name:
                return cluster.circuit_breakers.thresholds[0].max_pending_requests.value
        return None
    for resource in resources:
        for vhost in _unpack(resource, RouteConfiguration).virtual_hosts:
            if vhost.name.startswith(f"{CHANGED}.") and ".svc." in vhost.name:
                # The split route: not the header match before it, nor the
                # CONNECT route Istio's sidecars end each virtual host with.
                split = [r.route for r in vhost.routes if r.route.HasField("weighted_clusters")]
                return {
                    c.name.split("|")[2]: c.weight.value
                    for c in (split[-1].weighted_clusters.clusters if split else ())
                }
    return None


class AioSidecar:
    """One ADS stream on its own connection, as Envoy subscribes; every
    response is ACKed as soon as it is read, and logged (time, type, version,
    bytes)."""

    METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

    def __init__(self, index: int, fronts: Workload, decoded: Decoded) -> None:
        self.index = index
        self.fronts = fronts
        self.decoded = decoded
        self.log: list[tuple[float, str, str, int]] = []
        self.acked: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.error = ""
        self._subscribed: dict[str, list[str]] = {CDS: [], LDS: []}
        self._requests: asyncio.Queue[Any] = asyncio.Queue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.index} {self.fronts.name} acked={sorted(self.acked)}>"

    @property
    def synced(self) -> bool:
        return all(self.acked.get(t) for t in (CDS, EDS, LDS, RDS))

    async def run(self, target: str, gate: asyncio.Semaphore) -> None:
        import grpc

        self._start()
        await gate.acquire()
        held = True
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                call = channel.stream_stream(
                    self.METHOD,
                    request_serializer=lambda r: r.SerializeToString(),
                    response_deserializer=self._parse,
                )
                async for size, response in call(self._outgoing()):
                    if held:
                        gate.release()
                        held = False
                    self._on_response(response, size)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{e.code()}: {e.details()}"
        finally:
            if held:
                gate.release()

    @staticmethod
    def _parse(body: bytes) -> tuple[int, Any]:
        from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse

        return len(body), DiscoveryResponse.FromString(body)

    def _start(self) -> None:
        self._send(CDS, [], first=True)
        self._send(LDS, [])

    async def _outgoing(self) -> AsyncIterator[Any]:
        while (request := await self._requests.get()) is not None:
            yield request

    def close(self) -> None:
        self._requests.put_nowait(None)

    def _node(self, request: Any) -> None:
        w = self.fronts
        request.node.id = (
            f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        )
        request.node.metadata.update(
            {
                "NAMESPACE": w.namespace,
                "WORKLOAD_NAME": w.workload,
                "NAME": w.name,
                "LABELS": w.labels,
                "SERVICE_ACCOUNT": "default",
                "INSTANCE_IPS": w.address,
                "OUTBOUND_PORT": "15001",
            }
        )

    def _send(self, type_url: str, names: list[str], ack: Any = None, first: bool = False) -> None:
        from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

        request = DiscoveryRequest(type_url=type_url, resource_names=names)
        if first:
            self._node(request)
        if ack is not None:
            request.version_info, request.response_nonce = ack.version_info, ack.nonce
        self._requests.put_nowait(request)

    def _on_response(self, response: Any, size: int) -> None:
        type_url = response.type_url
        self._send(type_url, self._subscribed.get(type_url, []), ack=response)
        self.log.append((time.monotonic(), type_url, response.version_info, size))
        self.acked[type_url] = response.version_info
        self.counts[type_url] = len(response.resources)
        if type_url in (CDS, RDS):
            self.decoded.responses.setdefault((type_url, response.version_info), response)
        for follow_type, names in self.decoded.follow(response).items():
            if names != self._subscribed.get(follow_type):
                self._subscribed[follow_type] = names
                self._send(follow_type, names)

    def arrival(
        self, since: float, type_url: str, wanted: Any
    ) -> tuple[bool, float | None, int, int]:
        """(affected, when `type_url` carrying `wanted` arrived after `since`,
        responses of any type after `since`, their bytes). Affected: what it
        held of `type_url` before `since` had the changed service."""
        probe = self.decoded.probe
        before = [key for at, t, key, _ in self.log if t == type_url and at < since]
        affected = bool(before) and probe(type_url, before[-1]) is not None
        after = [(at, t, key) for at, t, key, _ in self.log if at >= since]
        arrived = next(
            (at for at, t, key in after if t == type_url and probe(type_url, key) == wanted), None
        )
        size = sum(n for at, _, _, n in self.log if at >= since)
        return affected, arrived, len(after), size


class DeltaSidecar(AioSidecar):
    """The same sidecar on incremental ADS: subscribes as Envoy does (CDS and
    LDS wildcard, EDS and RDS by name, changing only what moved), holds each
    type's resources by name, and ACKs every response by its nonce."""

    METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

    def __init__(self, index: int, fronts: Workload, decoded: Decoded) -> None:
        super().__init__(index, fronts, decoded)
        self.held: dict[str, dict[str, tuple[str, Any]]] = {t: {} for t in (CDS, EDS, LDS, RDS)}

    @staticmethod
    def _parse(body: bytes) -> tuple[int, Any]:
        from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse

        return len(body), DeltaDiscoveryResponse.FromString(body)

    def _start(self) -> None:
        self._delta(CDS, first=True)
        self._delta(LDS)

    def _delta(
        self,
        type_url: str,
        subscribe: list[str] = [],  # noqa: B006 - never mutated
        unsubscribe: list[str] = [],  # noqa: B006
        nonce: str = "",
        first: bool = False,
    ) -> None:
        from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

        request = DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe,
            resource_names_unsubscribe=unsubscribe,
            response_nonce=nonce,
        )
        if first:
            self._node(request)
        self._requests.put_nowait(request)

    def _on_response(self, response: Any, size: int) -> None:
        type_url = response.type_url
        self._delta(type_url, nonce=response.nonce)
        held = self.held[type_url]
        for name in response.removed_resources:
            held.pop(name, None)
        for resource in response.resources:
            held[resource.name] = (resource.version, resource.resource)
            self.decoded.parts.setdefault(f"{resource.name}@{resource.version}", resource.resource)
        self.log.append((time.monotonic(), type_url, self._key(type_url), size))
        self.acked[type_url] = response.system_version_info or response.nonce
        self.counts[type_url] = len(held)
        self._follow(type_url)

    def _key(self, type_url: str) -> str:
        """What the probe of `type_url` reads: the changed service's cluster, or
        every route configuration held."""
        held = self.held[type_url]
        if type_url == CDS:
            name = self.decoded.probed_cluster
            return f"{name}@{held[name][0]}" if name in held else ""
        if type_url == RDS:
            return "\n".join(f"{n}@{v}" for n, (v, _) in sorted(held.items()))
        return ""

    def _follow(self, type_url: str) -> None:
        follow_type = {CDS: EDS, LDS: RDS}.get(type_url)
        if follow_type is None:
            return
        wanted: set[str] = set()
        for name, (version, resource) in self.held[type_url].items():
            part = f"{name}@{version}"
            wanted.update(self.decoded.follow_one(type_url, part, resource)[follow_type])
        now = set(self._subscribed.get(follow_type, []))
        if wanted != now:
            self._subscribed[follow_type] = sorted(wanted)
            self._delta(follow_type, sorted(wanted - now), sorted(now - wanted))


class ClientProcess:
    """The commands a client process answers, one JSON object per line."""

    def __init__(self, sidecars: list[AioSidecar]) -> None:
        self.sidecars = sidecars

    def status(self) -> dict[str, Any]:
        first = self.sidecars[0] if self.sidecars else None
        return {
            "synced": sum(s.synced for s in self.sidecars),
            "errors": [s.error for s in self.sidecars if s.error][:3],
            "counts": first.counts if first else {},
        }

    async def wait(
        self, since: float, type_url: str, wanted: Any, timeout: float
    ) -> dict[str, Any]:
        """Until every affected sidecar has the change, then a quiet 0.3 s in
        which anything else that arrives is counted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self._arrivals(since, type_url, wanted)
            if all(not a or at is not None for a, at, _, _ in rows):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        rows = self._arrivals(since, type_url, wanted)
        return {
            "affected": sum(a for a, _, _, _ in rows),
            "arrivals": [at for a, at, _, _ in rows if a and at is not None],
            "missing": sum(a and at is None for a, at, _, _ in rows),
            "unaffected_got": sum(n for a, _, n, _ in rows if not a),
            "affected_extra": sum(n - 1 for a, at, n, _ in rows if a and at is not None),
            "bytes": sum(size for _, _, _, size in rows),
        }

    def _arrivals(
        self, since: float, type_url: str, wanted: Any
    ) -> list[tuple[bool, float | None, int, int]]:
        return [s.arrival(since, type_url, wanted) for s in self.sidecars]


async def client_main() -> None:
    """A client process: its sidecars, and commands from stdin until it closes
    (or the deadline passes)."""
    lines = _Lines()
    spec = json.loads(lines.read(60) or "null")
    if spec is None:
        return
    decoded = Decoded(spec["probed_cluster"])
    target = f"127.0.0.1:{spec['xds_port']}"
    kind = DeltaSidecar if spec["delta"] else AioSidecar
    sidecars = [kind(i, Workload(**w), decoded) for i, w in enumerate(spec["fronts"])]
    gate = asyncio.Semaphore(FIRST_RESPONSES_AT_ONCE)
    tasks = [asyncio.create_task(s.run(target, gate)) for s in sidecars]
    process = ClientProcess(sidecars)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + spec["deadline"]
    try:
        while time.monotonic() < deadline:
            line = await loop.run_in_executor(None, lines.read, deadline - time.monotonic())
            if not line:
                break
            command = json.loads(line)
            if command["op"] == "status":
                reply = process.status()
            elif command["op"] == "wait":
                args = (command["since"], command["type_url"], command["wanted"])
                reply = await process.wait(*args, command["timeout"])
            else:
                break
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        for s in sidecars:
            s.close()
        await asyncio.wait(tasks, timeout=5)


class _Lines:
    """Lines from stdin, unbuffered by Python, so select() sees what is unread."""

    def __init__(self) -> None:
        self._buffer = b""

    def read(self, timeout: float) -> str:
        """The next line; "" on end of input or when `timeout` passes."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([0], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(0, 1 << 16) if ready else b""
            if not chunk:
                return ""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


# -- the run ------------------------------------------------------------------------------------


class Clients:
    """The client processes, each pinned off the control plane's CPU."""

    def __init__(
        self,
        xds_port: int,
        fronts: list[Workload],
        processes: int,
        deadline: float,
        spec: dict[str, Any],
    ) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        cpus = os.cpu_count() or 1
        for k in range(processes):
            share = fronts[k::processes]
            command = [sys.executable, str(Path(__file__).resolve()), "--client"]
            if cpus >= 2:
                command = ["taskset", "-c", f"1-{cpus - 1}", *command]
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
            )
            mine = {
                **spec,
                "xds_port": xds_port,
                "fronts": [asdict(w) for w in share],
                "deadline": deadline,
            }
            assert process.stdin is not None
            process.stdin.write(json.dumps(mine) + "\n")
            process.stdin.flush()
            self.processes.append(process)

    def ask(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        """Send to all, then read every answer (they work in parallel)."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(json.dumps(command) + "\n")
            process.stdin.flush()
        replies = []
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise SystemExit(f"a client process ended (exit {process.wait()})")
            replies.append(json.loads(line))
        return replies

    def wait_synced(self, count: int, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = self.ask({"op": "status"})
            errors = [e for r in replies for e in r["errors"]]
            if errors:
                raise SystemExit(f"an ADS stream failed: {errors[0]}")
            if sum(r["synced"] for r in replies) == count:
                return dict(replies[0]["counts"])
            time.sleep(0.2)
        raise SystemExit("not every proxy got its first full push")

    def close(self) -> None:
        for process in self.processes:
            try:
                assert process.stdin is not None
                process.stdin.close()
            except OSError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class ChangeResult:
    via: str  # "cli" or "api"
    cli_s: float  # how long the CLI took, start to exit
    from_start: list[float]  # per affected proxy: ACK time minus CLI start
    from_exit: list[float]  # per affected proxy: ACK time minus CLI exit
    cpu_s: float
    affected: int
    unaffected_got: int  # responses unaffected proxies received (want 0)
    affected_extra: int  # responses beyond the one the affected ones received
    bytes: int = 0  # what every proxy received, all types


def the_change(kind: str, namespace: str, k: int) -> tuple[str, str, Any]:
    """The k-th change of `kind`: (YAML, the type it shows in, what it shows)."""
    if kind == "destinationrule":
        pending = 200 + k  # the mesh starts at 100
        return destination_rule_yaml(CHANGED, namespace, pending), CDS, pending
    v1_weight = 10 * (1 + k % 8)
    wanted = {"v1": v1_weight, "v2": 100 - v1_weight}
    return virtual_service_yaml(CHANGED, namespace, v1_weight), RDS, wanted


def change_once(
    plane: ControlPlane, clients: Clients, change: tuple[str, str, Any], via: str
) -> ChangeResult:
    """Apply one change with the CLI (`via` "cli") or the same server-side
    apply from this process ("api": no CLI start-up); each affected proxy's
    first response carrying it (routes with the new weights, or the cluster
    with the new connection pool) is timed."""
    text, type_url, wanted = change
    cpu_before = plane.cpu_seconds()
    started = time.monotonic()
    if via == "cli":
        plane.cli("apply", "-f", "-", stdin=text)
    else:
        plane.api_apply(text)
    exited = time.monotonic()
    wait = {"op": "wait", "since": started, "type_url": type_url, "wanted": wanted}
    replies = clients.ask({**wait, "timeout": 60})
    cpu = plane.cpu_seconds() - cpu_before
    missing = sum(r["missing"] for r in replies)
    if missing:
        raise SystemExit(f"{missing} affected proxies never got the change")
    times = [t for r in replies for t in r["arrivals"]]
    return ChangeResult(
        via,
        exited - started,
        [t - started for t in times],
        [t - exited for t in times],
        cpu,
        sum(r["affected"] for r in replies),
        sum(r["unaffected_got"] for r in replies),
        sum(r["affected_extra"] for r in replies),
        sum(r["bytes"] for r in replies),
    )


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="xds-push-"))
    cpus = os.cpu_count() or 1
    plane = ControlPlane(directory, 0 if cpus >= 2 else None, args.profile, args.proxies + 64)
    clients: Clients | None = None
    result: dict[str, Any] = {k: getattr(args, k) for k in ("services", "endpoints", "routed")}
    result |= {k: getattr(args, k) for k in ("proxies", "namespaces", "sidecar")}
    result |= {k: getattr(args, k) for k in ("client_processes", "delta", "change")}
    try:
        started = time.monotonic()
        preload(directory / "data", mesh_yaml(args))
        plane.start()
        result["idle_rss_mb"] = plane.memory_mb()[0]
        progress("control plane up with the mesh; registering instances")
        instances = workloads(args.services, args.endpoints, args.namespaces)
        register(plane, instances)
        result["config_s"] = time.monotonic() - started
        result["objects"] = mesh_yaml(args).count("\nkind: ")
        time.sleep(1.5)  # the registration burst's pushes are done before proxies connect
        fronts = instances[: args.proxies]
        fronts += callers(args.proxies - len(fronts), args.namespaces)
        result["fronting"] = min(args.proxies, len(instances))
        progress(f"connecting {len(fronts)} proxies")
        cpu_before, started = plane.cpu_seconds(), time.monotonic()
        namespace = namespace_of(0, args.namespaces)
        probed = f"outbound|9080||{CHANGED}.{namespace}.svc.cluster.local"
        spec = {"delta": args.delta, "probed_cluster": probed}
        clients = Clients(plane.xds_port, fronts, args.client_processes, args.deadline, spec)
        counts = clients.wait_synced(len(fronts), 600)
        result["first_push_s"] = time.monotonic() - started
        result["first_push_cpu_s"] = plane.cpu_seconds() - cpu_before
        names = (("CDS", CDS), ("EDS", EDS), ("LDS", LDS), ("RDS", RDS))
        result["resources"] = {name: counts.get(t, 0) for name, t in names}
        progress("all synced; sampling idle CPU")
        time.sleep(1.0)
        cpu_before = plane.cpu_seconds()
        time.sleep(args.idle_seconds)
        result["idle_cpu_pct"] = 100 * (plane.cpu_seconds() - cpu_before) / args.idle_seconds
        progress("changes")
        # The machine is shared: what else ran is part of every number below.
        result["load_before"] = os.getloadavg()
        # Any first command keeps the parsed CRDs in the CLI's cache (as kubectl
        # keeps discovery): the timed ones start warm, as a user's do.
        plane.cli("get", "virtualservices", "-n", namespace)
        vias = ("cli", "api") if not args.cli_only else ("cli",)
        # Numbered on from one via to the next: every change differs from the last.
        changes = [
            change_once(plane, clients, the_change(args.change, namespace, k), via)
            for k, via in enumerate(v for v in vias for _ in range(args.changes))
        ]
        result["changes"] = [vars(c) for c in changes]
        result["load_after"] = os.getloadavg()
        result["rss_mb"], result["peak_rss_mb"] = plane.memory_mb()
    finally:
        if clients is not None:
            clients.close()
        plane.stop()
        if args.profile:
            print(f"profile: {directory / 'controlplane.prof'}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return result


def report(result: dict[str, Any]) -> str:
    all_changes = [ChangeResult(**c) for c in result["changes"]]
    scope = f"{result['namespaces']} namespaces" + (", Sidecar ./*" if result["sidecar"] else "")
    rows = [
        ("services x endpoints", f"{result['services']} x {result['endpoints']} ({scope})"),
        ("with VirtualService + DestinationRule", str(result["routed"])),
        ("proxies (ADS streams)", f"{result['proxies']} ({result['fronting']} front an instance; "
            f"{result['client_processes']} client processes)"),
        ("resources per proxy", ", ".join(f"{k} {v}" for k, v in result["resources"].items())),
        ("store the mesh + register", f"{result['config_s']:.1f} s"),
        ("first full push, all proxies ACKed", f"{result['first_push_s']:.2f} s"),
        ("  control plane CPU for it", f"{result['first_push_cpu_s']:.2f} s"),
        ("control plane CPU idle (proxies connected)", f"{result['idle_cpu_pct']:.1f} %"),
        ("ADS", "incremental (delta)" if result.get("delta") else "state of the world"),
        (f"{result.get('change', 'virtualservice')} change: affected proxies",
            f"{all_changes[0].affected}"),
    ]  # fmt: skip
    for via in ("cli", "api"):
        changes = [c for c in all_changes if c.via == via]
        if changes:
            rows += _change_rows(via, changes)
    if "load_before" in result:
        loads = [f"{x:.1f}" for x in (*result["load_before"], *result["load_after"])]
        rows.append(("load average (1, 5, 15 min) before / after the changes",
            f"{', '.join(loads[:3])} / {', '.join(loads[3:])}"))  # fmt: skip
    rows.append(("control plane RSS: idle / now / peak", f"{result['idle_rss_mb']:.0f} / "
        f"{result['rss_mb']:.0f} / {result['peak_rss_mb']:.0f} MB"))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _change_rows(via: str, changes: list[ChangeResult]) -> list[tuple[str, str]]:
    start = [x for c in changes for x in c.from_start]
    exit_ = [x for c in changes for x in c.from_exit]
    ms = 1000.0
    what = "pilotfish apply" if via == "cli" else "REST apply"

    def spread(values: list[float]) -> str:
        return (
            f"{percentile(values, 0.5) * ms:.0f} / {percentile(values, 0.99) * ms:.0f} / "
            f"{max(values) * ms:.0f} ms"
        )

    return [
        (f"{what}: run time (median)", f"{statistics.median(c.cli_s for c in changes) * ms:.0f} ms"),  # noqa: E501
        (f"{what}, from its start: p50 / p99 / max", spread(start)),
        (f"{what}, from its return: p50 / p99 / max", spread(exit_)),
        ("  slowest proxy per change (from start)",
            ", ".join(f"{max(c.from_start) * ms:.0f}" for c in changes) + " ms"),
        ("  control plane CPU per change (median)",
            f"{statistics.median(c.cpu_s for c in changes) * ms:.0f} ms"),
        ("  responses to unaffected proxies / extra to affected",
            f"{sum(c.unaffected_got for c in changes)} / {sum(c.affected_extra for c in changes)}"),
        ("  bytes to all proxies per change (median)",
            f"{statistics.median(c.bytes for c in changes) / 1e6:.2f} MB"),
    ]  # fmt: skip


def main() -> None:
    if sys.argv[1:] == ["--client"]:
        asyncio.run(client_main())
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--endpoints", type=int, default=2, help="instances per service")
    parser.add_argument(
        "--routed", type=int, help="services with a VirtualService and DestinationRule (all)"
    )
    parser.add_argument("--proxies", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=1, help="services spread over these")
    parser.add_argument(
        "--sidecar", action="store_true", help="a default Sidecar (egress ./*) per namespace"
    )
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--changes", type=int, default=5, help="VirtualService changes timed")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU sampled over")
    parser.add_argument(
        "--deadline", type=float, default=900.0, help="client processes exit after this long"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the control plane")
    parser.add_argument(
        "--delta", action="store_true", help="the sidecars speak incremental (delta) ADS"
    )
    parser.add_argument(
        "--change",
        choices=["virtualservice", "destinationrule"],
        default="virtualservice",
        help="what changes: svc-0's VirtualService weights (routes), or its "
        "DestinationRule's connection pool (clusters)",
    )
    parser.add_argument(
        "--cli-only", action="store_true", help="time `pilotfish apply` only, not REST apply"
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    args.routed = args.services if args.routed is None else min(args.routed, args.services)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what was started
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
