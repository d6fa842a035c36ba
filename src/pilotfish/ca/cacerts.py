"""The CA's own key and certificates, loaded and checked at start.

Two sources, as istiod's: a self-signed root made on first start and kept in
the data directory (RSA 2048 and 10 years, Istio's defaults for its
self-signed root; the key file is 0600), or a "plugged-in" CA from a
directory with Istio's `cacerts` files (ca-cert.pem, ca-key.pem,
root-cert.pem, cert-chain.pem), so a company's PKI can sit above the mesh.
Either is checked the same way before anything starts: the key matches the
certificate, the certificate is a CA, every certificate is in its validity
period, and the signing certificate chains to the root.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pilotfish.ca.authority import RSA_BITS, CertificateAuthority, SigningKey, key_usage
from pilotfish.ca.workload import pem
from pilotfish.config import write_private

CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN = (
    "ca-cert.pem",
    "ca-key.pem",
    "root-cert.pem",
    "cert-chain.pem",
)
CACERTS_FILES = (CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN)
SELF_SIGNED_DIR = "ca"  # under the data directory
ROOT_TTL = datetime.timedelta(days=3650)  # Istio's SELF_SIGNED_CA_CERT_TTL


class CaError(Exception):
    """The CA's files cannot be used; the message names the file and the problem."""


def self_signed(data_dir: Path, trust_domain: str) -> CertificateAuthority:
    """The root in DATA_DIR/ca, made there first if there is none."""
    directory = data_dir / SELF_SIGNED_DIR
    if not (directory / CA_KEY).exists():
        _write_root(directory, trust_domain)
    (directory / CA_KEY).chmod(0o600)  # a copy made by hand with a looser mode is tightened
    return load_cacerts(directory, trust_domain)


def _write_root(directory: Path, trust_domain: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + ROOT_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    write_private(directory / CA_KEY, key_pem)  # the key first: its presence means "made"
    for file in (CA_CERT, ROOT_CERT, CERT_CHAIN):
        write_private(directory / file, pem(cert))


def load_cacerts(
    directory: Path, trust_domain: str, now: datetime.datetime | None = None
) -> CertificateAuthority:
    """A CA from Istio's cacerts files in `directory`, checked; CaError names
    the file and what is wrong with it."""
    now = now or datetime.datetime.now(datetime.UTC)
    cert = _one_cert(directory / CA_CERT)
    key = _key(directory / CA_KEY)
    root = _one_cert(directory / ROOT_CERT)
    chain = _certs(directory / CERT_CHAIN)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CaError(f"{directory / CA_KEY}: the key does not match the certificate in {CA_CERT}")
    for path, c in [(directory / CA_CERT, cert), (directory / ROOT_CERT, root)]:
        _check_ca(path, c, now)
    for c in chain:
        _check_period(directory / CERT_CHAIN, c, now)
    between = _chain_to_root(directory, cert, chain, root)
    return CertificateAuthority(trust_domain, cert, key, between, root, source=str(directory))


def _chain_to_root(
    directory: Path, cert: x509.Certificate, chain: list[x509.Certificate], root: x509.Certificate
) -> tuple[x509.Certificate, ...]:
    """The path from the signing certificate up to (not including) the root,
    through the intermediates of cert-chain.pem."""
    path, current = [cert], cert
    candidates = [c for c in chain if c != cert and c != root]
    while not _issued_by(current, root):
        issuer = next((c for c in candidates if c not in path and _issued_by(current, c)), None)
        if issuer is None:
            raise CaError(
                f"{directory / CA_CERT}: does not chain to {ROOT_CERT}: no issuer of "
                f"{current.issuer.rfc4514_string() or '(empty name)'} with a matching signature "
                f"in {CERT_CHAIN} or {ROOT_CERT}"
            )
        path.append(issuer)
        current = issuer
    return tuple(path) if cert != root else ()


def _spki(key: object) -> bytes:
    """A public key's DER SubjectPublicKeyInfo, to compare keys of any type."""
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_ca(path: Path, cert: x509.Certificate, now: datetime.datetime) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CaError(f"{path}: not a CA certificate (basicConstraints CA:TRUE is missing)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise CaError(f"{path}: its key usage does not allow signing certificates (keyCertSign)")
    _check_period(path, cert, now)


def _check_period(path: Path, cert: x509.Certificate, now: datetime.datetime) -> None:
    if now >= cert.not_valid_after_utc:
        raise CaError(f"{path}: the certificate expired on {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc:
        raise CaError(
            f"{path}: the certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise CaError(f"{path}: missing (a CA directory holds {', '.join(CACERTS_FILES)})") from e
    except OSError as e:
        raise CaError(f"{path}: cannot be read: {e.strerror or e}") from e


def _certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path))
    except ValueError as e:
        raise CaError(f"{path}: not a PEM certificate: {e}") from e
    return certs


def _one_cert(path: Path) -> x509.Certificate:
    return _certs(path)[0]


def _key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as e:
        raise CaError(f"{path}: not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CaError(f"{path}: a {type(key).__name__}; the CA signs with RSA or EC keys only")
    return key
