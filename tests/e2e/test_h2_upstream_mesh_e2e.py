"""HTTP/1.1 to HTTP/2 through the mesh, with real peers: curl (HTTP/1.1)
through a caller's sidecar, mutual TLS to the callee's sidecar, and h2c to a
grpcio server (which speaks nothing but HTTP/2). The Service names its port
`grpc`, so the callee's inbound cluster speaks HTTP/2 to the app; the reply
and its grpc-status come back to curl as a chunked body and trailers."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from mesh_processes import XdsControlPlane, wait_until
from sidecar_mesh import Sidecar, SidecarMesh, curl_many, isolated_env
from tests.ports import free_port

pytestmark = [pytest.mark.slow]
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: 9080, targetPort: http}]
"""
URL = "http://echo:9080/pilotfish.test.Echo/Call"
GRPC = ("--http1.1", "-H", "content-type: application/grpc", "-H", "te: trailers")


class GrpcEcho:
    """A grpcio server (h2c only) answering `reply:<request>`; what SidecarMesh.workload starts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: grpc.Server | None = None

    def start(self) -> GrpcEcho:
        handler = grpc.method_handlers_generic_handler(
            "pilotfish.test.Echo",
            {"Call": grpc.unary_unary_rpc_method_handler(lambda request, _: b"reply:" + request)},
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)


def frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


@dataclass
class World:
    mesh: SidecarMesh
    client: Sidecar
    echo: Sidecar
    tmp: Path

    def call(self, message: bytes) -> tuple[list[str], bytes]:
        heads, body = self.tmp / "heads", self.tmp / "body"
        done = subprocess.run(
            ["curl", "-s", "-S", "--max-time", "10", "-x", f"http://127.0.0.1:{self.client.outbound_port}",
             *GRPC, "--data-binary", "@-", "-D", str(heads), "-o", str(body), URL],
            input=frame(message), capture_output=True, timeout=20,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return heads.read_text().splitlines(), body.read_bytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("h2-mesh")
    env = isolated_env(tmp)
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    mesh = SidecarMesh(plane, tmp, certificates=True)
    try:
        plane.start()
        mesh.apply(SERVICE)
        echo, _ = mesh.workload("echo-v1", {"app": "echo"}, GrpcEcho())  # type: ignore[arg-type]
        client = mesh.client("productpage-v1", {"app": "productpage"})
        for sidecar in (echo, client):
            mesh.wait_serving(sidecar)
            wait_until(sidecar.has_certificate, 20, "no certificate")
        world = World(mesh, client, echo, tmp)
        wait_until(
            lambda: world.call(b"ping")[1] == frame(b"reply:ping"),
            15,
            f"echo never answered: {echo.proxy.stderr()[-2000:]}",
        )
        yield world
    finally:
        mesh.close()


def test_an_http1_client_reaches_an_h2c_grpc_server_through_two_sidecars(world: World) -> None:
    lines, body = world.call(b"hello")
    assert lines[0].startswith("HTTP/1.1 200"), lines
    assert body == frame(b"reply:hello")
    assert "transfer-encoding: chunked" in lines
    assert lines.index("grpc-status: 0") > lines.index("")  # a trailer, after the body
    inbound = [
        line
        for line in world.echo.stats().splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert inbound and all('connection_security_policy="mutual_tls"' in x for x in inbound)


def test_concurrent_calls_share_one_http2_connection_to_the_app(
    world: World, tmp_path: Path
) -> None:
    counters = world.echo.counters()
    cluster = next(
        n for n in counters if re.fullmatch(r"cluster\.inbound\|\d+\|\|\.upstream_rq_total", n)
    )
    prefix = cluster.rpartition(".upstream_rq_total")[0]
    before = {
        k: counters.get(f"{prefix}.{k}", 0)
        for k in ("upstream_rq_total", "upstream_cx_http2_total")
    }
    request = tmp_path / "request"
    request.write_bytes(frame(b"x"))
    results = curl_many(
        [URL] * 30, *GRPC, "-x", f"http://127.0.0.1:{world.client.outbound_port}",
        "--data-binary", f"@{request}", parallel=15,
    )  # fmt: skip
    assert [status for status, _ in results] == [200] * 30
    after = world.echo.counters()
    assert after[f"{prefix}.upstream_rq_total"] - before["upstream_rq_total"] == 30
    assert after[f"{prefix}.upstream_cx_http2_total"] <= 1 + before["upstream_cx_http2_total"]
    assert after[f"{prefix}.upstream_cx_http2_total"] >= 1
