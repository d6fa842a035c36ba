"""The CA over gRPC, as a sidecar calls it (grpcio, Istio's method path),
on a real control plane: who may get which identity, and what is refused
with which status and message; the TokenRequest endpoint; the trust domain
from the mesh config; a control plane with a bad plugged-in CA starts nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from tests.ca.pki import write_cacerts

from pilotfish.api.errors import Forbidden, Invalid, Unauthorized
from pilotfish.api.kinds import registry
from pilotfish.ca import protos
from pilotfish.ca.tokens import ServiceAccountTokens, TokenError
from pilotfish.ca.workload import csr_for, new_key
from pilotfish.client import Client, Unreachable
from pilotfish.controlplane.identity import CaOptions
from pilotfish.controlplane.main import ControlPlane, StartError

WORKLOAD = {
    "apiVersion": "pilotfish.dev/v1alpha1",
    "kind": "Workload",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "labels": {"app": "web"},
        "serviceAccountName": "web-frontend",
        "command": ["true"],
        "nodeName": "elsewhere",  # no agent runs it here; the store is what counts
    },
}
KEY = new_key()
WORKLOAD_KIND = registry().resolve("workload")
WEB = "spiffe://cluster.local/ns/shop/sa/web-frontend"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    tmp = tmp_path_factory.mktemp("plane")
    running = ControlPlane.open(tmp / "data", "127.0.0.1:0", tmp / "config.yaml", "127.0.0.1:0")
    running.server.start()
    yield running
    running.close()


@pytest.fixture(scope="module")
def admin_token(plane: ControlPlane) -> str:
    return (plane.data_dir / "token").read_text().strip()


@pytest.fixture(scope="module")
def admin_client(plane: ControlPlane, admin_token: str) -> Client:
    client = Client(plane.server.url, admin_token, timeout=10)
    client.apply(WORKLOAD)
    return client


def create_certificate(
    plane: ControlPlane, csr: str, token: str | None, validity: int = 0
) -> list[str]:
    assert plane.ads is not None
    with grpc.insecure_channel(f"127.0.0.1:{plane.ads.port}") as channel:
        call = channel.unary_unary(
            protos.METHOD_PATH,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=protos.IstioCertificateResponse.FromString,
        )
        metadata = [("authorization", f"Bearer {token}")] if token else []
        request = protos.IstioCertificateRequest(csr=csr, validity_duration=validity)
        return list(call(request, metadata=metadata, timeout=10).cert_chain)


def refused(plane: ControlPlane, csr: str, token: str | None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        create_certificate(plane, csr, token)
    return error.value.code(), error.value.details()


def uri_of(chain: list[str]) -> list[str]:
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def sa_token(client: Client, namespace: str, account: str) -> str:
    return str(client.create_token(namespace, account, 600)["status"]["token"])


def test_the_node_agent_gets_the_identity_of_a_workload_in_the_store(
    plane: ControlPlane, admin_client: Client, admin_token: str
) -> None:
    chain = create_certificate(plane, csr_for(KEY, WEB), admin_token)
    assert uri_of(chain) == [WEB]


def test_the_sidecars_ca_client_fails_over_past_a_replica_that_is_down(
    plane: ControlPlane, admin_client: Client, admin_token: str, tmp_path: Path
) -> None:
    import asyncio
    import socket

    from pilotfish.proxy.sds import IssueError, WorkloadCertificates

    assert plane.ads is not None
    with socket.socket() as s:  # a port nothing listens on: a replica that died
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    live = f"127.0.0.1:{plane.ads.port}"
    (tmp_path / "token").write_text(admin_token)
    certificates = WorkloadCertificates([dead, live], WEB, tmp_path / "token")
    issued = asyncio.run(certificates._issue())
    san = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert certificates.ca_targets == (live, dead)  # the one that answered is asked first
    with pytest.raises(IssueError, match=f"the CA at {dead}: UNAVAILABLE"):
        asyncio.run(WorkloadCertificates([dead], WEB, tmp_path / "token")._issue())


def test_the_rest_client_fails_over_past_a_replica_that_is_down(
    plane: ControlPlane, admin_client: Client, admin_token: str
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = Client(f"{dead},{plane.server.url}", admin_token, timeout=10)
    assert client.get(WORKLOAD_KIND, "web", "shop")["metadata"]["name"] == "web"
    assert client.server == plane.server.url  # and it stays there
    with pytest.raises(Unreachable, match=f"cannot reach the control plane at {dead}"):
        Client(dead, admin_token).get(WORKLOAD_KIND, "web", "shop")


def test_the_node_agent_cannot_get_an_identity_no_workload_runs_as(
    plane: ControlPlane, admin_client: Client, admin_token: str
) -> None:
    code, message = refused(
        plane, csr_for(KEY, "spiffe://cluster.local/ns/shop/sa/payments"), admin_token
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert message == (
        "no Workload in namespace 'shop' runs as service account 'payments', "
        "so the node agent may not hold spiffe://cluster.local/ns/shop/sa/payments"
    )


def test_a_service_account_token_gets_its_own_identity_and_no_other(
    plane: ControlPlane, admin_client: Client
) -> None:
    token = sa_token(admin_client, "vm", "billing")
    billing = "spiffe://cluster.local/ns/vm/sa/billing"
    assert uri_of(create_certificate(plane, csr_for(KEY, billing), token)) == [billing]
    for other in ("spiffe://cluster.local/ns/vm/sa/payments", WEB):
        code, message = refused(plane, csr_for(KEY, other), token)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert message == (
            f"the token of service account 'billing' in namespace 'vm' may not hold {other}"
        )


def test_a_caller_without_a_valid_token_is_unauthenticated(
    plane: ControlPlane, admin_client: Client
) -> None:
    csr = csr_for(KEY, WEB)
    assert refused(plane, csr, None) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "the request carries no Authorization: Bearer token",
    )
    forged = ServiceAccountTokens(b"k" * 32).mint("shop", "web-frontend", 600, time.time())
    code, message = refused(plane, csr, forged)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert message == (
        "the bearer token is not valid: the token's signature is not valid "
        "(not issued by this control plane)"
    )


def test_bad_csrs_are_refused_by_name_even_with_a_good_token(
    plane: ControlPlane, admin_client: Client
) -> None:
    token = sa_token(admin_client, "shop", "web-frontend")
    extra = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(WEB), x509.DNSName("bank.example")]
            ),
            critical=True,
        )
        .sign(KEY, hashes.SHA256())
    )
    code, message = refused(plane, extra.public_bytes(serialization.Encoding.PEM).decode(), token)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith(f"the CSR asks for names besides {WEB}: DNS:bank.example")
    code, message = refused(plane, "not a csr", token)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a PEM certificate request" in message


def test_token_requests_need_the_admin_token_and_kubernetes_lifetimes(
    plane: ControlPlane, admin_client: Client
) -> None:
    answer = admin_client.create_token("shop", "web-frontend", 3600)
    assert answer["kind"] == "TokenRequest" and answer["status"]["expirationTimestamp"]
    with pytest.raises(Invalid, match="may not specify a duration less than 10 minutes"):
        admin_client.create_token("shop", "web-frontend", 60)
    with pytest.raises(Forbidden, match='User "system:anonymous" cannot post'):
        Client(plane.server.url, None, timeout=5).create_token("shop", "web-frontend", 3600)
    with pytest.raises(Unauthorized):
        Client(plane.server.url, "not-a-token", timeout=5).create_token("shop", "web", 3600)


def test_an_expired_token_is_refused() -> None:
    tokens = ServiceAccountTokens(b"s" * 32)
    token = tokens.mint("shop", "web", 600, now=1000.0)
    assert tokens.verify(token, now=1500.0) == ("shop", "web")
    with pytest.raises(TokenError, match="the token has expired"):
        tokens.verify(token, now=1600.0)


def test_the_trust_domain_comes_from_the_mesh_config_unless_a_flag_says(tmp_path: Path) -> None:
    first = ControlPlane.open(tmp_path / "d", "127.0.0.1:0", tmp_path / "c.yaml", "127.0.0.1:0")
    try:
        first.server.start()
        client = Client(first.server.url, (tmp_path / "d" / "token").read_text().strip())
        client.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "istio", "namespace": "istio-system"},
                "data": {"mesh": "trustDomain: example.org\n"},
            }
        )
    finally:
        first.close()
    for options, domain in ((CaOptions(), "example.org"), (CaOptions("corp.test"), "corp.test")):
        plane = ControlPlane.open(
            tmp_path / "d", "127.0.0.1:0", tmp_path / "c.yaml", "127.0.0.1:0", options
        )
        try:
            assert plane.ca is not None and plane.ca.authority.trust_domain == domain
        finally:
            plane.close()


def test_a_bad_plugged_in_ca_starts_nothing(tmp_path: Path) -> None:
    bad = write_cacerts(tmp_path / "cacerts", wrong_key=True)
    with pytest.raises(StartError, match=r"the CA cannot start: .*ca-key.pem: the key does not"):
        ControlPlane.open(
            tmp_path / "d",
            "127.0.0.1:0",
            tmp_path / "c.yaml",
            "127.0.0.1:0",
            CaOptions(cacerts=bad),
        )
    assert not (tmp_path / "c.yaml").exists()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pilotfish", "controlplane", "--data-dir", str(tmp_path / "d")),
            *("--listen", "127.0.0.1:0", "--xds-port", "0", "--cacerts", str(bad)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PILOTFISH_CONFIG": str(tmp_path / "c.yaml"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert f"error: the CA cannot start: {bad / 'ca-key.pem'}: the key does not match" in (
        done.stderr
    )
    assert not (tmp_path / "c.yaml").exists()
