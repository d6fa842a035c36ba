"""Gateway TLS end to end with real peers: a control plane, a `pilotfish
proxy` in router mode (the ingress gateway, in istio-system, from the node
agent's bootstrap), an app behind it, and curl and openssl as the clients.

Certificates come from a test CA made here; the Secrets that hold them are
applied as a user would (`kubernetes.io/tls`, base64 data). One Gateway has:
an HTTPS port with a SIMPLE server (gw.example.com) and a MUTUAL one
(mtls.example.com) chosen by SNI, an HTTP port redirecting gw.example.com to
https, and an HTTPS port for tls13.example.com with minProtocolVersion TLSV1_3.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mesh_processes import XdsControlPlane, wait_until
from sidecar_mesh import Backend, Proxy, SidecarMesh, curl, isolated_env
from tests.ports import free_port
from tests.tls_certs import Issued, issue
from tests.tls_certs import tls_secret as secret_object

from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, gateway_bootstrap

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]
GATEWAY_NS = "istio-system"


def tls_secret(name: str, leaf: Issued, ca: Issued | None = None, key: bytes = b"") -> str:
    data = {"tls_crt": leaf.cert_pem, "tls_key": key or leaf.key_pem}
    if ca is not None:
        data["ca_crt"] = ca.cert_pem
    return yaml.safe_dump(secret_object(name, GATEWAY_NS, **data))


def gateway(https: int, http: int, tls13: int) -> str:
    def server(port: int, proto: str, host: str, tls: dict[str, object]) -> dict[str, object]:
        name = f"{proto.lower()}-{host.split('.')[0]}"
        return {
            "port": {"number": port, "name": name, "protocol": proto},
            "hosts": [host],
            "tls": tls,
        }

    servers = [
        server(https, "HTTPS", "gw.example.com", {"mode": "SIMPLE", "credentialName": "gw-cred"}),
        server(https, "HTTPS", "mtls.example.com", {"mode": "MUTUAL", "credentialName": "mtls"}),
        server(http, "HTTP", "gw.example.com", {"httpsRedirect": True}),
        server(
            tls13,
            "HTTPS",
            "tls13.example.com",
            {"mode": "SIMPLE", "credentialName": "gw-cred", "minProtocolVersion": "TLSV1_3"},
        ),
    ]
    objects = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "default"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "hosts": ["gw.example.com", "mtls.example.com", "tls13.example.com"],
                "gateways": ["edge"],
                "http": [{"route": [{"destination": {"host": "web.default.svc.cluster.local"}}]}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]},
        },
    ]
    return yaml.safe_dump_all(objects)


@dataclass
class World:
    mesh: SidecarMesh
    gateway: Proxy
    tmp: Path
    ca: Issued
    https: int
    http: int
    tls13: int

    def file(self, name: str, data: bytes) -> str:
        path = self.tmp / name
        path.write_bytes(data)
        return str(path)

    def https_get(self, host: str, *args: str, port: int = 0) -> subprocess.CompletedProcess[str]:
        port = port or self.https
        cacert = self.file("ca.pem", self.ca.cert_pem)
        return subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--cacert", cacert, "--resolve",
             f"{host}:{port}:127.0.0.1", "-w", "\n%{http_code}\n%{certs}", *args,
             f"https://{host}:{port}/hello"],
            capture_output=True, text=True, timeout=15,
        )  # fmt: skip

    def sds_state(self) -> dict[str, object]:
        for status in self.mesh._client().proxy_status():
            if status["type"] == "router":
                found: dict[str, object] = status["types"].get("SDS", {})
                return found
        return {}


def serial_seen(done: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"Serial Number:\s*([0-9a-fA-F:]+)", done.stdout)
    assert match, done.stdout + done.stderr
    return int(match.group(1).replace(":", ""), 16)


def status_of(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stdout.splitlines()
    return next((line for line in reversed(lines) if re.fullmatch(r"\d{3}", line)), "")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("gwtls")
    env = isolated_env(tmp)
    plane = XdsControlPlane(tmp / "data", free_port(), env, xds_port=free_port())
    mesh = SidecarMesh(plane, tmp)
    ca = issue("test-ca")
    ports = (free_port(), free_port(), free_port())
    gateway_proxy: Proxy | None = None
    try:
        plane.start()
        mesh.apply(tls_secret("gw-cred", issue("gw.example.com", ca)))
        mesh.apply(tls_secret("mtls", issue("mtls.example.com", ca), ca))
        mesh.apply(gateway(*ports))
        mesh.plain_workload("web-0", {"app": "web"}, Backend("web"))
        gateway_proxy = start_gateway(mesh, tmp)
        world = World(mesh, gateway_proxy, tmp, ca, *ports)
        wait_until(
            lambda: status_of(world.https_get("gw.example.com")) == "200",
            20,
            f"the gateway never served HTTPS: {world.gateway.stderr()}",
        )
        yield world
    finally:
        if gateway_proxy is not None and gateway_proxy.process is not None:
            gateway_proxy.stop()
        mesh.close()


def start_gateway(mesh: SidecarMesh, tmp: Path) -> Proxy:
    who = SidecarIdentity(
        instance="istio-ingressgateway-0",
        namespace=GATEWAY_NS,
        workload="istio-ingressgateway",
        labels={"istio": "ingressgateway", "app": "istio-ingressgateway"},
        service_account="istio-ingressgateway",
        app_containers="",
    )
    admin = free_port()
    config = gateway_bootstrap(
        who, admin_port=admin, xds=XdsServer("127.0.0.1", mesh.plane.xds_port)
    )
    path = tmp / "bootstrap-gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    proxy = Proxy(path, admin, tmp / "gateway.stderr")
    proxy.start(timeout=15)
    return proxy


def test_https_with_the_secrets_certificate(world: World) -> None:
    done = world.https_get("gw.example.com")
    assert status_of(done) == "200", done.stderr
    assert "web" in done.stdout  # the backend's name in its body
    assert "CN = gw.example.com" in done.stdout or "CN=gw.example.com" in done.stdout


def test_curl_http2_through_the_gateway_negotiates_h2_by_alpn(world: World) -> None:
    done = world.https_get("gw.example.com", "--http2", "-w", "\n%{http_version}")
    assert done.stdout.endswith("\n2"), done.stdout + done.stderr  # ALPN h2, then HTTP/2
    assert "web" in done.stdout
    load = subprocess.run(
        ["h2load", "-n", "100", "-c", "2", "-m", "10", f"--connect-to=127.0.0.1:{world.https}",
         f"https://gw.example.com:{world.https}/hello"],  # SNI picks the gateway's chain
        capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert "100 succeeded" in load.stdout and "status codes: 100 2xx" in load.stdout, load.stdout


def test_a_client_that_does_not_trust_the_ca_is_refused(world: World) -> None:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--resolve", f"gw.example.com:{world.https}:127.0.0.1",
         f"https://gw.example.com:{world.https}/"],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    assert done.returncode == 60, done.stderr  # curl: peer certificate cannot be authenticated


def test_mutual_refuses_a_client_without_a_certificate_and_accepts_one_from_ca_crt(
    world: World,
) -> None:
    refused = world.https_get("mtls.example.com")
    assert status_of(refused) != "200"
    assert refused.returncode != 0, refused.stdout
    client = issue("client.example.com", world.ca)
    cert = world.file("client.pem", client.cert_pem)
    key = world.file("client-key.pem", client.key_pem)
    accepted = world.https_get("mtls.example.com", "--cert", cert, "--key", key)
    assert status_of(accepted) == "200", accepted.stderr
    assert "CN = mtls.example.com" in accepted.stdout or "CN=mtls.example.com" in accepted.stdout
    stranger = issue("stranger", issue("other-ca"))
    foreign = world.https_get(
        "mtls.example.com",
        "--cert", world.file("s.pem", stranger.cert_pem),
        "--key", world.file("s-key.pem", stranger.key_pem),
    )  # fmt: skip
    assert status_of(foreign) != "200"


def test_simple_server_on_the_same_port_asks_no_client_certificate(world: World) -> None:
    """SNI picks the SIMPLE chain: no certificate needed there, though the
    MUTUAL chain on the same port requires one; and that chain's clients
    cannot reach the MUTUAL server's host by naming it in Host."""
    assert status_of(world.https_get("gw.example.com")) == "200"
    smuggled = world.https_get("gw.example.com", "-H", "Host: mtls.example.com")
    assert status_of(smuggled) == "404", smuggled.stdout


