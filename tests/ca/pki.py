"""A company PKI for tests: a root, an intermediate under it, written as
Istio's cacerts files, with knobs to break each of them."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.UTC)
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert(
    name: str,
    subject_key: Key,
    issuer: tuple[str, Key] | None = None,
    *,
    ca: bool = True,
    days: float = 365,
    start: datetime.datetime | None = None,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (name, subject_key)
    begin = start or NOW - datetime.timedelta(hours=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(begin)
        .not_valid_after(begin + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(k: Key) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_cacerts(
    directory: Path,
    *,
    intermediate_days: float = 365,
    intermediate_is_ca: bool = True,
    wrong_key: bool = False,
    foreign_root: bool = False,
) -> Path:
    """Root -> intermediate (the signing CA), as `istioctl`'s docs make them."""
    root_key, ca_key = key(), key()
    root = cert("Example Root CA", root_key, days=3650)
    intermediate = cert(
        "Example Mesh CA",
        ca_key,
        ("Example Root CA", root_key),
        ca=intermediate_is_ca,
        days=intermediate_days,
    )
    if foreign_root:
        root = cert("Example Root CA", key(), days=3650)  # same name, another key
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca-cert.pem").write_bytes(pem(intermediate))
    (directory / "ca-key.pem").write_bytes(key_pem(key() if wrong_key else ca_key))
    (directory / "root-cert.pem").write_bytes(pem(root))
    (directory / "cert-chain.pem").write_bytes(pem(intermediate, root))
    return directory
