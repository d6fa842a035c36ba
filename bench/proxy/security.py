"""What the mutual-TLS and authorization rows add to a hop.

Certificates: one mesh CA per run (pilotfish.ca's self-signed root, as the
control plane makes on first start), and a workload certificate for each side
of a chain, RSA 2048 as istio-agent's: the SPIFFE ID as URI SAN, as the CA
signs them, plus a DNS name, because nginx's `proxy_ssl_verify` checks host
names only. nginx and pilotfish use the same files, so both do the same
cryptography.

pilotfish's TLS contexts are the control plane's own (translate/mtls.py:
Istio's ciphers, ALPN, minimum TLS 1.2, the inbound side requiring a client
certificate, the outbound one checking the server's SPIFFE ID), pointing at
the files through istio-agent's file-backed SDS names (`file-cert:`,
`file-root:`) instead of the SDS secrets `default` and `ROOTCA`.

Handshakes are counted where the TLS connections end, on the chain's inbound
hop: pilotfish's `listener.<address>.ssl.handshake` (Envoy's name), nginx's
accepted connections (stub_status) on its TLS listener.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf.json_format import MessageToDict
from procs import get

from pilotfish.ca.cacerts import self_signed
from pilotfish.ca.workload import key_pem, new_key, pem
from pilotfish.translate.mtls import downstream_tls, transport_socket, upstream_tls

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "bench"
CERT_TTL = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    name: str  # inbound or outbound
    cert: Path  # leaf then the root: the chain a workload presents
    key: Path

    @property
    def spiffe(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{self.name}"

    @property
    def dns(self) -> str:
        return f"{self.name}.{NAMESPACE}.svc.cluster.local"


@dataclass(frozen=True)
class MeshCerts:
    root: Path
    inbound: Identity
    outbound: Identity


def mesh_certs(workdir: Path) -> MeshCerts:
    """The run's CA and the two workload certificates, written under workdir."""
    ca = self_signed(workdir / "mesh-ca", TRUST_DOMAIN)
    root = workdir / "root-cert.pem"
    root.write_text(ca.root_pem())
    ids = []
    for name in ("inbound", "outbound"):
        key = new_key()
        ident = Identity(name, workdir / f"{name}-cert.pem", workdir / f"{name}-key.pem")
        now = datetime.datetime.now(datetime.UTC)
        san = [x509.UniformResourceIdentifier(ident.spiffe), x509.DNSName(ident.dns)]
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + CERT_TTL)
            .add_extension(x509.SubjectAlternativeName(san), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .sign(ca.key, hashes.SHA256())
        )
        ident.cert.write_text(pem(leaf) + ca.root_pem())
        ident.key.write_bytes(key_pem(key))
        ident.key.chmod(0o600)
        ids.append(ident)
    return MeshCerts(root, ids[0], ids[1])


@dataclass(frozen=True)
class Security:
    """What a pilotfish hop's bootstrap adds (see targets.pilotfish_bootstrap)."""

    listener_tls: dict[str, Any] | None = None  # a TransportSocket, as JSON
    cluster_tls: dict[str, Any] | None = None
    http_filters: list[dict[str, Any]] = field(default_factory=list)  # before CORS


def _json(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(MessageToDict(message)))
    return out


def inbound_tls(certs: MeshCerts) -> dict[str, Any]:
    """The inbound chain's TLS as translation writes it, on the run's files."""
    context = downstream_tls()
    common = context.common_tls_context
    common.tls_certificate_sds_secret_configs[0].name = _file_cert(certs.inbound)
    common.combined_validation_context.validation_context_sds_secret_config.name = (
        f"file-root:{certs.root}"
    )
    return _json(transport_socket(context))


def outbound_tls(certs: MeshCerts) -> dict[str, Any]:
    """A cluster's auto-mTLS context, as translation writes it, on the run's files."""
    context = upstream_tls(
        "outbound_.80_._.inbound.bench.svc.cluster.local", [certs.inbound.spiffe]
    )
    common = context.common_tls_context
    common.tls_certificate_sds_secret_configs[0].name = _file_cert(certs.outbound)
    common.combined_validation_context.validation_context_sds_secret_config.name = (
        f"file-root:{certs.root}"
    )
    return _json(transport_socket(context))


def _file_cert(ident: Identity) -> str:
    return f"file-cert:{ident.cert}~{ident.key}"


# --- nginx ----------------------------------------------------------------------

NGINX_PROTOCOLS = "TLSv1.2 TLSv1.3"


def nginx_inbound_server(certs: MeshCerts) -> str:
    """What the chain's inbound nginx adds to its server: TLS with the
    workload certificate, a client certificate required and verified against
    the mesh root."""
    return f"""\
        ssl_certificate {certs.inbound.cert};
        ssl_certificate_key {certs.inbound.key};
        ssl_client_certificate {certs.root};
        ssl_verify_client on;
        ssl_protocols {NGINX_PROTOCOLS};
        ssl_session_cache shared:inbound:1m;"""


def nginx_status_server(status_port: int) -> str:
    """A plaintext server for stub_status, which counts accepted connections."""
    return f"""\
    server {{
        listen 127.0.0.1:{status_port};
        location = /status {{ stub_status; }}
    }}"""


def nginx_outbound_location(certs: MeshCerts) -> str:
    """What the outbound nginx adds to its location: TLS to the next hop with
    its client certificate, the server's checked against the mesh root and
    its name, sessions reused."""
    return f"""\
            proxy_ssl_certificate {certs.outbound.cert};
            proxy_ssl_certificate_key {certs.outbound.key};
            proxy_ssl_trusted_certificate {certs.root};
            proxy_ssl_verify on;
            proxy_ssl_name {certs.inbound.dns};
            proxy_ssl_server_name on;
            proxy_ssl_protocols {NGINX_PROTOCOLS};
            proxy_ssl_session_reuse on;"""


class NginxHandshakes:
    """TLS handshakes on the inbound nginx: the connections its stub_status
    counts as accepted, less the ones this reader made to ask."""

    def __init__(self, status_port: int) -> None:
        self.status_port = status_port
        self.reads = 0

    def __call__(self) -> int:
        body = get(self.status_port, "/status").body.decode()
        self.reads += 1
        found = re.search(r"server accepts handled requests\s+(\d+)", body)
        if found is None:
            raise ValueError(f"no accepts count in stub_status: {body!r}")
        return int(found.group(1)) - self.reads


class PilotfishHandshakes:
    """TLS handshakes on a pilotfish hop's listeners, from its /stats."""

    def __init__(self, admin_port: int) -> None:
        self.admin_port = admin_port

    def __call__(self) -> int:
        body = get(self.admin_port, "/stats").body.decode()
        found = re.findall(r"^listener\.[^:\s]+\.ssl\.handshake: (\d+)$", body, re.MULTILINE)
        if not found:
            raise ValueError("no listener.*.ssl.handshake in /stats")
        return sum(int(n) for n in found)