def test_https_redirect_is_a_301_to_https(world: World) -> None:
    response = curl(f"http://127.0.0.1:{world.http}/a/b?x=1", headers={"Host": "gw.example.com"})
    assert response.status == 301
    assert response.header("location") == "https://gw.example.com/a/b?x=1"


def test_min_protocol_version_refuses_older_clients(world: World) -> None:
    def s_client(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{world.tls13}",
             "-servername", "tls13.example.com", *args],
            input=b"", capture_output=True, timeout=15,
        )  # fmt: skip

    for old in ("-tls1_1", "-tls1_2"):
        done = s_client(old)
        assert done.returncode != 0, (old, done.stdout[-500:])
    newest = s_client("-tls1_3")
    assert newest.returncode == 0, newest.stderr[-500:]
    assert b"TLSv1.3" in newest.stdout
    # The SIMPLE server without a minimum still takes TLS 1.2.
    assert status_of(world.https_get("gw.example.com", "--tls-max", "1.2")) == "200"


def test_a_changed_secret_is_served_without_restart_and_old_connections_live_on(
    world: World,
) -> None:
    before = serial_seen(world.https_get("gw.example.com"))
    kept = keep_alive_connection(world)
    pid = world.gateway.pid
    renewed = issue("gw.example.com", world.ca)
    world.mesh.apply(tls_secret("gw-cred", renewed))
    wait_until(
        lambda: serial_seen(world.https_get("gw.example.com")) == renewed.cert.serial_number,
        20,
        "the gateway never served the new certificate",
    )
    assert before != renewed.cert.serial_number
    assert world.gateway.pid == pid and world.gateway.process.poll() is None  # type: ignore[union-attr]
    assert request_on(kept) == 200  # the connection made under the old certificate


