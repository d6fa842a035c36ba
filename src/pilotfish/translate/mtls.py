"""Mutual TLS between sidecars, as Istio decides it: pure.

- Inbound: the mode of a workload's port comes from PeerAuthentication, with
  Istio's inheritance: the mesh-wide policy (root namespace `istio-system`,
  no selector), overridden by the namespace's (no selector), overridden by
  one selecting the workload, whose `portLevelMtls` overrides per port. The
  oldest policy wins at each level; UNSET inherits; the default is
  PERMISSIVE. STRICT serves a TLS filter chain only, PERMISSIVE a TLS chain
  and a plaintext one on the same port, DISABLE plaintext only.
- Outbound (auto mTLS): with no DestinationRule `tls`, a cluster does
  ISTIO_MUTUAL to endpoints labelled `security.istio.io/tlsMode: istio`
  (those with a sidecar holding a mesh certificate) and plaintext to others;
  the server must present one of the service's identities (its endpoints'
  service accounts). A DestinationRule's `tls` mode ISTIO_MUTUAL forces TLS,
  DISABLE forces plaintext; SIMPLE and MUTUAL originate TLS to the
  application's own server with the files the rule names.

The TLS contexts name the SDS secrets istio-agent serves (`default`,
`ROOTCA`), Istio's ALPN and SNI, TLS 1.2 at least and Istio's ciphers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2
from envoy.config.core.v3.config_source_pb2 import ApiVersion, ConfigSource
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.ca.identity import ISTIO_CIPHERS, TLS_MODE_LABEL
from pilotfish.model import ROOT_NAMESPACE, Endpoint, Service, Snapshot
from pilotfish.model.config import PeerAuthentication, labels_match
from pilotfish.model.types import Labels
from pilotfish.objects import Obj
from pilotfish.translate.protos import pack

TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"  # the endpoint metadata key
CERTIFICATE, ROOTCA = "default", "ROOTCA"  # istio-agent's SDS names
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_SOCKET = "envoy.transport_sockets.raw_buffer"
# What Istio's inbound TLS chain matches, and what its clients offer.
INBOUND_ALPN = ("istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2")
OUTBOUND_ALPN = ("istio-peer-exchange", "istio-http/1.1", "istio")
# An HTTP/2 cluster's offer: a peer sidecar that speaks HTTP/2 inside TLS picks
# istio-h2; one that does not picks istio-http/1.1, and gets HTTP/1.1.
OUTBOUND_H2_ALPN = ("istio-peer-exchange", "istio-h2", "istio-http/1.1", "istio")
H2_ONLY_ALPN = ("h2",)  # TLS a DestinationRule originates to an HTTP/2 cluster
# What the sidecar's inbound TLS answers: HTTP/2 to a client that offers it
# (istio-h2 between sidecars, h2 from others), else HTTP/1.1.
SERVER_ALPN = ("istio-h2", "istio-http/1.1", "h2", "http/1.1")
TCP_SERVER_ALPN = ("istio",)  # what a mesh client offers for bytes that are not HTTP


class Mode(StrEnum):
    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"
    UNSET = "UNSET"


# -- inbound: PeerAuthentication -------------------------------------------------------


def inbound_mode(snapshot: Snapshot, namespace: str, labels: Labels, port: int) -> Mode:
    """The mode of a workload's port (never UNSET)."""
    policies = snapshot.peer_authentications
    mesh = _oldest(p for p in policies if p.namespace == ROOT_NAMESPACE and p.selector is None)
    local = _oldest(p for p in policies if p.namespace == namespace and p.selector is None)
    workload = _oldest(
        p
        for p in policies
        if p.namespace == namespace and p.selector and labels_match(p.selector, labels)
    )
    mode = Mode.PERMISSIVE
    for policy in (mesh, local, workload):
        if policy is not None and policy.mode != Mode.UNSET:
            mode = Mode(policy.mode)
    if workload is not None:
        port_mode = dict(workload.port_modes).get(port, Mode.UNSET)
        if port_mode != Mode.UNSET:
            mode = Mode(port_mode)
    return mode


def _oldest(policies: Iterable[PeerAuthentication]) -> PeerAuthentication | None:
    """The snapshot keeps config oldest first: the first is Istio's winner."""
    return next(iter(policies), None)


def _sds(name: str) -> tls_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(
        name=name, sds_config=ConfigSource(ads={}, resource_api_version=ApiVersion.V3)
    )


def common_tls(
    alpn: Iterable[str],
    sans: Iterable[str] = (),
    certificate: str = CERTIFICATE,
    root: str = ROOTCA,
) -> tls_pb2.CommonTlsContext:
    """SDS names of the certificate and the trust bundle; "" for none (no
    client certificate; the system's roots)."""
    context = tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(
            tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2,
            cipher_suites=list(ISTIO_CIPHERS),
        ),
        tls_certificate_sds_secret_configs=[_sds(certificate)] if certificate else [],
        alpn_protocols=list(alpn),
    )
    combined = context.combined_validation_context
    if root:
        combined.validation_context_sds_secret_config.CopyFrom(_sds(root))
    combined.default_validation_context.SetInParent()
    for san in sans:
        combined.default_validation_context.match_subject_alt_names.append(
            string_pb2.StringMatcher(exact=san)
        )
    return context


