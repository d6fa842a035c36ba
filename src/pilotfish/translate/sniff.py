"""Istio's protocol detection (LDS): the inbound listener of a port that
declares no protocol (no known name prefix, no appProtocol).

Istio gives such a port both stacks: per transport the port's mTLS mode
allows (mtls.py), an HTTP chain matched by the application protocols the
`http_inspector` (plaintext) or the mesh client's ALPN (mutual TLS) reports,
and a tcp_proxy chain for the rest. The listener filters run under the mesh
config's `protocolDetectionTimeout` (0s by default: wait for the client's
first bytes), and a connection still silent when it passes goes on to the
TCP chain (`continue_on_listener_filters_timeout`), so that a server-first
protocol (MySQL, SMTP) works after it, as Istio documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from google.protobuf import duration_pb2

from pilotfish.translate.protos import duration, pack
from pilotfish.translate.tcp import add_tls_inspector

HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
PLAINTEXT_HTTP_ALPN = ("http/1.0", "http/1.1", "h2c")  # what the http_inspector reports
MTLS_HTTP_ALPN = ("istio-http/1.0", "istio-http/1.1", "istio-h2")  # a mesh client's HTTP
MTLS_TCP_ALPN = ("istio-peer-exchange", "istio")  # a mesh client's bytes that are not HTTP


def detection_timeout(mesh_config: Mapping[str, Any]) -> duration_pb2.Duration:
    """The mesh config's protocolDetectionTimeout; Istio's default is 0s (none).
    Validated where the mesh config is (a bad value is 0s here, never a crash)."""
    try:
        timeout = duration(str(mesh_config.get("protocolDetectionTimeout") or "0s"))
    except ValueError:
        return duration(0)
    return timeout if timeout.seconds >= 0 and timeout.nanos >= 0 else duration(0)


def translate_sniffed_listener(
    http: Listener, tcp: Listener, timeout: duration_pb2.Duration
) -> Listener:
    """`http` and `tcp`: the port's listener for either protocol, with the
    same transports in the same order (mtls.py made both)."""
    listener = Listener()
    listener.CopyFrom(http)
    del listener.filter_chains[:]
    del listener.listener_filters[:]
    for http_chain, tcp_chain in zip(http.filter_chains, tcp.filter_chains, strict=True):
        tls = http_chain.filter_chain_match.transport_protocol == "tls"
        listener.filter_chains.append(
            _matching(http_chain, MTLS_HTTP_ALPN if tls else PLAINTEXT_HTTP_ALPN)
        )
        listener.filter_chains.append(_matching(tcp_chain, MTLS_TCP_ALPN if tls else ()))
    if any(c.filter_chain_match.transport_protocol == "tls" for c in listener.filter_chains):
        add_tls_inspector(listener)
    listener.listener_filters.append(
        listener_components_pb2.ListenerFilter(
            name=HTTP_INSPECTOR, typed_config=pack(http_inspector_pb2.HttpInspector())
        )
    )
    listener.listener_filters_timeout.CopyFrom(timeout)
    listener.continue_on_listener_filters_timeout = True
    return listener


def _matching(
    chain: listener_components_pb2.FilterChain, alpn: tuple[str, ...]
) -> listener_components_pb2.FilterChain:
    out = listener_components_pb2.FilterChain()
    out.CopyFrom(chain)
    del out.filter_chain_match.application_protocols[:]
    out.filter_chain_match.application_protocols.extend(alpn)
    return out