def test_a_bad_secret_is_nacked_naming_it_and_the_last_good_one_serves(world: World) -> None:
    good = serial_seen(world.https_get("gw.example.com"))
    mismatched = issue("gw.example.com", world.ca)
    other_key = issue("gw.example.com", world.ca).key_pem
    world.mesh.apply(tls_secret("gw-cred", mismatched, key=other_key))

    def nacked() -> bool:
        nack = world.sds_state().get("nack")
        return bool(nack) and "kubernetes://gw-cred" in json.dumps(nack)

    wait_until(nacked, 20, f"no NACK: {world.sds_state()}")
    message = json.dumps(world.sds_state()["nack"])
    assert "does not match the certificate" in message
    assert serial_seen(world.https_get("gw.example.com")) == good
    expired = issue("gw.example.com", world.ca, days=1, ago=3)
    world.mesh.apply(tls_secret("gw-cred", expired))
    wait_until(lambda: "expired" in json.dumps(world.sds_state().get("nack")), 20, "no NACK")
    assert serial_seen(world.https_get("gw.example.com")) == good


def keep_alive_connection(world: World) -> ssl.SSLSocket:
    context = ssl.create_default_context(cadata=world.ca.cert_pem.decode())
    raw = socket.create_connection(("127.0.0.1", world.https), timeout=5)
    conn = context.wrap_socket(raw, server_hostname="gw.example.com")
    assert request_on(conn) == 200
    return conn


def request_on(conn: ssl.SSLSocket) -> int:
    conn.sendall(b"GET /hello HTTP/1.1\r\nHost: gw.example.com\r\n\r\n")
    head = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in head and time.monotonic() < deadline:
        head += conn.recv(65536)
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
    body = head.partition(b"\r\n\r\n")[2]
    while length and len(body) < int(length.group(1)):
        body += conn.recv(65536)
    return status


