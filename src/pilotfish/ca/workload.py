"""The workload's side of the CA, pure: a key made where the workload runs,
a CSR for its SPIFFE ID, when to renew what came back, and how to describe a
certificate (for /config_dump and `proxy-config secret`). The sidecar
imports it, so it imports nothing of the control plane's."""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

RSA_BITS = 2048  # istio-agent's default workload key (RSA 2048, unless ECC is asked for)
GRACE_RATIO = 0.5  # renew at half-life, as Istio's SECRET_GRACE_PERIOD_RATIO
GRACE_JITTER = 0.01  # Istio's SECRET_GRACE_PERIOD_RATIO_JITTER
WorkloadKey = rsa.RSAPrivateKey


def new_key() -> WorkloadKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def key_pem(key: WorkloadKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_for(key: WorkloadKey, spiffe_id: str) -> str:
    """A PEM CSR with the SPIFFE ID as its one URI SAN, signed by `key`."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def renew_at(cert: x509.Certificate, rng: random.Random | None = None) -> datetime.datetime:
    """When to renew: half-way through the certificate's life, give or take
    1% of it, so sidecars started together do not all renew together."""
    ratio = GRACE_RATIO + (rng or random).uniform(-GRACE_JITTER, GRACE_JITTER)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * ratio


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_chain(pems: list[str]) -> list[x509.Certificate]:
    return [c for text in pems for c in x509.load_pem_x509_certificates(text.encode())]


@dataclass(frozen=True)
class CertDetails:
    """What `istioctl proxy-config secret` shows of one certificate."""

    serial: str  # hex, lower case, as Go's big.Int.Text(16)
    not_before: datetime.datetime
    not_after: datetime.datetime
    uri_sans: tuple[str, ...]
    subject: str
    issuer: str

    def valid(self, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        return self.not_before <= now < self.not_after

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertDetails:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        except x509.ExtensionNotFound:
            uris = ()
        return cls(
            serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            uri_sans=uris,
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
        )
