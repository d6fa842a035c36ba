"""The signing side of the CA: its key and certificates, loaded and checked
at start, and workload certificates signed from CSRs.

Two sources, as istiod's: a self-signed root made on first start and kept in
the data directory (RSA 2048 and 10 years, Istio's defaults for its
self-signed root; the key file is 0600), or a "plugged-in" CA from a
directory with Istio's `cacerts` files (ca-cert.pem, ca-key.pem,
root-cert.pem, cert-chain.pem), so a company's PKI can sit above the mesh.
Either is checked the same way before anything starts: the key matches the
certificate, the certificate is a CA, every certificate is in its validity
period, and the signing certificate chains to the root.

Whom to sign for is not decided here (authorize.py): `sign` takes the
identity the caller was found to hold, and the CSR must ask for no more.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pilotfish.ca.identity import SpiffeId
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
DEFAULT_WORKLOAD_TTL = datetime.timedelta(hours=24)  # Istio's DEFAULT_WORKLOAD_CERT_TTL
MAX_WORKLOAD_TTL = datetime.timedelta(days=90)  # Istio's MAX_WORKLOAD_CERT_TTL
RSA_BITS = 2048
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CaError(Exception):
    """The CA's files cannot be used; the message names the file and the problem."""


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
        leaf = _leaf(
            csr, identity.in_domain(self.trust_domain), self.cert, self.key, now, not_after
        )
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
    csr: x509.CertificateSigningRequest,
    identity: SpiffeId,
    issuer: x509.Certificate,
    key: SigningKey,
    now: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    # An empty subject, so the SAN is critical (RFC 5280 4.2.1.6), as Istio's.
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256())


def _usage(**on: bool) -> x509.KeyUsage:
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


# -- the CA's own files -------------------------------------------------------------------


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
            _usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
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
