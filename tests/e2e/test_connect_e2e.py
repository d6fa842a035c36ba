"""CONNECT through a client's sidecar, with real peers: a raw socket that
tunnels RESP to a real redis-server behind its sidecar, curl's
`--proxytunnel`, and a grpcio client told only `grpc_proxy`. The tunnel is a
TCP connection of the mesh: mutual TLS to the destination's sidecar, Istio's
TCP metrics on both sides; a target outside the mesh follows the outbound
traffic policy; an inbound listener refuses CONNECT."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from mesh_processes import XdsControlPlane, wait_until
from sidecar_mesh import Backend, Sidecar, SidecarMesh, curl, isolated_env
from test_tcp_mesh_e2e import Redis, _complete
from tests.ports import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="needs redis-server (scripts/setup --test)"
    ),
]
MESH = """
apiVersion: v1
kind: Service
metadata: {name: redis}
spec:
  selector: {app: redis}
  ports: [{name: tcp-redis, port: 6379, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: http}]
---
# gRPC's HTTP/2 goes through the tunnel as opaque bytes: a tcp- port
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: tcp-grpc, port: 50051, targetPort: http}]
"""
CLIENT_PRINCIPAL = 'source_principal="spiffe://cluster.local/ns/default/sa/bookinfo-client"'


REDIS_LOCAL, REVIEWS_LOCAL = free_port(), free_port()
UPSTREAMS = [
    {"service": "redis", "port": 6379, "localPort": REDIS_LOCAL},
    {"service": "reviews.default", "port": 9080, "localPort": REVIEWS_LOCAL},
]


@dataclass
class World:
    mesh: SidecarMesh
    client: Sidecar
    redis: Sidecar
    reviews: Sidecar
    echo: Sidecar


class GrpcEcho:
    """A grpcio server (`/echo.Echo/Say` answers `echo:` + the request), as
    SidecarMesh.workload starts and stops a backend."""

    def __init__(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((_Echo(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def start(self) -> GrpcEcho:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("connect")
    env = isolated_env(tmp)
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    mesh = SidecarMesh(plane, tmp, certificates=True)
    try:
        plane.start()
        mesh.apply(MESH)
        redis, _ = mesh.workload("redis-v1", {"app": "redis"}, Redis("v1", tmp))  # type: ignore[arg-type]
        reviews, _ = mesh.workload("reviews-v1", {"app": "reviews"}, Backend("reviews-v1"))
        echo, _ = mesh.workload("echo-v1", {"app": "echo"}, GrpcEcho())  # type: ignore[arg-type]
        client = mesh.client("client-0", {"app": "client"}, UPSTREAMS)
        for sidecar in (redis, reviews, echo, client):
            mesh.wait_serving(sidecar)
        world = World(mesh, client, redis, reviews, echo)
        wait_until(
            lambda: tunnel_ask(client, "redis:6379", "PING") == (200, b"+PONG\r\n"),
            20,
            f"no tunnel: {client.proxy.stderr()[-2000:]}",
        )
        yield world
    finally:
        mesh.close()


def tunnel(sidecar: Sidecar, target: str) -> tuple[socket.socket, bytes]:
    """A connection to the sidecar's outbound listener after CONNECT `target`,
    and the response head it got."""
    s = socket.create_connection(("127.0.0.1", sidecar.outbound_port), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head


def tunnel_ask(sidecar: Sidecar, target: str, *words: str) -> tuple[int, bytes]:
    """The CONNECT's status, and one RESP command's reply through the tunnel."""
    s, head = tunnel(sidecar, target)
    with s:
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
        if status != 200:
            return status, head
        command = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        s.sendall(command.encode())
        reply = b""
        while not _complete(reply):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        return status, reply


def _lines(stats: str, family: str, *having: str) -> list[str]:
    return [
        line
        for line in stats.splitlines()
        if line.startswith(family + "{") and all(h in line for h in having)
    ]


def test_connect_tunnels_resp_to_redis_through_mtls_sidecars(world: World) -> None:
    s, head = tunnel(world.client, "redis.default.svc.cluster.local:6379")
    with s:
        assert head == b"HTTP/1.1 200 OK\r\n\r\n"
        s.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nwho\r\n")
        assert s.recv(100) == b"$2\r\nv1\r\n"
    inbound = _lines(
        world.redis.stats(), "istio_tcp_received_bytes_total", 'reporter="destination"'
    )
    assert inbound and all('connection_security_policy="mutual_tls"' in x for x in inbound)
    assert any(CLIENT_PRINCIPAL in x for x in inbound), inbound
    outbound = _lines(
        world.client.stats(),
        "istio_tcp_connections_opened_total",
        'reporter="source"',
        'destination_service="redis.default.svc.cluster.local"',
    )
    assert outbound, world.client.stats()


def test_curl_proxytunnel_reaches_an_http_service(world: World) -> None:
    got = curl("http://reviews:9080/echo", "-p", proxy=world.client.outbound_port)
    # curl -D shows the CONNECT's answer first, then the tunnelled response
    assert got.status == 200 and not got.headers, got
    inner, _, body = got.body.partition(b"\r\n\r\n")
    assert inner.startswith(b"HTTP/1.1 200 ") and b"x-backend: reviews-v1" in inner.lower(), got
    assert b'"path": "/echo"' in body, body


def test_a_target_that_cannot_be_reached_is_answered_503_uf(world: World) -> None:
    # no service has port 6380: ALLOW_ANY passes it through, to a port nobody listens on
    status, reply = tunnel_ask(world.client, f"127.0.0.1:{free_port()}", "PING")
    assert status == 503 and b"x-pilotfish-flags: UF" in reply, reply


def test_inbound_listener_refuses_connect(world: World) -> None:
    s = socket.create_connection(("127.0.0.1", world.reviews.inbound_port), timeout=10)
    with s:
        s.sendall(b"CONNECT redis:6379 HTTP/1.1\r\nHost: redis:6379\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 403 ")


class _Echo(grpc.GenericRpcHandler):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != "/echo.Echo/Say":
            return None
        return grpc.unary_unary_rpc_method_handler(lambda request, _: b"echo:" + request)


def test_grpc_proxy_tunnels_grpcio_to_a_mesh_service_with_mtls(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("no_proxy", "NO_PROXY", "no_grpc_proxy", "https_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{world.client.outbound_port}")
    with grpc.insecure_channel("echo.default.svc.cluster.local:50051") as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        assert [say(b"hi %d" % i, timeout=10) for i in range(3)] == [
            b"echo:hi 0",
            b"echo:hi 1",
            b"echo:hi 2",
        ]
    served = _lines(world.echo.stats(), "istio_tcp_connections_opened_total", CLIENT_PRINCIPAL)
    assert served and all('connection_security_policy="mutual_tls"' in x for x in served)


def test_grpc_proxy_tunnels_grpcio_and_the_outbound_policy_decides(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gRPC server outside the mesh, reached through PassthroughCluster
    (ALLOW_ANY), then refused once a Sidecar says REGISTRY_ONLY."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    for var in ("no_proxy", "NO_PROXY", "no_grpc_proxy", "https_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{world.client.outbound_port}")
    try:
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            say = channel.unary_unary("/echo.Echo/Say")
            assert say(b"hi", timeout=10) == b"echo:hi"
        passthrough = _lines(
            world.client.stats(),
            "istio_tcp_connections_opened_total",
            'reporter="source"',
        )
        named = 'destination_service_name="PassthroughCluster"'
        assert any(named in x for x in passthrough), passthrough
        world.mesh.apply(
            """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""
        )
        wait_until(
            lambda: tunnel_ask(world.client, f"localhost:{port}", "PING")[0] == 503,
            10,
            "REGISTRY_ONLY not in force",
        )
        status, reply = tunnel_ask(world.client, f"localhost:{port}", "PING")
        assert status == 503 and b"x-pilotfish-flags: UH" in reply, reply
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/echo.Echo/Say")(b"hi", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # the mesh's own services still tunnel
        assert tunnel_ask(world.client, "redis:6379", "GET", "who") == (200, b"$2\r\nv1\r\n")
    finally:
        world.mesh.delete("Sidecar", "default")
        server.stop(0)


