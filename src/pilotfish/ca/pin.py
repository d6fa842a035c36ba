"""kubeadm's CA pin (`--discovery-token-ca-cert-hash`): `sha256:` and the
hex SHA-256 of a CA certificate's SubjectPublicKeyInfo (DER), so a joining
host can check the CA it is shown with no copy of it beforehand."""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PIN = re.compile(r"^sha256:([0-9a-f]{64})$")


def ca_cert_hash(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def check_pin(text: str) -> str:
    """The pin in canonical form; ValueError says what is wrong with it."""
    pin = text.strip().lower()
    if not PIN.match(pin):
        raise ValueError(
            f'invalid CA certificate hash "{text}": expected "sha256:" and 64 hex digits '
            "(the SHA-256 of the CA's Subject Public Key Info)"
        )
    return pin
