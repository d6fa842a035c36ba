"""A Gateway server's `tls`, as Istio's gateway translation builds it: pure.

- An HTTPS server with mode SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL
  terminates TLS and serves HTTP: a filter chain of its own on the port,
  chosen by SNI from its `hosts` (`server_names`, without the `ns/` part; a
  `*` host matches any SNI, and no SNI at all), with a DownstreamTlsContext:
  - `credentialName: NAME`: the certificate over SDS as `kubernetes://NAME`,
    the client CA (MUTUAL) as `kubernetes://NAME-cacert` (translate/secrets.py);
  - `serverCertificate`/`privateKey`/`caCertificates`: files on the
    gateway's host, as istio-agent's file-backed SDS names them;
  - ISTIO_MUTUAL: the gateway's own mesh certificate (`default`, `ROOTCA`);
  - `minProtocolVersion`/`maxProtocolVersion` (TLS 1.2 at least by default,
    as Istio's gateways), `cipherSuites` (else Istio's).
  MUTUAL requires a verified client certificate; OPTIONAL_MUTUAL verifies
  one if sent.
- A port's servers share one route table; the routes of a host whose SNI
  chain requires a client certificate require a verified one too (Envoy's
  RouteMatch `tls_context`), so another chain's clients cannot reach them.
- `httpsRedirect` on a plain HTTP server: its hosts' virtual hosts get
  Envoy's `require_tls: ALL` (routes.py), a 301 to https.
- PASSTHROUGH and AUTO_PASSTHROUGH (no termination) are not served.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.model.hosts import covers, is_wildcard, split_namespaced_host
from pilotfish.objects import Obj
from pilotfish.translate import mtls
from pilotfish.translate.secrets import credential_names

TERMINATING = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL")
CLIENT_CERTIFICATE = ("MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL")
GATEWAY_ALPN = ("h2", "http/1.1")  # as Istio's gateways offer: HTTP/2 first
_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}


def terminates_tls(server: Obj) -> bool:
    """An HTTPS server whose TLS the gateway terminates, serving HTTP inside."""
    protocol = str((server.get("port") or {}).get("protocol", "")).upper()
    tls = server.get("tls") or {}
    return protocol == "HTTPS" and str(tls.get("mode", "PASSTHROUGH")) in TERMINATING


def https_redirect(server: Obj) -> bool:
    return bool((server.get("tls") or {}).get("httpsRedirect"))


def server_names(server: Obj, namespace: str) -> list[str]:
    """The SNI names of a server's chain; [] matches any (a `*` host)."""
    names = {split_namespaced_host(str(h), namespace)[1] for h in server.get("hosts") or []}
    return [] if "*" in names else sorted(names)


def requires_client_certificate(servers: Iterable[tuple[str, Obj]], host: str) -> bool:
    """Whether the TLS server a client reaching `host` (as SNI) is handed
    requires a client certificate: `servers` are (namespace, server) of one
    port, oldest first; the exact name wins, then the longest wildcard, then
    `*`, as the SNI chains are chosen. The port's servers share one route
    table, so a route of such a host must also require one, or a client
    could present another server's SNI and this host's Host."""
    best: tuple[int, Obj] | None = None
    for namespace, server in servers:
        if not terminates_tls(server):
            continue
        for pattern in server_names(server, namespace) or ["*"]:
            rank = _specificity(pattern)
            if covers(pattern, host) and (best is None or rank > best[0]):
                best = (rank, server)
    mode = str(((best[1] if best else {}).get("tls") or {}).get("mode"))
    return mode in ("MUTUAL", "ISTIO_MUTUAL")


def _specificity(pattern: str) -> int:
    if pattern == "*":
        return 0
    return len(pattern) if is_wildcard(pattern) else 1 << 16


def downstream_context(server: Obj) -> tls_pb2.DownstreamTlsContext:
    tls: Obj = server.get("tls") or {}
    mode = str(tls.get("mode"))
    certificate, root = _secret_names(tls, mode)
    common = mtls.common_tls(GATEWAY_ALPN, (), certificate, root)
    params = common.tls_params
    params.tls_minimum_protocol_version = _VERSIONS.get(
        str(tls.get("minProtocolVersion") or "TLS_AUTO"), params.TLS_AUTO
    )
    if params.tls_minimum_protocol_version == params.TLS_AUTO:
        params.tls_minimum_protocol_version = params.TLSv1_2  # Istio's gateway default
    params.tls_maximum_protocol_version = _VERSIONS.get(
        str(tls.get("maxProtocolVersion") or "TLS_AUTO"), params.TLS_AUTO
    )
    if tls.get("cipherSuites"):
        del params.cipher_suites[:]
        params.cipher_suites.extend(str(c) for c in tls["cipherSuites"])
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=common,
        require_client_certificate=BoolValue(value=mode in ("MUTUAL", "ISTIO_MUTUAL")),
    )


def _secret_names(tls: Obj, mode: str) -> tuple[str, str]:
    """The SDS names of the server's certificate and its client CA ("" for none)."""
    mutual = mode in CLIENT_CERTIFICATE
    if mode == "ISTIO_MUTUAL":
        return mtls.CERTIFICATE, mtls.ROOTCA
    if tls.get("credentialName"):
        return credential_names(str(tls["credentialName"]), mutual)
    certificate = f"file-cert:{tls.get('serverCertificate', '')}~{tls.get('privateKey', '')}"
    ca = str(tls.get("caCertificates") or "")
    return certificate, f"file-root:{ca}" if mutual and ca else ""
