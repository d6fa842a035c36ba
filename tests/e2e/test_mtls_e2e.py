"""Mutual TLS between sidecars, end to end with real peers: a control plane
with its CA (20 s workload certificates, so every test runs across
renewals), `pilotfish proxy` sidecars holding certificates from it (as the
node agent runs them), in-process backends, curl and openssl.

Mesh: productpage-v1 (a caller: sidecar only), reviews-v1 (an app behind a
sidecar). Each test that adds a failure case adds its own service.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from mesh_processes import XdsControlPlane, wait_until
from sidecar_mesh import Backend, Sidecar, SidecarMesh, curl, isolated_env
from tests.ports import free_port

from pilotfish.agent.bootstrap import SidecarIdentity
from pilotfish.ca.authority import CertificateAuthority
from pilotfish.ca.cacerts import ROOT_CERT, SELF_SIGNED_DIR, load_cacerts, self_signed
from pilotfish.ca.identity import TLS_MODE_LABEL, SpiffeId
from pilotfish.ca.workload import csr_for, key_pem, new_key, pem

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]
TTL = "20s"
REVIEWS = "http://reviews:9080/"
PRODUCTPAGE_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
REVIEWS_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"


def service(name: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 9080}}]
"""


STRICT_REVIEWS = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews-strict}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
"""


@dataclass
class World:
    mesh: SidecarMesh
    client: Sidecar
    reviews: Sidecar
    reviews_app: Backend
    tmp: Path

    @property
    def root(self) -> Path:
        return self.mesh.plane.data_dir / SELF_SIGNED_DIR / ROOT_CERT

    def via_client(self, url: str) -> tuple[int, str, str]:
        """(status, x-pilotfish-flags, body) of a request through the caller's sidecar."""
        response = curl(url, proxy=self.client.outbound_port)
        return response.status, response.header("x-pilotfish-flags") or "", response.body.decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mtls")
    env = isolated_env(tmp)
    plane = XdsControlPlane(
        tmp / "data", free_port(), env, xds_port=free_port(), args=("--workload-cert-ttl", TTL)
    )
    mesh = SidecarMesh(plane, tmp, certificates=True)
    try:
        plane.start()
        mesh.apply(service("reviews"))
        reviews, app = mesh.workload("reviews-v1", {"app": "reviews"}, Backend("reviews-v1"))
        client = mesh.client("productpage-v1", {"app": "productpage"})
        for sidecar in (reviews, client):
            mesh.wait_serving(sidecar)
            wait_until(sidecar.has_certificate, 20, "no certificate")
        world = World(mesh, client, reviews, app, tmp)
        wait_until(lambda: world.via_client(REVIEWS)[0] == 200, 10, "reviews never answered")
        yield world
    finally:
        mesh.close()


def openssl_client(port: int, *args: str, send: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts", *args],
        input=send,
        capture_output=True,
        timeout=20,
    )


