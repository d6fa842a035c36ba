"""Listeners whose filter chains hold a tcp_proxy: Istio's inbound listener
for a TCP port (a TLS chain and, unless STRICT, a plaintext one, both
proxying to `inbound|PORT||`), or one a user writes in a bootstrap."""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3.base_pb2 import TrafficDirection
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from pilotfish.proxy.listeners import ListenerError, listener_facts
from pilotfish.proxy.tcp.config import TCP_PROXY, TcpConfigError, TcpProxy, compile_tcp_proxy
from pilotfish.proxy.tcp.rbac import (
    NETWORK_RBAC,
    NetworkRbac,
    NetworkRbacError,
    compile_network_rbac,
)
from pilotfish.proxy.tls import DownstreamTls


@dataclass(frozen=True)
class TcpListener:
    name: str
    host: str
    port: int
    tcp: TcpProxy
    inbound: bool  # traffic_direction INBOUND
    rbac: tuple[NetworkRbac, ...] = ()  # the network RBAC filters before the tcp_proxy
    tls: DownstreamTls | None = None  # a filter chain for TLS connections
    plaintext: bool = True  # a filter chain for plaintext ones

    def __repr__(self) -> str:
        return f"<TcpListener {self.name} {self.host}:{self.port}>"


def is_tcp_listener(listener: Listener) -> bool:
    """Its first chain's last network filter is a tcp_proxy."""
    chains = listener.filter_chains
    return bool(
        chains and chains[0].filters and chains[0].filters[-1].typed_config.type_url == TCP_PROXY
    )


def compile_tcp_listener(listener: Listener) -> TcpListener:
    placed = listener_facts(listener)
    rbac, tcp = _one_chain(listener, placed.where)
    return TcpListener(
        name=listener.name,
        host=placed.host,
        port=placed.port,
        tcp=tcp,
        rbac=rbac,
        inbound=listener.traffic_direction == TrafficDirection.INBOUND,
        tls=placed.tls,
        plaintext=placed.plaintext,
    )


def _one_chain(listener: Listener, where: str) -> tuple[tuple[NetworkRbac, ...], TcpProxy]:
    """The filters every chain runs (chains differ only in their transport):
    network RBAC filters, then the tcp_proxy."""
    chains = listener.filter_chains
    filters = list(chains[0].filters)
    if any(list(chain.filters) != filters for chain in chains):
        raise ListenerError(
            f"{where}: filter_chains: chains that differ in more than their transport "
            "are not supported"
        )
    rbac = []
    for i, network_filter in enumerate(filters[:-1]):
        path = f"{where}: filter_chains[0].filters[{i}]"
        if network_filter.typed_config.type_url != NETWORK_RBAC:
            raise ListenerError(
                f"{path}: before a tcp_proxy only envoy.filters.network.rbac is supported, "
                f"got {network_filter.name or network_filter.typed_config.type_url}"
            )
        try:
            rbac.append(compile_network_rbac(network_filter.typed_config, f"{path}.typed_config"))
        except NetworkRbacError as e:
            raise ListenerError(str(e)) from e
    proto = tcp_proxy_pb2.TcpProxy()
    filters[-1].typed_config.Unpack(proto)
    where = f"{where}: filter_chains[0].filters[{len(filters) - 1}].typed_config"
    try:
        return tuple(rbac), compile_tcp_proxy(proto, where)
    except TcpConfigError as e:
        raise ListenerError(str(e)) from e