@dataclass
class TlsBackend(Backend):
    """The harness's backend behind TLS, requiring a client certificate of `ca`."""

    certificate: Issued | None = None
    ca: Issued | None = None

    def start(self) -> Backend:
        super().start()
        assert self._server is not None and self.certificate is not None and self.ca is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.NamedTemporaryFile(suffix=".pem") as pem:
            pem.write(self.certificate.cert_pem + self.certificate.key_pem)
            pem.flush()
            context.load_cert_chain(pem.name)
        context.load_verify_locations(cadata=self.ca.cert_pem.decode())
        context.verify_mode = ssl.CERT_REQUIRED
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        return self


def upstream_tls(credential: str, service: str) -> str:
    objects = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "namespace": "default"},
            "spec": {"selector": {"app": service}, "ports": [{"name": "http", "port": 8443}]},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": service, "namespace": "default"},
            "spec": {
                "host": f"{service}.default.svc.cluster.local",
                "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": credential}},
            },
        },
    ]
    return yaml.safe_dump_all(objects)


def test_a_destination_rule_credential_name_originates_mutual_tls(world: World) -> None:
    """DestinationRule tls MUTUAL with credentialName: the sidecar presents the
    Secret's certificate and verifies the server with its ca.crt; a Secret of
    another namespace is never served to it, so that cluster fails closed."""
    server_ca = issue("server-ca")
    client = issue("caller.default", world.ca)
    secure = TlsBackend("secure", certificate=issue("secure.example.com", server_ca), ca=world.ca)
    world.mesh.plain_workload("secure-0", {"app": "secure"}, secure)
    world.mesh.plain_workload(
        "foreign-0",
        {"app": "foreign"},
        # Signed by the CA in `mtls`: were that Secret served here, this would answer.
        TlsBackend("foreign", certificate=issue("foreign.example.com", world.ca), ca=world.ca),
    )
    credential = yaml.safe_load(tls_secret("client-cred", client, server_ca))
    credential["metadata"]["namespace"] = "default"
    world.mesh.apply(yaml.safe_dump(credential))
    world.mesh.apply(upstream_tls("client-cred", "secure"))
    world.mesh.apply(upstream_tls("mtls", "foreign"))  # `mtls` lives in istio-system only
    caller = world.mesh.client("caller-0", {"app": "caller"})
    world.mesh.wait_serving(caller)

    def status(url: str) -> int:
        return curl(url, proxy=caller.outbound_port).status

    wait_until(lambda: status("http://secure:8443/hello") == 200, 20, "no mutual TLS upstream")
    assert secure.count >= 1
    foreign = curl("http://foreign:8443/hello", proxy=caller.outbound_port)
    assert foreign.status == 503
    assert "UF" in (foreign.header("x-pilotfish-flags") or "")
    assert world.mesh.backends[-1].count == 0


def test_apply_and_analyze_warn_of_a_missing_credential(world: World) -> None:
    manifest = yaml.safe_dump(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "nope", "namespace": "default"},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "servers": [
                    {
                        "port": {"number": free_port(), "name": "https", "protocol": "HTTPS"},
                        "hosts": ["nope.example.com"],
                        "tls": {"mode": "SIMPLE", "credentialName": "nope"},
                    }
                ],
            },
        }
    )
    try:
        applied = world.mesh.plane.cli("apply", "-f", "-", stdin=manifest)
        assert applied.returncode == 0, applied.stderr
        warning = 'Referenced credentialName not found: "nope"'
        assert warning in applied.stderr
        analyzed = world.mesh.plane.cli("analyze", "-A")
        assert f"(Gateway default/nope) {warning}" in analyzed.stdout
        assert "gw-cred" not in analyzed.stdout  # the good Secrets raise nothing
    finally:
        world.mesh.plane.cli("delete", "gateway", "nope")
