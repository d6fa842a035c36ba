"""Whether a user's certificate and key (a Secret a credentialName names)
can serve: one check for the proxy, which refuses such a Secret over SDS,
and for analysis, which warns about it when it is applied.

ValueError says what is wrong, never what the Secret holds.
"""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def check_certificate_and_key(
    chain: bytes, key: bytes, now: datetime.datetime | None = None
) -> None:
    """A PEM chain whose first certificate is valid now, and the PEM key of it."""
    certificates = check_bundle(chain, "certificate_chain")
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise ValueError("private_key: not an unencrypted PEM private key") from None
    if _spki(private.public_key()) != _spki(certificates[0].public_key()):
        raise ValueError("private_key does not match the certificate")
    _check_period(certificates[0], now or datetime.datetime.now(datetime.UTC))


def check_bundle(data: bytes, field: str = "trusted_ca") -> list[x509.Certificate]:
    """At least one PEM certificate."""
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{field}: not a PEM certificate") from None
    if not found:
        raise ValueError(f"{field}: no certificate")
    return found


def _spki(key: Any) -> bytes:
    """A public key's DER SubjectPublicKeyInfo, to compare keys of any type."""
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_period(cert: x509.Certificate, now: datetime.datetime) -> None:
    serial = f"serial {cert.serial_number:x}"
    if now >= cert.not_valid_after_utc:
        raise ValueError(
            f"the certificate ({serial}) expired on {cert.not_valid_after_utc.isoformat()}"
        )
    if now < cert.not_valid_before_utc:
        raise ValueError(
            f"the certificate ({serial}) is not valid before "
            f"{cert.not_valid_before_utc.isoformat()}"
        )
