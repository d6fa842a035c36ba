"""Ports that declare no protocol, through the whole mesh with real peers
and mutual TLS between sidecars: Istio's protocol detection tells HTTP
(curl through a client sidecar, counted in istio_requests_total with
request_protocol http) from redis (through a gateway's TCP route, counted in
the TCP metrics), and a server-first protocol speaks once the mesh config's
protocolDetectionTimeout has passed. And a Gateway server in AUTO_PASSTHROUGH
mode passes openssl's TLS, untouched, to the cluster its SNI names."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from mesh_processes import XdsControlPlane, wait_until
from sidecar_mesh import Backend, Sidecar, SidecarMesh, curl, isolated_env
from test_e2e_sniffing import Greeter
from test_tcp_mesh_e2e import Redis, TlsServer, _start_gateway, _total
from tests.ports import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="needs redis-server (scripts/setup --test)"
    ),
]
CACHE_PORT, GREETER_PORT, EAST_WEST_PORT = free_port(), free_port(), free_port()
VAULT = "vault.default.svc.cluster.local"
MESH = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: "protocolDetectionTimeout: 500ms"
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 8000, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: cache}}
spec:
  selector: {{app: cache}}
  ports: [{{port: 6379, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: greeter}}
spec:
  selector: {{app: greeter}}
  ports: [{{name: smtp-ish, port: 2525, targetPort: http}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: sniff-gateway}}
spec:
  selector: {{istio: tcp-gateway}}
  servers:
  - port: {{number: {CACHE_PORT}, name: tcp-cache, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {GREETER_PORT}, name: tcp-greeter, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {EAST_WEST_PORT}, name: tls-east-west, protocol: TLS}}
    hosts: ["*.local"]
    tls: {{mode: AUTO_PASSTHROUGH}}
---
apiVersion: v1
kind: Service
metadata: {{name: vault}}
spec:
  selector: {{app: vault}}
  ports: [{{name: tls, port: 8443, targetPort: http}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: sniffed}}
spec:
  hosts: ["*"]
  gateways: [sniff-gateway]
  tcp:
  - match: [{{port: {CACHE_PORT}}}]
    route: [{{destination: {{host: cache, port: {{number: 6379}}}}}}]
  - match: [{{port: {GREETER_PORT}}}]
    route: [{{destination: {{host: greeter, port: {{number: 2525}}}}}}]
"""


@dataclass
class World:
    mesh: SidecarMesh
    client: Sidecar
    web: Sidecar
    cache: Sidecar
    greeter: Sidecar


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sniff-mesh")
    env = isolated_env(tmp)
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    mesh = SidecarMesh(plane, tmp, certificates=True)
    try:
        plane.start()
        mesh.apply(MESH)
        web, _ = mesh.workload("web-v1", {"app": "web"}, Backend("web"))
        cache, _ = mesh.workload("cache-v1", {"app": "cache"}, Redis("cache", tmp))  # type: ignore[arg-type]
        greeter, _ = mesh.workload("greeter-v1", {"app": "greeter"}, Greeter())  # type: ignore[arg-type]
        mesh.plain_workload("vault-v1", {"app": "vault"}, TlsServer(tmp))  # type: ignore[arg-type]
        client = mesh.client("client-0", {"app": "client"})
        for sidecar in (web, cache, greeter, client):
            mesh.wait_serving(sidecar)
        gateway = _start_gateway(mesh, tmp)
        wait_until(
            lambda: Redis.ask(CACHE_PORT, "PING") == b"+PONG\r\n",
            20,
            f"no way in: {gateway.stderr()[-2000:]} {cache.proxy.stderr()[-2000:]}",
        )
        yield World(mesh, client, web, cache, greeter)
    finally:
        mesh.close()


def _inbound(stats: str, family: str) -> list[str]:
    return [
        line
        for line in stats.splitlines()
        if line.startswith(family + "{") and 'reporter="destination"' in line
    ]


def test_http_on_an_undeclared_port_is_sniffed_as_http(world: World) -> None:
    url = "http://web.default.svc.cluster.local:8000/hello"
    answer = curl(url, proxy=world.client.outbound_port)
    assert (answer.status, answer.header("x-backend")) == (200, "web"), world.web.proxy.stderr()[
        -3000:
    ]
    requests = _inbound(world.web.stats(), "istio_requests_total")
    assert any(
        'request_protocol="http"' in x
        and 'response_code="200"' in x
        and 'connection_security_policy="mutual_tls"' in x
        for x in requests
    ), requests
    assert not _inbound(world.web.stats(), "istio_tcp_connections_opened_total")


