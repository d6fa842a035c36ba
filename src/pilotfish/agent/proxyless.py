"""A proxyless gRPC workload's side of the mesh, as Istio's `grpc-agent`
gives it: gRPC's xDS bootstrap, and the certificate files that bootstrap's
`file_watcher` provider reads.

The bootstrap names the ADS server (over TLS with gRPC's `tls` channel
credentials when given the mesh root, then with the service account token as
gRPC's `jwt_token_file` call credentials, gRFC A97, so that a workload on
another host is let in; plaintext on the control plane's host), an Istio-style
node (type `proxyless`, metadata GENERATOR grpc, NAMESPACE, LABELS,
SERVICE_ACCOUNT, WORKLOAD_NAME), the certificate provider instance `default`
(the name translation's TLS contexts use), and Istio's server listener
template, so that `grpc.server(..., xds=True)` asks for its Listener.

The key is made here and never leaves the host: WorkloadCertificates (the
sidecar's own CSR client, renewing at half-life) gets it signed, and every
issue is written to the three files, each replaced atomically so gRPC never
reads half a file; the key is 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilotfish.agent.bootstrap import SidecarIdentity, XdsServer, node_id
from pilotfish.ca.workload import key_pem, pem
from pilotfish.config import write_private
from pilotfish.objects import Obj
from pilotfish.proxy.sds import Issued
from pilotfish.translate.proxyless import PROVIDER_INSTANCE, SERVER_LISTENER_TEMPLATE

CERT_CHAIN, KEY, ROOT_CERT = "cert-chain.pem", "key.pem", "root-cert.pem"  # istio-agent's names
BOOTSTRAP = "bootstrap.json"
# gRPC reads the bootstrap's `call_creds` (gRFC A97) only with this set to true.
CALL_CREDS_ENV = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"
# Istio's annotation choosing what is injected beside an application; a
# Workload whose value lists `grpc-agent` runs proxyless: no sidecar, this
# agent's bootstrap and certificates instead.
INJECT_TEMPLATES = "inject.istio.io/templates"
GRPC_AGENT = "grpc-agent"


@dataclass(frozen=True)
class ProxylessWorkload:
    name: str
    namespace: str
    service_account: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    workload: str = ""
    address: str = "127.0.0.1"

    @property
    def identity(self) -> SidecarIdentity:
        return SidecarIdentity(
            instance=self.name,
            namespace=self.namespace,
            workload=self.workload or self.name,
            labels=self.labels,
            service_account=self.service_account,
            app_containers="",
            address=self.address,
        )


def is_proxyless(workload: Obj) -> bool:
    annotations = (workload.get("metadata") or {}).get("annotations") or {}
    templates = str(annotations.get(INJECT_TEMPLATES) or "")
    return GRPC_AGENT in (t.strip() for t in templates.split(","))


def grpc_agent_args(
    who: SidecarIdentity, xds: XdsServer, directory: Path, token_file: Path
) -> list[str]:
    """`pilotfish grpc-agent`'s arguments for an instance the node agent runs."""
    args = [GRPC_AGENT, who.instance, "--namespace", who.namespace, "--workload", who.workload]
    args += ["--service-account", who.service_account, "--address", who.address]
    args += ["--xds", f"{xds.host}:{xds.port}", "--dir", str(directory)]
    args += ["--ca-token-file", str(token_file)]
    args += ["--xds-root-cert", xds.root_cert] if xds.root_cert else []
    for key, value in sorted(who.labels.items()):
        args += ["--label", f"{key}={value}"]
    return args


def grpc_bootstrap(
    who: ProxylessWorkload,
    xds: XdsServer,
    cert_dir: Path,
    refresh: str,
    token_file: Path | None = None,
) -> dict[str, Any]:
    """`refresh`: how often gRPC rereads the files, a JSON Duration ("900s");
    `token_file`: the service account token gRPC presents to xDS over TLS."""
    identity = who.identity
    server: dict[str, Any] = {
        "server_uri": f"{xds.host}:{xds.port}",
        "channel_creds": [_channel_creds(xds)],
        "server_features": ["xds_v3"],
    }
    if xds.root_cert and token_file is not None:
        # gRPC sends call credentials over secure channels only: none in clear.
        jwt = {"jwt_token_file": str(token_file)}
        server["call_creds"] = [{"type": "jwt_token_file", "config": jwt}]
    return {
        "xds_servers": [server],
        "node": {
            "id": node_id(identity, "proxyless"),
            "metadata": {
                "GENERATOR": "grpc",
                "NAMESPACE": identity.namespace,
                "NAME": identity.instance,
                "WORKLOAD_NAME": identity.workload,
                "LABELS": dict(identity.labels),
                "SERVICE_ACCOUNT": identity.service_account,
                "INSTANCE_IPS": identity.address,
            },
            "locality": {},
        },
        "certificate_providers": {
            PROVIDER_INSTANCE: {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": str(cert_dir / CERT_CHAIN),
                    "private_key_file": str(cert_dir / KEY),
                    "ca_certificate_file": str(cert_dir / ROOT_CERT),
                    "refresh_interval": refresh,
                },
            }
        },
        "server_listener_resource_name_template": SERVER_LISTENER_TEMPLATE,
    }


def _channel_creds(xds: XdsServer) -> dict[str, Any]:
    """gRPC's `tls` channel credentials (gRFC A65) verifying the control
    plane against the mesh root, when the agent has it; else plaintext."""
    if not xds.root_cert:
        return {"type": "insecure"}
    return {"type": "tls", "config": {"ca_certificate_file": xds.root_cert}}


def write_bootstrap(path: Path, bootstrap: dict[str, Any]) -> None:
    write_private(path, json.dumps(bootstrap, indent=2) + "\n")


def write_certificates(cert_dir: Path, issued: Issued) -> None:
    """The chain without its root (as istio-agent writes cert-chain.pem), the
    key (0600), the root; the key first, so a reader that sees the new
    certificate finds its key already there."""
    write_private(cert_dir / KEY, key_pem(issued.key).decode())
    chain = issued.chain[:-1] or issued.chain
    _write_public(cert_dir / CERT_CHAIN, "".join(pem(c) for c in chain))
    _write_public(cert_dir / ROOT_CERT, pem(issued.root))


def _write_public(path: Path, text: str) -> None:
    """Certificates are public: write_private's atomic replace, then 0644."""
    write_private(path, text)
    os.chmod(path, 0o644)
