"""Certificates and Secrets for TLS tests: a small CA, certificates it signs
(or self-signed ones, valid or not), and `kubernetes.io/tls` Secrets as a
user applies them."""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def issue(name: str, ca: Issued | None = None, days: float = 1, ago: float = 0) -> Issued:
    """A certificate for `name` (a DNS SAN) signed by `ca`, else a self-signed
    CA; valid from `ago` days back (minus 5 minutes) for `days`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=ago)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
    return Issued(builder.sign(ca.key if ca else key, hashes.SHA256()), key)


def pem_pair(days: float = 1, ago: float = 0) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key, as PEM."""
    issued = issue("gw.example.com", days=days, ago=ago)
    return issued.cert_pem, issued.key_pem


def tls_secret(name: str, namespace: str = "istio-system", **data: bytes) -> dict[str, Any]:
    """A `kubernetes.io/tls` Secret; keyword `tls_crt` is data key `tls.crt`."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in data.items()},
    }