def test_two_sidecars_talk_mutual_tls_and_the_callee_says_so(world: World) -> None:
    for _ in range(20):
        assert world.via_client(REVIEWS)[0] == 200
    stats = world.reviews.stats()
    inbound = [
        line
        for line in stats.splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert inbound, stats
    assert all('connection_security_policy="mutual_tls"' in line for line in inbound), inbound
    assert f'source_principal="{PRODUCTPAGE_ID}"' in inbound[0]
    assert f'destination_principal="{REVIEWS_ID}"' in inbound[0]
    # keep-alive: a handful of handshakes (one per pooled connection, and
    # after a renewal), never one per request
    status, text = world.client.proxy.admin_get("/stats")
    assert status == 200
    handshakes = re.search(
        r"outbound\|9080\|\|reviews\.default\.svc\.cluster\.local\.ssl\.handshake: (\d+)", text
    )
    assert handshakes is not None, text
    assert 1 <= int(handshakes.group(1)) <= 5


def test_http2_prior_knowledge_through_two_sidecars_over_mutual_tls(world: World) -> None:
    """h2c from the app to its sidecar's outbound listener (dialled directly,
    :authority naming the service), HTTP/1.1 inside mutual TLS to the callee."""
    out = world.client.outbound_port
    done = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "--max-time", "5", "-w", "\n%{http_version}",
         "--connect-to", f"reviews:9080:127.0.0.1:{out}", REVIEWS],
        capture_output=True, timeout=15, text=True,
    )  # fmt: skip
    assert done.stdout.endswith("\n2"), done.stdout + done.stderr
    load = subprocess.run(
        ["h2load", "-n", "200", "-c", "2", "-m", "10", "-H", ":authority: reviews:9080",
         f"http://127.0.0.1:{out}/"],
        capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert "200 succeeded" in load.stdout and "status codes: 200 2xx" in load.stdout, load.stdout
    inbound = [
        line
        for line in world.reviews.stats().splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line
    ]
    assert all('connection_security_policy="mutual_tls"' in line for line in inbound), inbound


def test_openssl_sees_the_workloads_spiffe_certificate_chained_to_the_mesh_root(
    world: World,
) -> None:
    done = openssl_client(world.reviews.inbound_port, "-CAfile", str(world.root))
    out = done.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out + done.stderr.decode()
    leaf = x509.load_pem_x509_certificates(
        re.search(
            rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", done.stdout, re.S
        ).group(0)  # type: ignore[union-attr]
    )[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [REVIEWS_ID]


def _chains(sidecar: Sidecar, port: int) -> int:
    for config in sidecar.config_dump().get("configs", []):
        for listener in config.get("resources", []):
            if listener.get("name") == f"inbound_127.0.0.1_{port}":
                return len(listener.get("filterChains", []))
    return 0


def test_plaintext_reaches_a_permissive_port_and_is_refused_on_a_strict_one(world: World) -> None:
    port = world.reviews.inbound_port
    plain = f"http://127.0.0.1:{port}/"
    assert curl(plain).status == 200  # PERMISSIVE, Istio's default
    world.mesh.apply(STRICT_REVIEWS)
    try:
        wait_until(lambda: _chains(world.reviews, port) == 1, 10, "STRICT not applied")
        done = subprocess.run(
            ["curl", "-s", "-S", "--max-time", "5", plain], capture_output=True, timeout=10
        )
        assert done.returncode in (52, 56), done  # empty reply / reset: no HTTP at all
        assert b"HTTP/" not in done.stdout
        # TLS without a client certificate is refused too
        request = b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n"
        refused = openssl_client(port, "-CAfile", str(world.root), "-ign_eof", send=request)
        assert b"HTTP/1.1 200" not in refused.stdout
        assert b"alert" in refused.stderr.lower() or refused.returncode != 0, refused
        # and the mesh's own mTLS still goes through
        assert world.via_client(REVIEWS)[0] == 200
    finally:
        world.mesh.delete("peerauthentication", "reviews-strict")
    wait_until(lambda: _chains(world.reviews, port) == 2, 10, "PERMISSIVE not restored")
    assert curl(plain).status == 200


def _requests_total(sidecar: Sidecar, policy: str) -> int:
    wanted = ('reporter="destination"', f'connection_security_policy="{policy}"')
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in sidecar.stats().splitlines()
        if line.startswith("istio_requests_total{") and all(w in line for w in wanted)
    )


def test_a_destination_rule_disabling_tls_applies_to_pooled_connections(world: World) -> None:
    """The caller's pool holds a TLS connection to reviews; after a
    DestinationRule says DISABLE, requests go in plaintext, not over it."""
    assert world.via_client(REVIEWS)[0] == 200
    before = _requests_total(world.reviews, "none")
    world.mesh.apply(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-plain}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: DISABLE}}