def downstream_tls(alpn: Iterable[str] = SERVER_ALPN) -> tls_pb2.DownstreamTlsContext:
    """The inbound chain's: a client certificate is required and verified."""
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=common_tls(alpn), require_client_certificate=BoolValue(value=True)
    )


def transport_socket(
    message: tls_pb2.UpstreamTlsContext | tls_pb2.DownstreamTlsContext,
) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(message))


# -- outbound: auto mTLS ---------------------------------------------------------------


def sni(port: int, subset: str, host: str) -> str:
    """Istio's SNI for mesh traffic: `outbound_.PORT_.SUBSET_.HOST`."""
    return f"outbound_.{port}_.{subset}_.{host}"


def service_identities(snapshot: Snapshot, service: Service, port: int) -> list[str]:
    """The SPIFFE IDs the service's endpoints run as, sorted (Istio's
    ServiceAccounts of the service)."""
    return sorted(
        {
            f"spiffe://{snapshot.trust_domain}/ns/{service.namespace}/sa/{e.service_account}"
            for e in snapshot.endpoints(service, port)
            if e.service_account
        }
    )


class Outbound(StrEnum):
    """What a cluster does about TLS."""

    ORIGINATE = "ORIGINATE"  # DestinationRule SIMPLE or MUTUAL: TLS to the app's own server
    PLAINTEXT = "PLAINTEXT"  # DestinationRule DISABLE
    MUTUAL = "MUTUAL"  # DestinationRule ISTIO_MUTUAL: mesh mTLS to every endpoint
    AUTO = "AUTO"  # no DestinationRule tls: mesh mTLS to endpoints with a sidecar


@dataclass(frozen=True)
class OutboundTls:
    mode: Outbound
    sni: str = ""
    sans: tuple[str, ...] = ()  # the identities the server must present


def outbound_tls(
    snapshot: Snapshot, service: Service, port: int, subset: str, tls: Obj
) -> OutboundTls:
    """The one decision of a cluster's TLS, for sidecars and proxyless
    clients alike: the DestinationRule's `tls` mode if it sets one, else auto
    mTLS; mesh TLS expects the rule's subjectAltNames, else the service's
    identities."""
    mode = str(tls.get("mode") or "")
    if mode in ("SIMPLE", "MUTUAL"):
        return OutboundTls(Outbound.ORIGINATE)
    if mode == "DISABLE":
        return OutboundTls(Outbound.PLAINTEXT)
    sans = tuple(tls.get("subjectAltNames") or service_identities(snapshot, service, port))
    name = str(tls.get("sni") or sni(port, subset, service.hostname))
    return OutboundTls(Outbound.MUTUAL if mode == "ISTIO_MUTUAL" else Outbound.AUTO, name, sans)


def upstream_tls(
    sni_name: str, sans: Iterable[str], alpn: Iterable[str] = OUTBOUND_ALPN
) -> tls_pb2.UpstreamTlsContext:
    return tls_pb2.UpstreamTlsContext(common_tls_context=common_tls(alpn, sans), sni=sni_name)


def origination_tls(tls: Obj, host: str, alpn: Iterable[str] = ()) -> tls_pb2.UpstreamTlsContext:
    """DestinationRule tls SIMPLE or MUTUAL with files, as Istio writes it:
    istio-agent's file-backed SDS names `file-root:CA` and `file-cert:CERT~KEY`;
    SNI `sni`, else the host. A credentialName becomes Istio's SDS names
    `kubernetes://NAME` and `kubernetes://NAME-cacert`, the Secret of the
    proxy's namespace that the control plane serves over SDS (secrets.py);
    until it arrives the cluster fails its connections (UF) rather than
    sending plaintext."""
    credential = tls.get("credentialName")
    certificate = ""
    if credential:
        root = f"kubernetes://{credential}-cacert"
        certificate = f"kubernetes://{credential}" if tls.get("mode") == "MUTUAL" else ""
    else:
        root = f"file-root:{tls['caCertificates']}" if tls.get("caCertificates") else ""
        if tls.get("mode") == "MUTUAL":
            certificate = (
                f"file-cert:{tls.get('clientCertificate', '')}~{tls.get('privateKey', '')}"
            )
    context = common_tls(alpn, tls.get("subjectAltNames") or (), certificate, root)
    return tls_pb2.UpstreamTlsContext(common_tls_context=context, sni=tls.get("sni") or host)


def auto_mtls_matches(context: tls_pb2.UpstreamTlsContext) -> list[Cluster.TransportSocketMatch]:
    """Istio's transport_socket_matches: TLS to sidecars, plaintext to the rest."""
    tls_match = struct_pb2.Struct()
    tls_match.update({"tlsMode": "istio"})
    raw = base_pb2.TransportSocket(name=RAW_SOCKET, typed_config=pack(raw_buffer_pb2.RawBuffer()))
    return [
        Cluster.TransportSocketMatch(
            name="tlsMode-istio", match=tls_match, transport_socket=transport_socket(context)
        ),
        Cluster.TransportSocketMatch(name="tlsMode-disabled", transport_socket=raw),
    ]


def endpoint_metadata(endpoint: Endpoint) -> base_pb2.Metadata | None:
    """What auto mTLS matches on: the endpoint's tlsMode label, as Istio copies it."""
    mode = endpoint.labels.get(TLS_MODE_LABEL)
    if not mode:
        return None
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update({"tlsMode": mode})
    return metadata
