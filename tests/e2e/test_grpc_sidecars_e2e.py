"""Issue 18's gRPC end to end with real peers: a grpcio client talks h2c to
its sidecar's outbound listener (authority `echo...:50051`), which routes,
measures and secures the call (mutual TLS) to the callee's sidecar, in front
of grpcio servers v1 and v2. Every kind of RPC (unary, server, client and
bidirectional streaming), grpc-timeout reaching the server, a deadline, an
80/20 canary, a fault abort with grpcStatus, a retry hiding UNAVAILABLE, and
grpc_response_status in the caller's metrics.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from mesh_processes import XdsControlPlane, wait_until
from prometheus_client.parser import text_string_to_metric_families
from sidecar_mesh import Sidecar, SidecarMesh, isolated_env
from test_proxyless_grpc import weights
from tests.ports import free_port

pytestmark = pytest.mark.slow

SERVICE = "pilotfish.test.Echo"
AUTHORITY = "echo.default.svc.cluster.local:50051"
ECHO_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo, labels: {app: echo}}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: 50051}]
"""
SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def virtual_service(http: str) -> str:
    """A VirtualService for echo; `http` is the YAML of its one route, indented 4."""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo]
  http:
  -
{http}
"""


ONLY_V1 = weights(100, 0)


@dataclass
class EchoApp:
    """A grpcio server in the test process, as SidecarMesh.workload takes a
    backend: `start`, `port`, `stop`. Methods: Call (its version), Expand
    (server streaming: N replies), Total (client streaming: bytes received),
    Chat (bidirectional echo), Deadline (the time the server has left),
    Flaky (UNAVAILABLE on the first attempt of each x-request-id)."""

    version: str
    port: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    def start(self) -> EchoApp:
        handlers = {
            "Call": grpc.unary_unary_rpc_method_handler(self.call),
            "Expand": grpc.unary_stream_rpc_method_handler(self.expand),
            "Total": grpc.stream_unary_rpc_method_handler(self.total),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Deadline": grpc.unary_unary_rpc_method_handler(self.deadline),
            "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None)

    def count(self, method: str) -> None:
        with self.lock:
            self.calls[method] += 1

    def call(self, request: bytes, context: Any) -> bytes:
        self.count("Call")
        if request.startswith(b"sleep "):
            time.sleep(float(request.split()[1]))
        return self.version.encode()

    def expand(self, request: bytes, context: Any) -> Iterator[bytes]:
        self.count("Expand")
        for i in range(int(request)):
            yield b"%s-%d" % (self.version.encode(), i)

    def total(self, requests: Iterator[bytes], context: Any) -> bytes:
        self.count("Total")
        return str(sum(len(r) for r in requests)).encode()

    def chat(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self.count("Chat")
        for request in requests:
            yield request.upper()

    def deadline(self, request: bytes, context: Any) -> bytes:
        remaining = context.time_remaining()
        return b"none" if remaining is None else b"%.3f" % remaining

    def flaky(self, request: bytes, context: Any) -> bytes:
        self.count("Flaky")
        request_id = dict(context.invocation_metadata()).get("x-request-id", "")
        with self.lock:
            first = request_id not in self.seen
            self.seen.add(request_id)
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
        return self.version.encode()


@dataclass
class World:
    mesh: SidecarMesh
    client: Sidecar
    apps: dict[str, EchoApp]
    channel: Any
    applied: str = ""

    def unary(self, method: str, request: bytes = b"hi", timeout: float = 5.0, **kw: Any) -> Any:
        return self.channel.unary_unary(f"/{SERVICE}/{method}")(request, timeout=timeout, **kw)

    def apply(self, manifest: str) -> None:
        """Apply and wait for the caller's sidecar to ACK it; the same
        manifest again changes nothing, so there is nothing to wait for."""
        if manifest != self.applied:
            self.mesh.apply_and_wait(manifest, self.client)
            self.applied = manifest

    def metric(self, **labels: str) -> float:
        text = self.client.stats()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "istio_requests_total"
            and all(s.labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("grpc")
    env = isolated_env(tmp)
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    mesh = SidecarMesh(plane, tmp, certificates=True, port_name="grpc")
    channel = None
    try:
        plane.start()
        mesh.apply(ECHO_SERVICE)
        mesh.apply(SUBSETS)
        apps, sidecars = {}, []
        for version in ("v1", "v2"):
            labels = {"app": "echo", "version": version}
            sidecar, app = mesh.workload(f"echo-{version}", labels, EchoApp(version))  # type: ignore[arg-type]
            apps[version] = app
            sidecars.append(sidecar)
        client = mesh.client("caller-v1", {"app": "caller"})
        for sidecar in (*sidecars, client):
            mesh.wait_serving(sidecar)
            wait_until(sidecar.has_certificate, 20, "no certificate")
        channel = grpc.insecure_channel(
            f"127.0.0.1:{client.outbound_port}", options=[("grpc.default_authority", AUTHORITY)]
        )
        world = World(mesh, client, apps, channel)  # type: ignore[arg-type]
        world.apply(ONLY_V1)
        wait_until(lambda: _answers(world), 15, "echo never answered through the sidecars")
        yield world
    finally:
        if channel is not None:
            channel.close()
        mesh.close()


def _answers(world: World) -> bool:
    try:
        return bool(world.unary("Call", timeout=2) == b"v1")
    except grpc.RpcError:
        return False


def test_unary(world: World) -> None:
    world.apply(ONLY_V1)
    assert world.unary("Call") == b"v1"


def test_server_streaming(world: World) -> None:
    world.apply(ONLY_V1)
    replies = list(world.channel.unary_stream(f"/{SERVICE}/Expand")(b"50", timeout=5))
    assert replies == [b"v1-%d" % i for i in range(50)]


def test_client_streaming(world: World) -> None:
    world.apply(ONLY_V1)
    parts = [b"x" * 1000 for _ in range(200)]
    assert world.channel.stream_unary(f"/{SERVICE}/Total")(iter(parts), timeout=5) == b"200000"


def test_bidirectional_streaming_interleaves(world: World) -> None:
    """Each reply comes before the next request is sent: the sidecars pass
    the stream both ways at once, not a buffered request then a response."""
    world.apply(ONLY_V1)
    outbox: list[bytes] = []
    ready = threading.Semaphore(0)

    def requests() -> Iterator[bytes]:
        for i in range(20):
            outbox.append(b"m%d" % i)
            yield outbox[-1]
            assert ready.acquire(timeout=5), "no reply before the next request"

    replies = []
    for reply in world.channel.stream_stream(f"/{SERVICE}/Chat")(requests(), timeout=10):
        replies.append(reply)
        ready.release()
    assert replies == [m.upper() for m in outbox]


def test_grpc_timeout_reaches_the_server(world: World) -> None:
    world.apply(ONLY_V1)
    remaining = float(world.unary("Deadline", timeout=5.0))
    assert 3.0 < remaining <= 5.5  # grpcio rounds the deadline it reads up a little


def test_deadline(world: World) -> None:
    """The caller's deadline bounds the call through both sidecars: it ends
    at the deadline, not when the server would answer."""
    world.apply(ONLY_V1)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        world.unary("Call", b"sleep 3", timeout=0.5)
    took = time.monotonic() - started
    # The client's own deadline and the sidecar's (UT: UNAVAILABLE, as Envoy)
    # fire together; either may be first.
    assert failed.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert took < 2.0


def test_canary_80_20(world: World) -> None:
    world.apply(weights(80, 20))
    n = 500
    replies = Counter(world.unary("Call").decode() for _ in range(n))
    assert set(replies) <= {"v1", "v2"} and sum(replies.values()) == n
    sd = math.sqrt(n * 0.2 * 0.8)
    assert abs(replies["v2"] - n * 0.2) < 4.5 * sd, replies  # p < 1e-5 of a false failure


def test_fault_abort_grpc_status(world: World) -> None:
    world.apply(
        virtual_service(
            "    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n"
            "    route: [{destination: {host: echo, subset: v1}}]"
        )
    )
    before = world.apps["v1"].calls["Call"]
    labels = {"request_protocol": "grpc", "grpc_response_status": "14", "response_flags": "FI"}
    faults = world.metric(**labels)
    with pytest.raises(grpc.RpcError) as failed:
        world.unary("Call")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == "fault filter abort"
    assert world.apps["v1"].calls["Call"] == before
    counted = "the abort is not in istio_requests_total"
    wait_until(lambda: world.metric(**labels) == faults + 1, 5, counted)


def test_retry_hides_unavailable(world: World) -> None:
    world.apply(
        virtual_service(
            "    retries: {attempts: 2, retryOn: unavailable}\n"
            "    route: [{destination: {host: echo, subset: v1}}]"
        )
    )
    before = world.apps["v1"].calls["Flaky"]
    assert world.unary("Flaky") == b"v1"
    assert world.apps["v1"].calls["Flaky"] == before + 2
    assert world.metric(request_protocol="grpc", grpc_response_status="0", response_code="200")
