"""A Gateway server's AUTO_PASSTHROUGH in translation: an SNI chain with
Envoy's sni_cluster filter, and the gateway's clusters named by Istio's SNI
(`outbound_.PORT_.SUBSET_.HOST`), without TLS; every piece compiles in the proxy."""

from __future__ import annotations

from typing import Any

from test_tcp_listeners import gateway, redis_service
from translate_sim import INGRESS, service

from pilotfish.model import build_snapshot
from pilotfish.proxy.tcp.listener import compile_tcp_listener, is_tcp_listener
from pilotfish.proxy.upstream import compile_cluster
from pilotfish.translate import translate_clusters, translate_listeners

Obj = dict[str, Any]
REDIS = "redis.default.svc.cluster.local"
SUBSETS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "redis", "namespace": "default"},
    "spec": {"host": "redis", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
}


def east_west(hosts: list[str]) -> Obj:
    return gateway("TLS", 15443, hosts=hosts, tls={"mode": "AUTO_PASSTHROUGH"})


def translated(*objects: Obj) -> tuple[list[Any], dict[str, Any]]:
    snap = build_snapshot([redis_service({"name": "tcp"}), service("web"), *objects], [])
    listeners = [x for x in translate_listeners(snap, INGRESS) if is_tcp_listener(x)]
    return listeners, {c.name: c for c in translate_clusters(snap, INGRESS)}


def test_the_sni_names_the_cluster() -> None:
    (listener,), clusters = translated(east_west(["*.local"]), SUBSETS)
    (chain,) = listener.filter_chains
    assert list(chain.filter_chain_match.server_names) == ["*.local"]
    assert chain.filter_chain_match.transport_protocol == "tls"
    assert [f.name for f in chain.filters] == [
        "envoy.filters.network.sni_cluster",
        "envoy.filters.network.tcp_proxy",
    ]
    compiled = compile_tcp_listener(listener)
    assert compiled.port == 15443 and compiled.by_sni and compiled.tls is None
    assert compiled.chains[0].sni_cluster
    assert compiled.chains[0].tcp.clusters == (("BlackHoleCluster", 1),)
    for name, eds in (
        (f"outbound_.6379_._.{REDIS}", f"outbound|6379||{REDIS}"),
        (f"outbound_.6379_.v1_.{REDIS}", f"outbound|6379|v1|{REDIS}"),
        ("outbound_.9080_._.web.default.svc.cluster.local", None),
    ):
        dnat = clusters[name]
        # the client's own TLS passes through: the gateway adds none of its own
        assert not dnat.HasField("transport_socket") and not dnat.transport_socket_matches
        if eds is not None:
            assert dnat.eds_cluster_config.service_name == eds
        compile_cluster(dnat)


def test_only_the_servers_hosts_get_sni_clusters() -> None:
    (listener,), clusters = translated(east_west([f"default/{REDIS}"]))
    assert list(listener.filter_chains[0].filter_chain_match.server_names) == [REDIS]
    assert [n for n in clusters if n.startswith("outbound_.")] == [f"outbound_.6379_._.{REDIS}"]


def test_a_star_host_matches_any_sni() -> None:
    (listener,), clusters = translated(east_west(["*"]))
    assert not listener.filter_chains[0].filter_chain_match.server_names
    assert compile_tcp_listener(listener).by_sni  # the SNI is still read, to name the cluster
    assert f"outbound_.6379_._.{REDIS}" in clusters


def test_no_auto_passthrough_server_no_sni_clusters() -> None:
    passthrough = gateway("TLS", 8443, hosts=["*"], tls={"mode": "PASSTHROUGH"})
    _, clusters = translated(passthrough)
    assert not [n for n in clusters if n.startswith("outbound_.")]
