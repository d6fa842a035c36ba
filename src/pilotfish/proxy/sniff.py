"""Listeners whose chains are chosen by Envoy's http_inspector: Istio's
inbound listener for a port that declares no protocol (protocol detection).

Such a listener holds HTTP chains (an HttpConnectionManager, matching the
application protocols `http/1.0`, `http/1.1`, `h2c` or Istio's `istio-http/*`
ALPN) and TCP chains (a tcp_proxy) on the same transports. It compiles to
the HTTP listener with its TCP half beside it (`CompiledListener.sniffing`);
a connection's first bytes then choose (detecting.py, protocol/detect.py).

Inside mutual TLS the proxy reads the decrypted first bytes rather than the
client's ALPN: a pilotfish client offers all of Istio's ALPN at once, so the
bytes are what tells. `listener_filters_timeout` bounds the wait for them
(absent: Envoy's 15s; 0s: no bound, Istio's default); past it the connection
goes to the TCP chains if `continue_on_listener_filters_timeout`, else it is
closed, as Envoy does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from envoy.config.listener.v3.listener_pb2 import Listener

from pilotfish.proxy import xds_types
from pilotfish.proxy.listeners import (
    HTTP_INSPECTOR,
    CompiledListener,
    ListenerError,
    compile_listener,
)
from pilotfish.proxy.proto_fields import seconds
from pilotfish.proxy.tcp.config import TCP_PROXY
from pilotfish.proxy.tcp.listener import TcpListener, compile_tcp_listener

DEFAULT_LISTENER_FILTERS_TIMEOUT_S = 15.0  # Envoy's


@dataclass(frozen=True)
class Sniffing:
    """The TCP half of a sniffed listener, and how long its first bytes may take."""

    tcp: TcpListener
    timeout: float  # 0: wait as long as the client takes
    continue_on_timeout: bool  # past the timeout: the TCP chains, else closed

    def __repr__(self) -> str:
        return f"<Sniffing {self.tcp.name} timeout={self.timeout}s>"


def compile_sniffed(listener: Listener) -> CompiledListener:
    where = f"listener {listener.name or '(unnamed)'}"
    for i, chain in enumerate(listener.filter_chains):
        last = chain.filters[-1].typed_config.type_url if chain.filters else ""
        if last not in (xds_types.HCM, TCP_PROXY):
            raise ListenerError(
                f"{where}: filter_chains[{i}]: under the http_inspector a chain ends with "
                "an HttpConnectionManager or a tcp_proxy"
            )
    http = compile_listener(_half(listener, xds_types.HCM, where))
    tcp = compile_tcp_listener(_half(listener, TCP_PROXY, where))
    if (http.tls is None, http.plaintext) != (tcp.tls is None, tcp.plaintext):
        raise ListenerError(
            f"{where}: filter_chains: the HTTP and the TCP chains must serve the same "
            "transports (tls, raw_buffer)"
        )
    timeout = (
        seconds(listener.listener_filters_timeout)
        if listener.HasField("listener_filters_timeout")
        else DEFAULT_LISTENER_FILTERS_TIMEOUT_S
    )
    sniffing = Sniffing(tcp, timeout, listener.continue_on_listener_filters_timeout)
    return replace(http, sniffing=sniffing)


def _half(listener: Listener, network_filter: str, where: str) -> Listener:
    """The listener with only the chains ending with `network_filter`, and
    without what the sniffing itself reads (the http_inspector, its timeout)."""
    half = Listener()
    half.CopyFrom(listener)
    del half.filter_chains[:]
    half.filter_chains.extend(
        chain
        for chain in listener.filter_chains
        if chain.filters and chain.filters[-1].typed_config.type_url == network_filter
    )
    if not half.filter_chains:
        kind = "an HttpConnectionManager" if network_filter == xds_types.HCM else "a tcp_proxy"
        raise ListenerError(
            f"{where}: filter_chains: the http_inspector chooses between HTTP and TCP "
            f"chains, and no chain ends with {kind}"
        )
    kept = [f for f in listener.listener_filters if f.typed_config.type_url != HTTP_INSPECTOR]
    del half.listener_filters[:]
    half.listener_filters.extend(kept)
    half.ClearField("listener_filters_timeout")
    half.ClearField("continue_on_listener_filters_timeout")
    return half