"""
    )
    try:

        def plaintext_arrives() -> bool:
            assert world.via_client(REVIEWS)[0] == 200
            return _requests_total(world.reviews, "none") > before

        wait_until(plaintext_arrives, 10, "still mutual TLS over the pooled connection")
    finally:
        world.mesh.delete("destinationrule", "reviews-plain")
    after = _requests_total(world.reviews, "mutual_tls")

    def mtls_again() -> bool:
        assert world.via_client(REVIEWS)[0] == 200
        return _requests_total(world.reviews, "mutual_tls") > after

    wait_until(mtls_again, 10, "mutual TLS did not come back")


def _register_as(world: World, instance: str, app: str, account: str, port: int) -> None:
    """An instance of `app` claiming service account `account`, with a sidecar (tlsMode istio)."""
    world.mesh._client().register_instance(
        {
            "name": instance,
            "namespace": "default",
            "workload": f"{app}-v1",
            "address": "127.0.0.1",
            "ports": {"http": port},
            "labels": {"app": app, TLS_MODE_LABEL: "istio"},
            "serviceAccount": account,
            "ttlSeconds": 300,
        }
    )
    world.mesh.registered.append(instance)


def test_a_server_with_the_wrong_identity_fails_with_uf_and_says_why(world: World) -> None:
    """The registry says ratings runs as `ratings-expected`; its sidecar holds
    the certificate of `bookinfo-ratings`: a SAN mismatch."""
    world.mesh.apply(service("ratings"))
    backend = Backend("ratings-v1")
    backend.start()
    world.mesh.backends.append(backend)
    who = SidecarIdentity("ratings-v1", "default", "ratings-v1", {"app": "ratings"},
                          "bookinfo-ratings", "ratings")  # fmt: skip
    inbound = free_port()
    world.mesh.registered.append(who.instance)
    world.mesh._client().register_instance(
        {
            "name": who.instance, "namespace": "default", "workload": who.workload,
            "address": "127.0.0.1", "ports": {"http": inbound},
            "appPorts": {"http": backend.port},
            "labels": {"app": "ratings", TLS_MODE_LABEL: "istio"},
            "serviceAccount": "ratings-expected", "ttlSeconds": 300,
        }
    )  # fmt: skip
    sidecar = world.mesh._start_sidecar(who, inbound)
    world.mesh.wait_serving(sidecar)
    wait_until(sidecar.has_certificate, 20, "no certificate")
    wait_until(lambda: world.via_client("http://ratings:9080/")[1].startswith("UF"), 10, "no UF")
    status, flags, body = world.via_client("http://ratings:9080/")
    # UF, and URX: Istio's default retry policy tried again (connect-failure)
    assert status == 503 and "UF" in flags.split(","), (flags, body)
    assert "SAN matcher" in body and "bookinfo-ratings" in body, body
    assert backend.count == 0


def issue_files(world: World, ca: CertificateAuthority, account: str) -> tuple[Path, Path]:
    """A certificate chain and key for `account`'s SPIFFE ID signed by `ca`, as files."""
    key = new_key()
    identity = f"spiffe://cluster.local/ns/default/sa/{account}"
    chain = ca.sign(csr_for(key, identity), SpiffeId.parse(identity), requested_seconds=3600)
    cert, key_file = world.tmp / f"{account}.pem", world.tmp / f"{account}.key"
    cert.write_text("".join(chain))
    key_file.write_bytes(key_pem(key))
    return cert, key_file


@contextlib.contextmanager
def s_server(files: tuple[Path, Path], *args: str) -> Iterator[int]:
    """`openssl s_server -www` with these certificate files; its port."""
    port = free_port()
    command = ["openssl", "s_server", "-accept", str(port), "-cert", str(files[0])]
    command += ["-key", str(files[1]), "-www", "-quiet", *args]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=5)


def test_a_server_of_a_foreign_ca_fails_with_uf_unknown_ca(world: World) -> None:
    """openssl s_server with a certificate for the right SPIFFE ID, signed
    by a CA the mesh does not trust."""
    world.mesh.apply(service("details"))
    foreign = self_signed(world.tmp / "foreign", "cluster.local")
    with s_server(issue_files(world, foreign, "bookinfo-details")) as port:
        _register_as(world, "details-v1", "details", "bookinfo-details", port)
        wait_until(
            lambda: world.via_client("http://details:9080/")[1].startswith("UF"), 10, "no UF"
        )
        status, flags, body = world.via_client("http://details:9080/")
        assert status == 503 and "UF" in flags.split(","), (flags, body)
        assert "unknown CA" in body, body
        # the proxy stays up and serves the rest of the mesh
        assert world.via_client(REVIEWS)[0] == 200


