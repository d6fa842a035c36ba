"""The signing side of the CA: workload certificates signed from CSRs.

Whom to sign for is not decided here (authorize.py): `sign` takes the
identity the caller was found to hold, and the CSR must ask for no more.
Where the CA's own key and certificates come from is cacerts.py.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from pilotfish.ca.identity import SpiffeId
from pilotfish.ca.workload import pem

DEFAULT_WORKLOAD_TTL = datetime.timedelta(hours=24)  # Istio's DEFAULT_WORKLOAD_CERT_TTL
MAX_WORKLOAD_TTL = datetime.timedelta(days=90)  # Istio's MAX_WORKLOAD_CERT_TTL
RSA_BITS = 2048
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class CsrError(ValueError):
    """A CSR the CA will not sign; the message says which part of it."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A signing certificate and key, the certificates between it and the
    root (`chain`, the signing certificate first, the root excluded) and the
    root (the mesh's trust bundle)."""

    trust_domain: str
    cert: x509.Certificate
    key: SigningKey
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate
    default_ttl: datetime.timedelta = DEFAULT_WORKLOAD_TTL
    max_ttl: datetime.timedelta = MAX_WORKLOAD_TTL
    source: str = ""

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.trust_domain!r}, {self.source!r})"

    def root_pem(self) -> str:
        return pem(self.root)

    def sign(
        self,
        csr_pem: str,
        identity: SpiffeId,
        requested_seconds: int = 0,
        now: datetime.datetime | None = None,
    ) -> list[str]:
        """The certificate chain for `identity`, leaf first and root last (as
        IstioCertificateResponse.cert_chain); CsrError says what was refused."""
        csr = check_csr(csr_pem, identity)
        ttl = self._ttl(requested_seconds)
        now = now or datetime.datetime.now(datetime.UTC)
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        spiffe = x509.UniformResourceIdentifier(str(identity.in_domain(self.trust_domain)))
        leaf = _leaf(csr.public_key(), [spiffe], self.cert, self.key, now, not_after)
        return self._chain(leaf)

    def serving(
        self, public_key: PublicKey, names: list[x509.GeneralName], now: datetime.datetime
    ) -> list[str]:
        """A server certificate for DNS names and IP addresses (the control
        plane's own, as istiod's DNS certificate), valid for the maximum TTL."""
        not_after = min(now + self.max_ttl, self.cert.not_valid_after_utc)
        return self._chain(_leaf(public_key, names, self.cert, self.key, now, not_after))

    def client(
        self, csr: x509.CertificateSigningRequest, ttl: datetime.timedelta, now: datetime.datetime
    ) -> list[str]:
        """A client certificate with the CSR's subject (a node agent's: CN
        system:node:NAME, O system:nodes, as the kubelet's; the caller checked
        it), if the CSR is well signed."""
        if not csr.is_signature_valid:
            raise CsrError("the CSR's signature is not valid (it was not signed by its own key)")
        _check_key(csr.public_key(), "the CSR's key")
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        leaf = _leaf(
            csr.public_key(), [], self.cert, self.key, now, not_after, csr.subject, server=False
        )
        return self._chain(leaf)

    def _chain(self, leaf: x509.Certificate) -> list[str]:
        chain = [leaf, *self.chain]
        if chain[-1] != self.root:
            chain.append(self.root)
        return [pem(c) for c in chain]

    def _ttl(self, requested_seconds: int) -> datetime.timedelta:
        if requested_seconds <= 0:
            return self.default_ttl
        requested = datetime.timedelta(seconds=requested_seconds)
        if requested > self.max_ttl:
            raise CsrError(
                f"requested TTL {_seconds(requested)} is greater than the max allowed TTL "
                f"{_seconds(self.max_ttl)}"
            )
        return requested


def _seconds(delta: datetime.timedelta) -> str:
    return f"{int(delta.total_seconds())}s"


# -- CSRs ---------------------------------------------------------------------------------


def requested_identity(csr_pem: str) -> SpiffeId:
    """The SPIFFE ID a CSR asks for (its first URI SAN); CsrError if none."""
    csr = _load_csr(csr_pem)
    uris = [n for n in _requested_names(csr) if n.startswith("URI:")]
    if not uris:
        raise CsrError("the CSR names no SPIFFE ID (a URI SAN spiffe://DOMAIN/ns/NS/sa/SA)")
    try:
        return SpiffeId.parse(uris[0].removeprefix("URI:"))
    except ValueError as e:
        raise CsrError(f"the CSR's URI SAN: {e}") from e


def _load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise CsrError(f"the CSR is not a PEM certificate request: {e}") from e


def check_csr(csr_pem: str, identity: SpiffeId) -> x509.CertificateSigningRequest:
    """The CSR, if it is well signed and asks for `identity` and nothing more."""
    csr = _load_csr(csr_pem)
    if not csr.is_signature_valid:
        raise CsrError("the CSR's signature is not valid (it was not signed by its own key)")
    _check_key(csr.public_key(), "the CSR's key")
    for ext in csr.extensions:
        if isinstance(ext.value, x509.BasicConstraints) and ext.value.ca:
            raise CsrError(
                "the CSR asks for a CA certificate (basicConstraints CA:TRUE); "
                "workload certificates are never CAs"
            )
    names = _requested_names(csr)
    uris = [n for n in names if n.startswith("URI:")]
    if not uris:
        raise CsrError(f"the CSR names no SPIFFE ID (a URI SAN {identity} is needed)")
    others = [n for n in names if n != uris[0]] if _same_account(uris[0], identity) else names
    if others:
        raise CsrError(
            f"the CSR asks for names besides {identity}: {', '.join(others)} "
            f"(the caller may hold {identity} only)"
        )
    return csr


def _same_account(name: str, identity: SpiffeId) -> bool:
    """A URI SAN naming the same namespace and service account under another
    trust domain: the certificate is issued in the CA's own domain anyway."""
    try:
        return SpiffeId.parse(name.removeprefix("URI:")).account == identity.account
    except ValueError:
        return False


def _requested_names(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = []
    for name in san:
        if isinstance(name, x509.UniformResourceIdentifier):
            names.append(f"URI:{name.value}")
        elif isinstance(name, x509.DNSName):
            names.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            names.append(f"IP:{name.value}")
        elif isinstance(name, x509.RFC822Name):
            names.append(f"email:{name.value}")
        else:
            names.append(f"{type(name).__name__}:{name.value}")
    return names


def _check_key(key: object, what: str) -> None:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_BITS:
        raise CsrError(f"{what} is RSA {key.key_size}; at least {RSA_BITS} bits are needed")
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CsrError(f"{what} is {type(key).__name__}; RSA or EC keys only")


def _leaf(
    public_key: CertificatePublicKeyTypes,  # RSA or EC: check_csr or the caller made sure
    names: list[x509.GeneralName],
    issuer: x509.Certificate,
    key: SigningKey,
    now: datetime.datetime,
    not_after: datetime.datetime,
    subject: x509.Name | None = None,
    *,
    server: bool = True,
) -> x509.Certificate:
    # An empty subject, so the SAN is critical (RFC 5280 4.2.1.6), as Istio's;
    # a node's client certificate has a subject and no SAN, as the kubelet's.
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if server
                else [ExtendedKeyUsageOID.CLIENT_AUTH]  # a node's: a client only
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(key, hashes.SHA256())


def key_usage(**on: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    return x509.KeyUsage(**{**flags, **on})
