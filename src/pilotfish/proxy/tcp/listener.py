"""Listeners whose filter chains hold a tcp_proxy: Istio's inbound listener
for a TCP port (a TLS chain and, unless STRICT, a plaintext one, both
proxying to `inbound|PORT||`), or one a user writes in a bootstrap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from envoy.config.core.v3.base_pb2 import TrafficDirection
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from pilotfish.proxy import xds_types
from pilotfish.proxy.listeners import ListenerError, is_sniffed, listener_facts
from pilotfish.proxy.tcp.config import TCP_PROXY, TcpConfigError, TcpProxy, compile_tcp_proxy
from pilotfish.proxy.tls import DownstreamTls, ServerChains

if TYPE_CHECKING:  # imported with the first network RBAC filter: few sidecars have one
    from pilotfish.proxy.tcp.rbac import NetworkRbac

SNI_CLUSTER = xds_types.PREFIX + "envoy.extensions.filters.network.sni_cluster.v3.SniCluster"
NETWORK_RBAC = xds_types.PREFIX + xds_types.NETWORK_RBAC_CONFIG


@dataclass(frozen=True)
class TcpChain:
    """What a filter chain runs: network RBAC filters, then the tcp_proxy;
    `server_names` (exact, or `*.suffix`) when it is chosen by the SNI."""

    tcp: TcpProxy
    rbac: tuple[NetworkRbac, ...] = ()
    server_names: tuple[str, ...] = ()
    sni_cluster: bool = False  # Envoy's sni_cluster: the SNI names the cluster (AUTO_PASSTHROUGH)


@dataclass(frozen=True)
class TcpListener:
    name: str
    host: str
    port: int
    chains: tuple[TcpChain, ...]  # one, unless chosen by SNI (TLS passthrough)
    inbound: bool  # traffic_direction INBOUND
    tls: DownstreamTls | None = None  # a filter chain for TLS connections
    plaintext: bool = True  # a filter chain for plaintext ones

    # TLS is never chosen by SNI here: a passthrough chain does not terminate it.
    sni_tls: tuple[tuple[str, DownstreamTls], ...] = ()

    @property
    def has_tls(self) -> bool:
        return self.tls is not None

    @property
    def server_chains(self) -> ServerChains:
        return ServerChains((), self.tls)

    def __repr__(self) -> str:
        return f"<TcpListener {self.name} {self.host}:{self.port}>"

    @property
    def tcp(self) -> TcpProxy:
        return self.chains[0].tcp

    @property
    def rbac(self) -> tuple[NetworkRbac, ...]:
        return self.chains[0].rbac

    @property
    def by_sni(self) -> bool:
        """Chains are chosen by the ClientHello's server name, TLS left untouched."""
        return any(chain.server_names or chain.sni_cluster for chain in self.chains)

    def chain_for(self, sni: str) -> TcpChain | None:
        """Envoy's order: an exact name, then the longest wildcard, then a
        chain without names; None when nothing matches."""
        exact = [c for c in self.chains if sni and sni in c.server_names]
        if exact:
            return exact[0]
        wildcards = [
            (len(name), i)
            for i, chain in enumerate(self.chains)
            for name in chain.server_names
            if name.startswith("*") and sni.endswith(name[1:]) and len(sni) >= len(name)
        ]
        if wildcards:
            return self.chains[max(wildcards, key=lambda w: (w[0], -w[1]))[1]]
        return next((c for c in self.chains if not c.server_names), None)


def is_tcp_listener(listener: Listener) -> bool:
    """Its first chain's last network filter is a tcp_proxy (and no
    http_inspector chooses between it and HTTP chains: sniff.py)."""
    chains = listener.filter_chains
    first = bool(
        chains and chains[0].filters and chains[0].filters[-1].typed_config.type_url == TCP_PROXY
    )
    return first and not is_sniffed(listener)


def compile_tcp_listener(listener: Listener) -> TcpListener:
    if any(c.filter_chain_match.server_names or _sni_cluster(c) for c in listener.filter_chains):
        return _passthrough_listener(listener)
    placed = listener_facts(listener)
    return TcpListener(
        name=listener.name,
        host=placed.host,
        port=placed.port,
        chains=(_one_chain(listener, placed.where),),
        inbound=listener.traffic_direction == TrafficDirection.INBOUND,
        tls=placed.tls,
        plaintext=placed.plaintext,
    )


def _passthrough_listener(listener: Listener) -> TcpListener:
    """Chains chosen by SNI (Istio's PASSTHROUGH gateway servers): TLS is not
    terminated, so no chain may have a transport_socket."""
    bare = Listener()
    bare.CopyFrom(listener)
    for chain in bare.filter_chains:
        if chain.HasField("transport_socket"):
            raise ListenerError(
                f"listener {listener.name}: a chain matching server_names must not terminate "
                "TLS (transport_socket): pilotfish passes TLS through by SNI only"
            )
        chain.filter_chain_match.Clear()
    placed = listener_facts(bare)
    chains = tuple(
        _chain(chain, i, placed.where, tuple(n.lower() for n in c.filter_chain_match.server_names))
        for i, (chain, c) in enumerate(zip(bare.filter_chains, listener.filter_chains, strict=True))
    )
    return TcpListener(
        name=listener.name,
        host=placed.host,
        port=placed.port,
        chains=chains,
        inbound=listener.traffic_direction == TrafficDirection.INBOUND,
    )


def _one_chain(listener: Listener, where: str) -> TcpChain:
    """The filters every chain runs (chains differ only in their transport)."""
    chains = listener.filter_chains
    if any(list(chain.filters) != list(chains[0].filters) for chain in chains):
        raise ListenerError(
            f"{where}: filter_chains: chains that differ in more than their transport "
            "are not supported"
        )
    return _chain(chains[0], 0, where, ())


def _chain(
    chain: listener_components_pb2.FilterChain, index: int, where: str, names: tuple[str, ...]
) -> TcpChain:
    """Network RBAC filters (and an sni_cluster filter), then the tcp_proxy."""
    filters = list(chain.filters)
    rbac = []
    for i, network_filter in enumerate(filters[:-1]):
        path = f"{where}: filter_chains[{index}].filters[{i}]"
        if network_filter.typed_config.type_url == SNI_CLUSTER:
            continue
        if network_filter.typed_config.type_url != NETWORK_RBAC:
            raise ListenerError(
                f"{path}: before a tcp_proxy only envoy.filters.network.rbac and "
                "envoy.filters.network.sni_cluster are supported, "
                f"got {network_filter.name or network_filter.typed_config.type_url}"
            )
        from pilotfish.proxy.tcp.rbac import NetworkRbacError, compile_network_rbac

        try:
            rbac.append(compile_network_rbac(network_filter.typed_config, f"{path}.typed_config"))
        except NetworkRbacError as e:
            raise ListenerError(str(e)) from e
    last = f"{where}: filter_chains[{index}].filters[{len(filters) - 1}]"
    if not filters or filters[-1].typed_config.type_url != TCP_PROXY:
        raise ListenerError(f"{last}: a TCP chain ends with a tcp_proxy")
    proto = tcp_proxy_pb2.TcpProxy()
    filters[-1].typed_config.Unpack(proto)
    try:
        proxy = compile_tcp_proxy(proto, f"{last}.typed_config")
    except TcpConfigError as e:
        raise ListenerError(str(e)) from e
    return TcpChain(proxy, tuple(rbac), names, _sni_cluster(chain))


def _sni_cluster(chain: listener_components_pb2.FilterChain) -> bool:
    return any(f.typed_config.type_url == SNI_CLUSTER for f in chain.filters)