def test_a_server_refusing_the_callers_certificate_fails_with_uf(world: World) -> None:
    """openssl s_server with a mesh certificate, trusting another root for
    clients: TLS 1.3 refuses the caller's certificate after the caller's
    handshake, and that is still UF with the alert named, not a reset."""
    world.mesh.apply(service("checkout"))
    mesh_ca = load_cacerts(world.mesh.plane.data_dir / SELF_SIGNED_DIR, "cluster.local")
    foreign = self_signed(world.tmp / "foreign-clients", "cluster.local")
    (world.tmp / "other-root.pem").write_text(pem(foreign.root))
    files = issue_files(world, mesh_ca, "bookinfo-checkout")
    verify = ("-Verify", "1", "-verify_return_error", "-CAfile", str(world.tmp / "other-root.pem"))
    with s_server(files, *verify) as port:
        _register_as(world, "checkout-v1", "checkout", "bookinfo-checkout", port)
        url = "http://checkout:9080/"
        wait_until(lambda: world.via_client(url)[1] not in ("", "UH"), 10, "no endpoint")
        status, flags, body = world.via_client(url)
        assert status == 503 and "UF" in flags.split(","), (flags, body)
        assert "TLS error: TLSV1_ALERT_UNKNOWN_CA" in body, body


def test_destination_rule_tls_simple_and_mutual_originate_tls_with_files(world: World) -> None:
    """An application's own TLS server (openssl s_server, a company CA,
    client certificates required), registered without a sidecar: MUTUAL with
    the company's files reaches it; SIMPLE trusting another root fails UF."""
    world.mesh.apply(service("shop"))
    company = self_signed(world.tmp / "company", "cluster.local")
    server_files = issue_files(world, company, "shop-server")
    client_files = issue_files(world, company, "shop-client")
    root = world.tmp / "company-root.pem"
    root.write_text(pem(company.root))
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shop}}
spec:
  host: shop
  trafficPolicy: {{tls: {tls}}}
"""
    mutual = (
        f"{{mode: MUTUAL, caCertificates: {root}, clientCertificate: {client_files[0]}, "
        f"privateKey: {client_files[1]}, "
        "subjectAltNames: [spiffe://cluster.local/ns/default/sa/shop-server]}"
    )
    url = "http://shop:9080/"
    verify = ("-Verify", "1", "-verify_return_error", "-CAfile", str(root))
    with s_server(server_files, *verify) as port:
        try:
            world.mesh._client().register_instance(
                {"name": "shop-v1", "namespace": "default", "workload": "shop-v1",
                 "address": "127.0.0.1", "ports": {"http": port}, "labels": {"app": "shop"},
                 "ttlSeconds": 300}
            )  # fmt: skip
            world.mesh.registered.append("shop-v1")
            world.mesh.apply(rule.format(tls=mutual))
            wait_until(lambda: world.via_client(url)[0] == 200, 10, "MUTUAL never reached shop")
            assert "s_server" in world.via_client(url)[2]
            world.mesh.apply(rule.format(tls=f"{{mode: SIMPLE, caCertificates: {world.root}}}"))
            wait_until(lambda: world.via_client(url)[0] == 503, 10, "another root passed")
            status, flags, body = world.via_client(url)
            assert "UF" in flags.split(",") and "unknown CA" in body, (status, flags, body)
        finally:
            world.mesh.delete("destinationrule", "shop")


def _load(port: int, stop: threading.Event, results: list[str]) -> None:
    """Keep-alive requests through the caller's sidecar until `stop`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            conn.request("GET", REVIEWS, headers={"Host": "reviews:9080"})
            response = conn.getresponse()
            response.read()
            results.append(str(response.status))
        except (OSError, http.client.HTTPException) as e:
            results.append(f"error {e!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        time.sleep(0.01)
    conn.close()


def _serial(world: World) -> int:
    done = openssl_client(world.reviews.inbound_port, "-CAfile", str(world.root))
    block = re.search(
        rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", done.stdout, re.S
    )
    assert block is not None, done
    return x509.load_pem_x509_certificate(block.group(0)).serial_number


def test_renewals_under_steady_load_fail_no_request(world: World) -> None:
    """A minute of load through two sidecars with 20 s certificates: both
    renew about six times; not one request fails."""
    first = _serial(world)
    stop = threading.Event()
    results: list[str] = []
    threads = [
        threading.Thread(target=_load, args=(world.client.outbound_port, stop, results))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    time.sleep(60)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    failures = [r for r in results if r != "200"]
    assert len(results) > 1000, len(results)
    assert failures == [], failures[:10]
    assert _serial(world) != first  # the callee did renew
