"""SPIFFE identities as Istio writes them:
`spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
SCHEME = "spiffe://"
# Istio's label on a workload whose sidecar holds a mesh certificate: callers'
# auto mTLS sends TLS to it (its value "istio"), plaintext to the rest.
TLS_MODE_LABEL = "security.istio.io/tlsMode"
# Istio's default TLS 1.2 cipher suites between workloads (TLS 1.3's are fixed);
# here, not in workload.py, so the sidecar's TLS does not load cryptography.
ISTIO_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
)
# A trust domain is a DNS-ish name (SPIFFE: lowercase letters, digits, '.', '-', '_').
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


class IdentityError(ValueError):
    """Not a SPIFFE ID of Istio's shape; the message says what is wrong."""


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def account(self) -> tuple[str, str]:
        """(namespace, service account): what a caller is allowed, whatever the domain."""
        return self.namespace, self.service_account

    def in_domain(self, trust_domain: str) -> SpiffeId:
        return SpiffeId(trust_domain, self.namespace, self.service_account)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if not uri.startswith(SCHEME):
            raise IdentityError(f"{uri!r} is not a SPIFFE ID (spiffe://DOMAIN/ns/NS/sa/SA)")
        domain, _, path = uri[len(SCHEME) :].partition("/")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise IdentityError(f"{uri!r} is not of the form spiffe://DOMAIN/ns/NS/sa/SA")
        return cls.of(domain, parts[1], parts[3])

    @classmethod
    def of(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        check_trust_domain(trust_domain)
        for what, value in (("namespace", namespace), ("service account", service_account)):
            if not _SEGMENT.match(value):
                raise IdentityError(f"{what} {value!r} is not a valid name")
        return cls(trust_domain, namespace, service_account)


def check_trust_domain(domain: str) -> str:
    if not _TRUST_DOMAIN.match(domain):
        raise IdentityError(
            f"trust domain {domain!r} is not valid (lowercase letters, digits, '.', '-', '_')"
        )
    return domain