def test_declared_upstreams_let_unmodified_clients_connect_to_localhost(world: World) -> None:
    """redis's own protocol and curl without a proxy, to 127.0.0.1:LOCALPORT."""
    wait_until(
        lambda: Redis.ask(REDIS_LOCAL, "GET", "who") == b"$2\r\nv1\r\n",
        10,
        f"no upstream listener: {world.client.proxy.stderr()[-2000:]}",
    )
    before = _total_received(world.redis)
    for _ in range(5):
        assert Redis.ask(REDIS_LOCAL, "GET", "who") == b"$2\r\nv1\r\n"
    assert _total_received(world.redis) >= before + 5 * 22  # each GET is 22 bytes of RESP
    inbound = _lines(world.redis.stats(), "istio_tcp_connections_opened_total", CLIENT_PRINCIPAL)
    assert inbound and all('connection_security_policy="mutual_tls"' in x for x in inbound)
    got = curl(f"http://127.0.0.1:{REVIEWS_LOCAL}/echo")
    assert got.status == 200 and got.headers.get("x-backend") == "reviews-v1", got
    served = _lines(
        world.reviews.stats(), "istio_requests_total", CLIENT_PRINCIPAL, 'reporter="destination"'
    )
    assert served and all('connection_security_policy="mutual_tls"' in x for x in served)


def _total_received(sidecar: Sidecar) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in _lines(
            sidecar.stats(), "istio_tcp_received_bytes_total", 'reporter="destination"'
        )
    )
