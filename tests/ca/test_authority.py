"""The CA's signing side, without sockets: the self-signed root, CSR checks,
lifetimes, and a plugged-in CA's files checked at load (each bad one named)."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.ca.pki import write_cacerts

from pilotfish.ca.authority import CsrError, requested_identity
from pilotfish.ca.cacerts import CaError, load_cacerts, self_signed
from pilotfish.ca.identity import IdentityError, SpiffeId
from pilotfish.ca.workload import csr_for, new_key, renew_at

ID = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")


@pytest.fixture(scope="module")
def workload_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def leaf_of(chain: list[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain[0].encode())


def csr(key: rsa.RSAPrivateKey, *names: x509.GeneralName, ca: bool = False) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    signed = builder.sign(key, hashes.SHA256())
    return signed.public_bytes(serialization.Encoding.PEM).decode()


def test_the_self_signed_root_is_made_once_with_a_private_key_file(ca_dir: Path) -> None:
    first = self_signed(ca_dir, "cluster.local")
    key_file = ca_dir / "ca" / "ca-key.pem"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    os.chmod(key_file, 0o644)
    again = self_signed(ca_dir, "cluster.local")
    assert again.root.serial_number == first.root.serial_number
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert isinstance(first.key, rsa.RSAPrivateKey) and first.key.key_size == 2048
    assert first.root.subject.rfc4514_string() == "O=cluster.local"
    assert first.root.not_valid_after_utc - first.root.not_valid_before_utc == (
        datetime.timedelta(days=3650)
    )


def test_a_workload_certificate_names_the_identity_and_nothing_else(
    ca_dir: Path, workload_key: rsa.RSAPrivateKey
) -> None:
    ca = self_signed(ca_dir, "cluster.local")
    chain = ca.sign(csr_for(workload_key, str(ID)), ID)
    leaf = leaf_of(chain)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(str(ID))]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(hours=24)
    assert chain[-1] == ca.root_pem() and len(chain) == 2
    leaf.verify_directly_issued_by(ca.root)


def test_requested_lifetimes_are_honoured_up_to_the_maximum(
    ca_dir: Path, workload_key: rsa.RSAPrivateKey
) -> None:
    ca = self_signed(ca_dir, "cluster.local")
    request = csr_for(workload_key, str(ID))
    leaf = leaf_of(ca.sign(request, ID, requested_seconds=5))
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(seconds=5)
    with pytest.raises(CsrError, match="requested TTL 7776001s is greater than the max allowed"):
        ca.sign(request, ID, requested_seconds=90 * 86400 + 1)


def test_the_certificate_is_issued_in_the_ca_trust_domain(
    tmp_path: Path, workload_key: rsa.RSAPrivateKey
) -> None:
    ca = self_signed(tmp_path, "example.org")
    chain = ca.sign(csr_for(workload_key, str(ID)), ID)  # the CSR says cluster.local
    san = leaf_of(chain).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/shop/sa/web"
    ]


@pytest.mark.parametrize(
    ("names", "refused"),
    [
        (
            [x509.UniformResourceIdentifier(str(ID)), x509.DNSName("evil.example")],
            "the CSR asks for names besides spiffe://cluster.local/ns/shop/sa/web: "
            "DNS:evil.example",
        ),
        (
            [
                x509.UniformResourceIdentifier(str(ID)),
                x509.UniformResourceIdentifier("spiffe://cluster.local/ns/bank/sa/vault"),
            ],
            "URI:spiffe://cluster.local/ns/bank/sa/vault",
        ),
        ([x509.DNSName("web.shop")], "the CSR names no SPIFFE ID"),
        ([], "the CSR names no SPIFFE ID"),
    ],
)
def test_a_csr_asking_for_more_than_its_identity_is_refused_by_name(
    ca_dir: Path, workload_key: rsa.RSAPrivateKey, names: list[x509.GeneralName], refused: str
) -> None:
    ca = self_signed(ca_dir, "cluster.local")
    with pytest.raises(CsrError, match=refused):
        ca.sign(csr(workload_key, *names), ID)


def test_a_csr_for_another_identity_than_the_allowed_one_is_refused(
    ca_dir: Path, workload_key: rsa.RSAPrivateKey
) -> None:
    ca = self_signed(ca_dir, "cluster.local")
    other = csr_for(workload_key, "spiffe://cluster.local/ns/bank/sa/vault")
    with pytest.raises(CsrError, match=r"names besides spiffe://cluster\.local/ns/shop/sa/web"):
        ca.sign(other, ID)


def test_a_csr_asking_to_be_a_ca_is_refused(ca_dir: Path, workload_key: rsa.RSAPrivateKey) -> None:
    ca = self_signed(ca_dir, "cluster.local")
    request = csr(workload_key, x509.UniformResourceIdentifier(str(ID)), ca=True)
    with pytest.raises(CsrError, match=r"asks for a CA certificate \(basicConstraints CA:TRUE\)"):
        ca.sign(request, ID)


def test_a_csr_with_a_bad_signature_is_refused(
    ca_dir: Path, workload_key: rsa.RSAPrivateKey
) -> None:
    ca = self_signed(ca_dir, "cluster.local")
    der = x509.load_pem_x509_csr(csr_for(workload_key, str(ID)).encode()).public_bytes(
        serialization.Encoding.DER
    )
    broken = der[:-1] + bytes([der[-1] ^ 0x01])  # the last byte is the signature's
    tampered = x509.load_der_x509_csr(broken).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CsrError, match="the CSR's signature is not valid"):
        ca.sign(tampered, ID)
    with pytest.raises(CsrError, match="not a PEM certificate request"):
        ca.sign("-----BEGIN CERTIFICATE REQUEST-----\nnope\n", ID)


def test_a_small_rsa_key_is_refused(ca_dir: Path) -> None:
    ca = self_signed(ca_dir, "cluster.local")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CsrError, match="RSA 1024; at least 2048 bits"):
        ca.sign(csr_for(small, str(ID)), ID)


def test_requested_identity_reads_the_uri_san(workload_key: rsa.RSAPrivateKey) -> None:
    assert requested_identity(csr_for(workload_key, str(ID))) == ID
    with pytest.raises(CsrError, match="is not of the form spiffe://DOMAIN/ns/NS/sa/SA"):
        requested_identity(csr_for(workload_key, "spiffe://cluster.local/workload/x"))
    with pytest.raises(IdentityError):
        SpiffeId.parse("https://cluster.local/ns/a/sa/b")


def test_renewal_is_due_at_half_life_with_a_little_jitter(
    ca_dir: Path, workload_key: rsa.RSAPrivateKey
) -> None:
    ca = self_signed(ca_dir, "cluster.local")
    leaf = leaf_of(ca.sign(csr_for(workload_key, str(ID)), ID, requested_seconds=1000))
    start = leaf.not_valid_before_utc
    offsets = {(renew_at(leaf) - start).total_seconds() for _ in range(50)}
    assert all(490 <= o <= 510 for o in offsets) and len(offsets) > 1


# -- a plugged-in CA --------------------------------------------------------------------


def test_a_plugged_in_ca_signs_under_the_company_root(
    tmp_path: Path, workload_key: rsa.RSAPrivateKey
) -> None:
    ca = load_cacerts(write_cacerts(tmp_path / "cacerts"), "cluster.local")
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    chain = ca.sign(csr_for(workload_key, str(ID)), ID)
    assert len(chain) == 3  # leaf, the mesh CA, the company root
    (tmp_path / "root.pem").write_text(chain[2])
    (tmp_path / "chain.pem").write_text(chain[1])
    (tmp_path / "leaf.pem").write_text(chain[0])
    done = subprocess.run(
        [
            *("openssl", "verify", "-CAfile", str(tmp_path / "root.pem")),
            *("-untrusted", str(tmp_path / "chain.pem"), str(tmp_path / "leaf.pem")),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("breakage", "file", "problem"),
    [
        (
            {"wrong_key": True},
            "ca-key.pem",
            "the key does not match the certificate in ca-cert.pem",
        ),
        ({"intermediate_is_ca": False}, "ca-cert.pem", "not a CA certificate"),
        ({"foreign_root": True}, "ca-cert.pem", "does not chain to root-cert.pem"),
    ],
)
def test_a_bad_plugged_in_ca_is_refused_naming_the_file(
    tmp_path: Path, breakage: dict[str, bool], file: str, problem: str
) -> None:
    directory = write_cacerts(tmp_path / "cacerts", **breakage)
    with pytest.raises(CaError) as refused:
        load_cacerts(directory, "cluster.local")
    assert str(refused.value).startswith(f"{directory / file}: {problem}")


def test_an_expired_plugged_in_ca_is_refused(tmp_path: Path) -> None:
    directory = write_cacerts(tmp_path / "cacerts", intermediate_days=1)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    with pytest.raises(CaError, match=r"ca-cert.pem: the certificate expired on "):
        load_cacerts(directory, "cluster.local", now=later)


@pytest.mark.parametrize("file", ["ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"])
def test_a_corrupt_or_missing_cacerts_file_is_named(tmp_path: Path, file: str) -> None:
    directory = write_cacerts(tmp_path / "cacerts")
    (directory / file).write_text("-----BEGIN GARBAGE-----\n")
    with pytest.raises(CaError, match=rf"{file}: not (a PEM certificate|an unencrypted PEM)"):
        load_cacerts(directory, "cluster.local")
    (directory / file).unlink()
    with pytest.raises(CaError, match=rf"{file}: missing \(a CA directory holds ca-cert.pem"):
        load_cacerts(directory, "cluster.local")