def test_redis_on_an_undeclared_port_is_sniffed_as_tcp(world: World) -> None:
    assert Redis.ask(CACHE_PORT, "SET", "k", "v") == b"+OK\r\n"
    assert Redis.ask(CACHE_PORT, "GET", "k") == b"$1\r\nv\r\n"
    stats = world.cache.stats()
    opened = _inbound(stats, "istio_tcp_connections_opened_total")
    assert opened and all('connection_security_policy="mutual_tls"' in x for x in opened), opened
    assert _total(stats, "istio_tcp_received_bytes_total") >= 2 * 14, stats
    assert not _inbound(stats, "istio_requests_total")  # never taken for HTTP


def test_a_server_first_protocol_speaks_after_the_detection_timeout(world: World) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", GREETER_PORT), timeout=10) as s:
        greeting = b""
        while b"\n" not in greeting and (chunk := s.recv(4096)):
            greeting += chunk
        waited = time.monotonic() - started
        s.sendall(b"EHLO me\r\n")
        echo = b""
        while b"\n" not in echo and (chunk := s.recv(4096)):
            echo += chunk
    assert greeting == b"220 greeter ready\r\n", world.greeter.proxy.stderr()[-3000:]
    assert echo == b"echo EHLO me\r\n"
    assert 0.45 <= waited < 5, waited  # the mesh config's 500ms, then TCP


def s_client(servername: str) -> str:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{EAST_WEST_PORT}",
         "-servername", servername],
        input=b"", capture_output=True, timeout=20,
    )  # fmt: skip
    return done.stdout.decode(errors="replace")


def test_auto_passthrough_reaches_the_cluster_the_sni_names(world: World) -> None:
    sni = f"outbound_.8443_._.{VAULT}"
    wait_until(lambda: "secure.example.com" in s_client(sni), 20, "no certificate through")
    seen = s_client(sni)
    # the backend's own certificate: the gateway neither terminated nor wrapped the TLS
    assert "secure.example.com" in seen.partition("subject=")[2], seen
    assert "spiffe://" not in seen
    # a name no cluster has: closed, as Envoy closes a connection to an unknown cluster
    assert "subject=" not in s_client(f"outbound_.9999_._.{VAULT}")
    assert "subject=" not in s_client("vault.example.org")  # outside the server's hosts


def test_a_silent_plaintext_client_of_a_permissive_port_gets_the_tcp_chain(world: World) -> None:
    """Straight to the sidecar (PERMISSIVE: TLS or plaintext, told apart by
    the first byte): no byte ever comes, so after the detection timeout the
    connection is plaintext TCP, and the server-first app speaks."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", world.greeter.inbound_port), timeout=10) as s:
        greeting = b""
        while b"\n" not in greeting and (chunk := s.recv(4096)):
            greeting += chunk
    assert greeting == b"220 greeter ready\r\n", world.greeter.proxy.stderr()[-3000:]
    assert 0.45 <= time.monotonic() - started < 5


def test_auto_passthrough_to_a_sidecar_meets_its_mesh_certificate(world: World) -> None:
    """East-west as Istio's: the SNI names a service whose endpoints have
    sidecars, and the TLS is the destination sidecar's own (its SPIFFE
    identity), not terminated or wrapped by the gateway."""
    sni = "outbound_.8000_._.web.default.svc.cluster.local"

    def served() -> list[str]:
        done = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{EAST_WEST_PORT}",
             "-servername", sni, "-showcerts"],
            input=b"", capture_output=True, timeout=20,
        )  # fmt: skip
        pem = done.stdout.partition(b"-----BEGIN CERTIFICATE-----")[2].partition(b"-----END")[0]
        if not pem:
            return []
        whole = b"-----BEGIN CERTIFICATE-----" + pem + b"-----END CERTIFICATE-----\n"
        cert = x509.load_pem_x509_certificate(whole)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(uri) for uri in names.get_values_for_type(x509.UniformResourceIdentifier)]

    wait_until(lambda: served() != [], 20, "no certificate from the web sidecar")
    assert served() == ["spiffe://cluster.local/ns/default/sa/bookinfo-web"]
