"""TCP through the whole mesh with real peers: a control plane with its CA,
a gateway whose TCP server routes by a VirtualService `tcp` route weighted
80/20 between two real redis-server workloads, each behind its sidecar;
every hop after the gateway is mutual TLS. The redis sidecars' Istio TCP
metrics count the bytes, and an AuthorizationPolicy closes the port to all
but the gateway's identity."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mesh_processes import XdsControlPlane, wait_until
from sidecar_mesh import Proxy, Sidecar, SidecarMesh, isolated_env
from tests.ports import free_port

from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, gateway_bootstrap

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="needs redis-server (scripts/setup --test)"
    ),
]
GATEWAY_PORT, TLS_GATEWAY_PORT = free_port(), free_port()
MESH = f"""
apiVersion: v1
kind: Service
metadata: {{name: redis}}
spec:
  selector: {{app: redis}}
  ports: [{{name: tcp-redis, port: 6379, targetPort: http}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: redis}}
spec:
  host: redis
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-gateway}}
spec:
  selector: {{istio: tcp-gateway}}
  servers:
  - port: {{number: {GATEWAY_PORT}, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {TLS_GATEWAY_PORT}, name: tls, protocol: TLS}}
    hosts: ["*.example.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: v1
kind: Service
metadata: {{name: secure}}
spec:
  selector: {{app: secure}}
  ports: [{{name: tls, port: 8443, targetPort: http}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure}}
spec:
  hosts: [secure.example.com]
  gateways: [tcp-gateway]
  tls:
  - match: [{{sniHosts: [secure.example.com]}}]
    route: [{{destination: {{host: secure, port: {{number: 8443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: redis}}
spec:
  hosts: ["*"]
  gateways: [tcp-gateway]
  tcp:
  - route:
    - {{destination: {{host: redis, subset: v1, port: {{number: 6379}}}}, weight: 80}}
    - {{destination: {{host: redis, subset: v2, port: {{number: 6379}}}}, weight: 20}}
"""


class Redis:
    """A redis-server whose key `who` is its version; what SidecarMesh.workload starts."""

    def __init__(self, version: str, directory: Path) -> None:
        self.version, self.directory, self.port = version, directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: self.ask(self.port, "PING") == b"+PONG\r\n", 10, "redis never up")
        assert self.ask(self.port, "SET", "who", self.version) == b"+OK\r\n"
        return self

    @staticmethod
    def ask(port: int, *words: str) -> bytes:
        """One RESP command on a connection of its own, and its one reply, as
        redis-cli does it (no half-close: inside TLS there is none); b"" for
        a connection closed without a reply."""
        command = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        reply = b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(command.encode())
                while not _complete(reply):
                    chunk = s.recv(65536)
                    if not chunk:
                        return b""
                    reply += chunk
        except OSError:
            return b""
        return reply

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _total(stats: str, family: str) -> float:
    """The sum of a family's inbound samples on a Prometheus page."""
    return sum(
        float(line.rpartition(" ")[2])
        for line in stats.splitlines()
        if line.startswith(family + "{") and 'reporter="destination"' in line
    )


def _complete(reply: bytes) -> bool:
    """A whole simple-string, error or bulk-string reply."""
    head, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return False
    if not head.startswith(b"$") or head == b"$-1":
        return True
    return len(rest) >= int(head[1:]) + 2


class TlsServer:
    """`openssl s_server` with its own certificate for `name`."""

    def __init__(self, directory: Path, name: str = "secure.example.com") -> None:
        self.directory, self.port, self.name = directory, free_port(), name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsServer:
        key, cert = self.directory / f"{self.name}.key", self.directory / f"{self.name}.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", f"/CN={self.name}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.process = subprocess.Popen(
            ["openssl", "s_server", "-accept", str(self.port), "-cert", str(cert),
             "-key", str(key), "-www", "-quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class World:
    mesh: SidecarMesh
    gateway: Proxy
    redis: dict[str, Sidecar]
    secure: Sidecar  # in front of an openssl s_server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("tcp-mesh")
    env = isolated_env(tmp)
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    mesh = SidecarMesh(plane, tmp, certificates=True)
    try:
        plane.start()
        mesh.apply(MESH)
        sidecars = {}
        for version in ("v1", "v2"):
            labels = {"app": "redis", "version": version}
            sidecar, _ = mesh.workload(f"redis-{version}", labels, Redis(version, tmp))  # type: ignore[arg-type]
            mesh.wait_serving(sidecar)
            sidecars[version] = sidecar
        secure, _ = mesh.workload("secure-v1", {"app": "secure"}, TlsServer(tmp))  # type: ignore[arg-type]
        mesh.wait_serving(secure)
        gateway = _start_gateway(mesh, tmp)
        wait_until(
            lambda: Redis.ask(GATEWAY_PORT, "PING") == b"+PONG\r\n",
            20,
            f"no way in: {gateway.stderr()[-2000:]} {sidecars['v1'].proxy.stderr()[-2000:]}",
        )
        yield World(mesh, gateway, sidecars, secure)
    finally:
        mesh.close()


def _start_gateway(mesh: SidecarMesh, tmp: Path) -> Proxy:
    who = SidecarIdentity(
        instance="tcp-gateway-0",
        namespace="default",
        workload="tcp-gateway",
        labels={"istio": "tcp-gateway", "app": "tcp-gateway"},
        service_account="tcp-gateway",
        app_containers="gateway",
    )
    admin = free_port()
    config = gateway_bootstrap(
        who, admin_port=admin, xds=XdsServer("127.0.0.1", mesh.plane.xds_port)
    )
    path = tmp / "bootstrap-gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    args = ("--ca-token-file", str(mesh.token_file(who)))
    proxy = Proxy(path, admin, tmp / "gateway.stderr", args=args)
    mesh.sidecars.append(Sidecar(who, proxy, 0))  # stopped with the mesh
    proxy.start(timeout=15)
    return proxy


def test_a_weighted_tcp_route_splits_connections_through_mtls_sidecars(world: World) -> None:
    n = 300
    answers = [Redis.ask(GATEWAY_PORT, "GET", "who") for _ in range(n)]
    v1, v2 = answers.count(b"$2\r\nv1\r\n"), answers.count(b"$2\r\nv2\r\n")
    assert v1 + v2 == n, (
        set(answers),
        world.gateway.stderr()[-3000:],
        world.redis["v1"].proxy.stderr()[-3000:],
    )
    assert 0.70 <= v1 / n <= 0.90, (v1, v2)  # binomial(300, 0.8): 4.5 sigma either way
    for version, sidecar in world.redis.items():
        inbound = [
            line
            for line in sidecar.stats().splitlines()
            if line.startswith("istio_tcp_received_bytes_total{")
            and 'reporter="destination"' in line
        ]
        assert inbound, version
        assert all('connection_security_policy="mutual_tls"' in x for x in inbound), inbound
        assert any(
            'source_principal="spiffe://cluster.local/ns/default/sa/tcp-gateway"' in x
            for x in inbound
        ), inbound
        # each GET is 22 bytes of RESP (its reply 8), the fixture's PING 14 (+PONG 7)
        gets = v1 if version == "v1" else v2
        stats = sidecar.stats()
        assert _total(stats, "istio_tcp_received_bytes_total") >= 22 * gets, stats
        assert _total(stats, "istio_tcp_sent_bytes_total") >= 8 * gets, stats
        assert _total(stats, "istio_tcp_connections_opened_total") >= gets, stats


def test_plaintext_straight_to_a_redis_sidecar_is_refused_under_strict(world: World) -> None:
    sidecar = world.redis["v1"]
    assert Redis.ask(sidecar.inbound_port, "GET", "who") == b"$2\r\nv1\r\n"  # PERMISSIVE
    world.mesh.apply(
        """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: redis-strict}
spec:
  selector: {matchLabels: {app: redis}}
  mtls: {mode: STRICT}
"""
    )
    wait_until(
        lambda: Redis.ask(sidecar.inbound_port, "GET", "who") == b"", 10, "plaintext still served"
    )
    assert Redis.ask(GATEWAY_PORT, "GET", "who") in (b"$2\r\nv1\r\n", b"$2\r\nv2\r\n")


def allow_only(principal: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: redis-allow}}
spec:
  selector: {{matchLabels: {{app: redis}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: ["{principal}"]}}}}]}}]
"""


def test_authorization_policy_closes_the_tcp_port_to_other_identities(world: World) -> None:
    world.mesh.apply(allow_only("cluster.local/ns/default/sa/someone-else"))
    wait_until(lambda: Redis.ask(GATEWAY_PORT, "GET", "who") == b"", 10, "still let through")
    assert all(Redis.ask(GATEWAY_PORT, "GET", "who") == b"" for _ in range(10))
    denied = sum(
        float(line.rpartition(" ")[2])
        for sidecar in world.redis.values()
        for line in sidecar.stats().splitlines()
        if line.startswith("envoy_tcp_rbac_denied")
    )
    assert denied >= 10
    world.mesh.apply(allow_only("cluster.local/ns/default/sa/tcp-gateway"))
    wait_until(
        lambda: Redis.ask(GATEWAY_PORT, "GET", "who") in (b"$2\r\nv1\r\n", b"$2\r\nv2\r\n"),
        10,
        "the gateway's identity still refused",
    )


def test_openssl_through_a_passthrough_gateway_sees_the_backends_own_certificate(
    world: World,
) -> None:
    def s_client() -> str:
        done = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{TLS_GATEWAY_PORT}",
             "-servername", "secure.example.com"],
            input=b"", capture_output=True, timeout=20,
        )  # fmt: skip
        return done.stdout.decode(errors="replace")

    wait_until(lambda: "secure.example.com" in s_client(), 20, "no certificate through the gateway")
    seen = s_client()
    # the backend's own self-signed certificate, not the mesh's SPIFFE one
    assert "subject=CN" in seen and "secure.example.com" in seen.partition("subject=")[2], seen
    assert "spiffe://" not in seen
    # and the hop from the gateway to the backend's sidecar was the mesh's mutual TLS
    opened = [
        line
        for line in world.secure.stats().splitlines()
        if line.startswith("istio_tcp_connections_opened_total{")
    ]
    assert opened and all('connection_security_policy="mutual_tls"' in x for x in opened), opened
