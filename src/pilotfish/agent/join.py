"""A node agent joining the mesh as a kubelet joins with kubeadm's TLS
bootstrap: no admin token on the workload host.

1. Discovery: cluster-info (kube-public) is read from the control plane
   without verifying its certificate (nothing is trusted yet), and its CA is
   accepted only if the SHA-256 of its public key is the pin the user gave
   (`--ca-cert-hash sha256:...`); from then on every call verifies the
   control plane against that CA.
2. TLS bootstrap: the agent makes its key here (EC P-256, 0600; it never
   leaves the host), sends a CSR for CN=system:node:NAME, O=system:nodes with
   the bootstrap token, and keeps the certificate it gets back.
3. From then on it is "system:node:NAME": its client certificate is its
   credential, and it renews it with that certificate before it expires.

Files, in the agent's state directory under pki/ (the kubelet's
/var/lib/kubelet/pki): ca.crt, node-client.key, node-client.crt.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pilotfish.api.errors import ApiError
from pilotfish.ca.pin import ca_cert_hash
from pilotfish.client import Client
from pilotfish.config import private_dir, write_private
from pilotfish.objects import Obj

SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
RENEW_AT = (0.7, 0.9)  # of the certificate's life, jittered, as the kubelet rotates


class JoinError(Exception):
    """Why the agent could not join; the message says what to check."""


@dataclass(frozen=True)
class NodeCredentials:
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "node-client.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "node-client.crt"

    def client(self, servers: str) -> Client:
        """A client that proves it is this node with its certificate, no token."""
        return Client(
            servers, None, ca_file=str(self.ca_file), cert=(str(self.cert_file), str(self.key_file))
        )

    def certificate(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError):
            return None


def discover(servers: str, pin: str) -> str:
    """The CA's PEM from the first control plane that answers cluster-info,
    if its public key hashes to `pin`; JoinError otherwise."""
    unverified = Client(servers, None, insecure=True)
    try:
        info = unverified.cluster_info()
    except ApiError as e:
        raise JoinError(f"cannot read cluster-info from {servers}: {e.message}") from e
    pem = _cluster_ca(info)
    try:
        found = ca_cert_hash(x509.load_pem_x509_certificate(pem.encode()))
    except ValueError as e:
        raise JoinError(f"cluster-info's CA is not a PEM certificate: {e}") from e
    if not hmac.compare_digest(found, pin):
        raise JoinError(
            f'cluster CA found in cluster-info is not the one pinned: its public key is "{found}", '
            f'the pin (--ca-cert-hash) is "{pin}"'
        )
    return pem


def _cluster_ca(info: Obj) -> str:
    try:
        kubeconfig: Any = yaml.safe_load(info["data"]["kubeconfig"])
        data = kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
        return base64.b64decode(data).decode()
    except (KeyError, IndexError, TypeError, ValueError, yaml.YAMLError) as e:
        raise JoinError(f"cluster-info holds no CA (data.kubeconfig): {e}") from e


def csr_body(node: str, key: ec.EllipticCurvePrivateKey) -> Obj:
    """A CertificateSigningRequest as the kubelet sends it for its client certificate."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    request = csr.public_bytes(serialization.Encoding.PEM)
    return {
        "kind": "CertificateSigningRequest",
        "apiVersion": "certificates.k8s.io/v1",
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": base64.b64encode(request).decode(),
            "signerName": SIGNER,
            "usages": ["digital signature", "client auth"],
        },
    }


def request_certificate(client: Client, node: str, credentials: NodeCredentials) -> None:
    """A new key and its certificate for `node`, written 0600; the old pair
    stays in place until both new files are written."""
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        answer = client.create_csr(csr_body(node, key))
    except ApiError as e:
        raise JoinError(f"the control plane refused the node's CSR: {e.message}") from e
    encoded = (answer.get("status") or {}).get("certificate")
    if not isinstance(encoded, str) or not encoded:
        raise JoinError("the control plane's answer to the CSR has no status.certificate")
    key_text = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    write_private(credentials.key_file.with_suffix(".key.new"), key_text)
    write_private(credentials.cert_file, base64.b64decode(encoded).decode())
    credentials.key_file.with_suffix(".key.new").replace(credentials.key_file)


def join(state_dir: Path, servers: str, token: str, pin: str, node: str) -> NodeCredentials:
    """The node's credentials: kept from an earlier join if its certificate
    is still good for `node` (a restarted agent needs no token), else made now."""
    credentials = NodeCredentials(private_dir(state_dir / "pki"))
    cert = credentials.certificate()
    now = datetime.datetime.now(datetime.UTC)
    if cert is not None and credentials.ca_file.exists() and _good_for(cert, node, now):
        return credentials
    if not token:
        raise JoinError("--join needs a bootstrap token (--token ID.SECRET) to join the first time")
    write_private(credentials.ca_file, discover(servers, pin))
    bootstrap = Client(servers, token, ca_file=str(credentials.ca_file))
    request_certificate(bootstrap, node, credentials)
    return credentials


def _good_for(cert: x509.Certificate, node: str, now: datetime.datetime) -> bool:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (
        bool(names) and names[0].value == f"system:node:{node}" and (now < cert.not_valid_after_utc)
    )


def renew_at(cert: x509.Certificate, rng: random.Random | None = None) -> datetime.datetime:
    """70-90% into the certificate's life, as the kubelet's certificate manager."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * (rng or random).uniform(*RENEW_AT)
