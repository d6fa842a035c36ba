"""VirtualService `tls` routes bound to `mesh`, end to end with real peers: an
unmodified client (`openssl s_client`) connects to its sidecar's declared
upstream on localhost, originating TLS itself; the sidecar reads the SNI
without terminating and sends the connection to the subset its `tls` route
names, over the mesh's mutual TLS to the backend's sidecar, so the client
sees the backend's own certificate. Two openssl s_server backends, one per
subset, each with a certificate of its own name."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from mesh_processes import wait_until, xds_plane
from sidecar_mesh import Sidecar, SidecarMesh
from test_tcp_mesh_e2e import TlsServer
from tests.ports import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]
LOCAL = free_port()
MESH = """
apiVersion: v1
kind: Service
metadata: {name: vault}
spec:
  selector: {app: vault}
  ports: [{name: tls, port: 8443, targetPort: http}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: vault}
spec:
  host: vault
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vault}
spec:
  hosts: [vault]
  tls:
  - match: [{sniHosts: [v1.vault.example]}]
    route: [{destination: {host: vault, subset: v1, port: {number: 8443}}}]
  - match: [{sniHosts: [v2.vault.example]}]
    route: [{destination: {host: vault, subset: v2, port: {number: 8443}}}]
  - match: [{sniHosts: [vault.example]}]
    route:
    - {destination: {host: vault, subset: v1, port: {number: 8443}}, weight: 80}
    - {destination: {host: vault, subset: v2, port: {number: 8443}}, weight: 20}
"""


@dataclass
class World:
    mesh: SidecarMesh
    client: Sidecar
    vault: dict[str, Sidecar]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sidecar-tls")
    plane = xds_plane(tmp)
    mesh = SidecarMesh(plane, tmp, certificates=True)
    try:
        plane.start()
        mesh.apply(MESH)
        vault = {}
        for version in ("v1", "v2"):
            backend = TlsServer(tmp, f"{version}.vault.example")
            labels = {"app": "vault", "version": version}
            vault[version], _ = mesh.workload(f"vault-{version}", labels, backend)  # type: ignore[arg-type]
        upstreams = [{"service": "vault", "port": 8443, "localPort": LOCAL}]
        client = mesh.client("client-0", {"app": "client"}, upstreams)
        for sidecar in (*vault.values(), client):
            mesh.wait_serving(sidecar)
        wait_until(
            lambda: subject("v1.vault.example") == "v1.vault.example",
            20,
            f"no way through: {client.proxy.stderr()[-2000:]}",
        )
        yield World(mesh, client, vault)
    finally:
        mesh.close()


def subject(sni: str) -> str:
    """The CN of the certificate `openssl s_client` is shown through the declared upstream."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{LOCAL}", "-servername", sni],
        input=b"", capture_output=True, timeout=20,
    )  # fmt: skip
    seen = done.stdout.decode(errors="replace")
    line = next((x for x in seen.splitlines() if x.startswith("subject=")), "")
    return line.partition("CN")[2].lstrip(" =")


def test_each_sni_reaches_its_subsets_own_certificate(world: World) -> None:
    for _ in range(3):
        assert subject("v1.vault.example") == "v1.vault.example"
        assert subject("v2.vault.example") == "v2.vault.example"


def test_the_hop_between_sidecars_is_mutual_tls(world: World) -> None:
    subject("v2.vault.example")
    opened = [
        line
        for line in world.vault["v2"].stats().splitlines()
        if line.startswith("istio_tcp_connections_opened_total{")
    ]
    assert opened and all('connection_security_policy="mutual_tls"' in x for x in opened), opened
    assert any("sa/bookinfo-client" in x for x in opened), opened  # the caller's identity


def test_a_weighted_tls_route_splits_connections(world: World) -> None:
    n = 60
    seen = [subject("vault.example") for _ in range(n)]
    v1, v2 = seen.count("v1.vault.example"), seen.count("v2.vault.example")
    assert v1 + v2 == n, seen
    assert 38 <= v1 <= 58, (v1, v2)  # binomial(60, 0.8): 3.2 sigma below; an even split fails


def test_a_name_no_route_claims_reaches_the_service(world: World) -> None:
    assert subject("other.example") in ("v1.vault.example", "v2.vault.example")
