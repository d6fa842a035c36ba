"""The sidecar's TLS contexts without sockets: real OpenSSL handshakes over
memory BIOs between contexts made from SDS secrets, as two sidecars would
do them. The peer's SPIFFE ID is read from the verified certificate; an
unknown CA, an expired certificate and a SAN mismatch each get the reason
a user reads after `UF`; a renewal makes new contexts and leaves the old
ones working."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from pilotfish.ca.authority import CertificateAuthority
from pilotfish.ca.cacerts import self_signed
from pilotfish.ca.identity import SpiffeId
from pilotfish.ca.workload import csr_for, new_key, pem
from pilotfish.proxy.sds import WorkloadCertificates, _checked
from pilotfish.proxy.tls import (
    ISTIO_CIPHERS,
    DownstreamTls,
    TlsContexts,
    TlsSettings,
    UpstreamTls,
    check_sans,
    failure_reason,
    peer_uri_sans,
)

CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/web"
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/api"


def settings(sans: tuple[str, ...] = ()) -> TlsSettings:
    return TlsSettings(
        "default", "ROOTCA", ssl.TLSVersion.TLSv1_2, ISTIO_CIPHERS, ("istio-http/1.1",), sans
    )


SERVER = DownstreamTls(settings(), require_client_certificate=True)
CLIENT = UpstreamTls(settings((SERVER_ID,)), sni="outbound_.9080_._.api.shop.svc.cluster.local")


def holder(
    ca: CertificateAuthority, identity: str, now: datetime.datetime | None = None
) -> WorkloadCertificates:
    key = new_key()
    chain = ca.sign(csr_for(key, identity), SpiffeId.parse(identity), 3600, now=now)
    certificates = WorkloadCertificates("127.0.0.1:1", identity, Path("/nonexistent"))
    certificates.current = _checked(chain, key, None)
    return certificates


@pytest.fixture(scope="module")
def mesh_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return self_signed(tmp_path_factory.mktemp("mesh"), "cluster.local")


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[ssl.SSLObject, ...]:
    """Both sides over memory BIOs until done; the first error is raised."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_side=False, server_hostname=CLIENT.sni)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    for _ in range(20):
        for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return c, s
    raise AssertionError("the handshake did not finish")


def test_mutual_tls_handshake_and_both_peers_identities(mesh_ca: CertificateAuthority) -> None:
    client = TlsContexts(holder(mesh_ca, CLIENT_ID)).client(CLIENT)
    server = TlsContexts(holder(mesh_ca, SERVER_ID)).server(SERVER)
    assert client is not None and server is not None
    c, s = handshake(client, server)
    assert peer_uri_sans(s) == (CLIENT_ID,)  # what the callee's metrics and RBAC see
    assert peer_uri_sans(c) == (SERVER_ID,)
    assert check_sans(peer_uri_sans(c), CLIENT.settings.sans) is None
    assert c.selected_alpn_protocol() == "istio-http/1.1"
    assert c.version() in ("TLSv1.2", "TLSv1.3")


def test_no_certificate_yet_means_no_context() -> None:
    empty = WorkloadCertificates("127.0.0.1:1", CLIENT_ID, Path("/nonexistent"))
    with pytest.raises(ssl.SSLError) as caught:
        TlsContexts(empty).client(CLIENT)
    assert failure_reason(caught.value) == "TLS error: the SDS secret default is not available"
    assert TlsContexts(None).server(SERVER) is None  # the listener closes the connection


def test_file_backed_secrets_are_read_and_a_missing_file_is_named(
    mesh_ca: CertificateAuthority, tmp_path: Path
) -> None:
    root = tmp_path / "root.pem"
    root.write_text(pem(mesh_ca.root))
    simple = UpstreamTls(
        TlsSettings("", f"file-root:{root}", ssl.TLSVersion.TLSv1_2, ISTIO_CIPHERS, (), ()), "x"
    )
    client = TlsContexts(None).client(simple)  # no workload certificate needed
    server = TlsContexts(holder(mesh_ca, SERVER_ID)).server(
        DownstreamTls(settings(), require_client_certificate=False)
    )
    assert server is not None
    c, _ = handshake(client, server)
    assert peer_uri_sans(c) == (SERVER_ID,)
    gone = UpstreamTls(
        TlsSettings("", f"file-root:{tmp_path}/nope.pem", ssl.TLSVersion.TLSv1_2, (), (), ()), "x"
    )
    with pytest.raises(ssl.SSLError) as caught:
        TlsContexts(None).client(gone)
    assert failure_reason(caught.value) == (
        f"TLS error: the SDS secret file-root:{tmp_path}/nope.pem cannot be read: "
        "No such file or directory"
    )


def test_a_server_of_another_ca_is_an_unknown_ca(
    mesh_ca: CertificateAuthority, tmp_path: Path
) -> None:
    foreign = self_signed(tmp_path, "cluster.local")
    client = TlsContexts(holder(mesh_ca, CLIENT_ID)).client(CLIENT)
    server = TlsContexts(holder(foreign, SERVER_ID)).server(SERVER)
    assert client is not None and server is not None
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        handshake(client, server)
    assert failure_reason(caught.value).startswith(
        "TLS error: CERTIFICATE_VERIFY_FAILED: unknown CA"
    )


def test_an_expired_server_certificate_is_named_so(mesh_ca: CertificateAuthority) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    client = TlsContexts(holder(mesh_ca, CLIENT_ID)).client(CLIENT)
    server = TlsContexts(holder(mesh_ca, SERVER_ID, now=past)).server(SERVER)
    assert client is not None and server is not None
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        handshake(client, server)
    assert "certificate expired" in failure_reason(caught.value)


def test_a_server_with_another_identity_is_a_san_mismatch(mesh_ca: CertificateAuthority) -> None:
    client = TlsContexts(holder(mesh_ca, CLIENT_ID)).client(CLIENT)
    server = TlsContexts(holder(mesh_ca, "spiffe://cluster.local/ns/shop/sa/evil")).server(SERVER)
    assert client is not None and server is not None
    c, _ = handshake(client, server)  # the chain is fine: OpenSSL accepts it
    reason = check_sans(peer_uri_sans(c), CLIENT.settings.sans)
    assert reason == (
        "verify cert failed: SAN matcher: got spiffe://cluster.local/ns/shop/sa/evil, "
        f"expected {SERVER_ID}"
    )


def test_a_renewal_makes_new_contexts_and_the_old_ones_keep_working(
    mesh_ca: CertificateAuthority,
) -> None:
    certificates = holder(mesh_ca, SERVER_ID)
    contexts = TlsContexts(certificates)
    before = contexts.server(SERVER)
    assert before is not None and contexts.server(SERVER) is before  # cached
    renewed = holder(mesh_ca, SERVER_ID)
    assert renewed.current is not None
    certificates.current = _checked(
        [pem(c) for c in renewed.current.chain],
        renewed.current.key,
        certificates.current,
    )
    after = contexts.server(SERVER)
    assert after is not None and after is not before
    client = TlsContexts(holder(mesh_ca, CLIENT_ID)).client(CLIENT)
    assert client is not None
    for server in (before, after):
        _, s = handshake(client, server)
        assert peer_uri_sans(s) == (CLIENT_ID,)
