"""Secrets (SDS): the Kubernetes Secrets a `credentialName` names, as istiod serves them.

A Gateway server's or a DestinationRule's `credentialName: NAME` becomes the
SDS resource names `kubernetes://NAME` (the certificate chain and key) and
`kubernetes://NAME-cacert` (the trust bundle), which the proxy asks for. As
Istio's SecretGen:

- NAME is looked up in the proxy's own namespace; `kubernetes://NS/NAME`
  names one explicitly, and is served only when NS is the proxy's (a
  gateway reads its own namespace's Secrets, never another's; a sidecar
  likewise).
- The certificate comes from `tls.crt` and `tls.key` (a `kubernetes.io/tls`
  Secret), or Istio's generic keys `cert` and `key`.
- `NAME-cacert` is the Secret of that name's `ca.crt` (or `cacert`), else
  NAME's own `ca.crt`.

A name that resolves to nothing is left out of the response, as istiod
leaves it out: the proxy keeps waiting for it. Contents are never checked or
logged here: the proxy checks them (and NACKs a bad one, naming it).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from pilotfish.model import Proxy, Snapshot
from pilotfish.objects import Obj

PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"
CERT_KEYS = (("tls.crt", "tls.key"), ("cert", "key"))
CA_KEYS = ("ca.crt", "cacert")


def credential_names(credential: str, mutual: bool) -> tuple[str, str]:
    """The SDS names of a credentialName's certificate, and of its trust
    bundle ("" when the side needs none)."""
    return f"{PREFIX}{credential}", f"{PREFIX}{credential}{CA_SUFFIX}" if mutual else ""


def translate_secrets(snapshot: Snapshot, proxy: Proxy, names: Iterable[str]) -> list[Secret]:
    """The Secrets of `names` this proxy may read and the store holds, sorted."""
    out = []
    for name in sorted(set(names)):
        secret = _secret(snapshot, proxy.namespace, name)
        if secret is not None:
            out.append(secret)
    return out


def secret_reference(name: str, namespace: str) -> tuple[str, str] | None:
    """(namespace, Secret name) an SDS name refers to, for a proxy of
    `namespace`; None if not a `kubernetes://` name or not that namespace's."""
    if not name.startswith(PREFIX):
        return None
    ns, _, rest = name[len(PREFIX) :].rpartition("/")
    if ns and ns != namespace:
        return None
    return (namespace, rest) if rest else None


def _secret(snapshot: Snapshot, namespace: str, name: str) -> Secret | None:
    ref = secret_reference(name, namespace)
    if ref is None:
        return None
    ns, secret_name = ref
    if secret_name.endswith(CA_SUFFIX):
        own = snapshot.secrets.get((ns, secret_name))
        base = snapshot.secrets.get((ns, secret_name[: -len(CA_SUFFIX)]))
        roots = secret_value(own, CA_KEYS) or secret_value(base, CA_KEYS)
        if roots is None:
            return None
        out = Secret(name=name)
        out.validation_context.trusted_ca.inline_bytes = roots
        return out
    obj = snapshot.secrets.get((ns, secret_name))
    for cert_key, key_key in CERT_KEYS:
        chain, key = secret_value(obj, (cert_key,)), secret_value(obj, (key_key,))
        if chain is not None and key is not None:
            out = Secret(name=name)
            out.tls_certificate.certificate_chain.inline_bytes = chain
            out.tls_certificate.private_key.inline_bytes = key
            return out
    return None


def secret_value(obj: Obj | None, keys: tuple[str, ...]) -> bytes | None:
    """The first of `keys` in a stored Secret's data, decoded; None if absent."""
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, dict):
        return None  # analysis reads Secrets as written: any shape
    for key in keys:
        if isinstance(data.get(key), str) and data[key]:
            try:
                return base64.b64decode(data[key], validate=True)
            except (binascii.Error, ValueError):
                return None  # validation refuses such a Secret on write
    return None
