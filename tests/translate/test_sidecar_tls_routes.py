"""VirtualService `tls` routes bound to `mesh`, in sidecars: a declared
upstream to a TLS/HTTPS port gets a listener that chooses its chain by the
ClientHello's SNI (tls_inspector), one per `tls` match, then one for the
rest; `destinationSubnets` is decided against the service's addresses.
Simulated: translate, compile as the proxy does, pick a chain for an SNI."""

from __future__ import annotations

import json
from typing import Any

from translate_sim import sidecar_table

from pilotfish.model import Proxy, build_snapshot
from pilotfish.model.types import UPSTREAMS_METADATA
from pilotfish.proxy.routing import Forward
from pilotfish.proxy.routing.request import Request
from pilotfish.proxy.tcp.listener import TcpListener, compile_tcp_listener, is_tcp_listener
from pilotfish.translate import translate_listeners

Obj = dict[str, Any]
HOST = "vault.data.svc.cluster.local"
LISTENER = "127.0.0.1_18443"


def vault(port_name: str = "tls", **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "vault", "namespace": "data"},
        "spec": {
            "selector": {"app": "vault"},
            "ports": [{"name": port_name, "port": 8443}],
            **spec,
        },
    }


def vs(*, tls: list[Obj] | None = None, tcp: list[Obj] | None = None, **spec: Any) -> Obj:
    body: Obj = {"hosts": [HOST], **spec}
    if tls is not None:
        body["tls"] = tls
    if tcp is not None:
        body["tcp"] = tcp
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vault", "namespace": "data"},
        "spec": body,
    }


def dest(subset: str, weight: int | None = None) -> Obj:
    out: Obj = {"destination": {"host": HOST, "subset": subset, "port": {"number": 8443}}}
    if weight is not None:
        out["weight"] = weight
    return out


def cluster(subset: str = "") -> str:
    return f"outbound|8443|{subset}|{HOST}"


def caller(labels: dict[str, str] | None = None) -> Proxy:
    upstream = {"service": "vault.data", "port": 8443, "localPort": 18443}
    return Proxy(
        node_id="sidecar~127.0.0.1~app-0.default~default.svc.cluster.local",
        namespace="default",
        labels=labels or {},
        metadata={UPSTREAMS_METADATA: json.dumps([upstream])},
    )


def listener(*objects: Obj, proxy: Proxy | None = None) -> Any:
    snapshot = build_snapshot(list(objects), [])
    [found] = [x for x in translate_listeners(snapshot, proxy or caller()) if x.name == LISTENER]
    return found


def compiled(*objects: Obj, proxy: Proxy | None = None) -> TcpListener:
    found = listener(*objects, proxy=proxy)
    assert is_tcp_listener(found)
    return compile_tcp_listener(found)


def clusters_for(tcp: TcpListener, sni: str) -> tuple[tuple[str, int], ...]:
    chain = tcp.chain_for(sni)
    assert chain is not None
    return chain.tcp.clusters


def two_subsets() -> list[Obj]:
    return [
        {"match": [{"sniHosts": ["v1.vault.example"]}], "route": [dest("v1")]},
        {"match": [{"sniHosts": ["v2.vault.example"]}], "route": [dest("v2")]},
    ]


def test_sni_hosts_choose_the_subset_and_other_names_reach_the_service() -> None:
    tcp = compiled(vault(), vs(tls=two_subsets()))
    assert tcp.by_sni and tcp.tls is None  # TLS passes through, never terminated
    assert clusters_for(tcp, "v1.vault.example") == ((cluster("v1"), 1),)
    assert clusters_for(tcp, "v2.vault.example") == ((cluster("v2"), 1),)
    assert clusters_for(tcp, "other.example") == ((cluster(), 1),)
    assert clusters_for(tcp, "") == ((cluster(), 1),)


def test_the_listener_reads_the_sni_without_terminating() -> None:
    found = listener(vault(port_name="https"), vs(tls=two_subsets()))
    assert [f.name for f in found.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert [list(c.filter_chain_match.server_names) for c in found.filter_chains] == [
        ["v1.vault.example"],
        ["v2.vault.example"],
        [],
    ]
    assert not any(c.HasField("transport_socket") for c in found.filter_chains)


def test_a_weighted_tls_route_splits_connections() -> None:
    route = {"match": [{"sniHosts": ["vault.example"]}], "route": [dest("v1", 80), dest("v2", 20)]}
    tcp = compiled(vault(), vs(tls=[route]))
    chain = tcp.chain_for("vault.example")
    assert chain is not None
    assert chain.tcp.clusters == ((cluster("v1"), 80), (cluster("v2"), 20))
    picks = [chain.tcp.choose(i / 100) for i in range(100)]
    assert picks.count(cluster("v1")) == 80


def test_the_rest_follow_the_ports_tcp_route() -> None:
    tcp_route = [{"route": [dest("v2")]}]
    tcp = compiled(vault(), vs(tls=two_subsets()[:1], tcp=tcp_route))
    assert clusters_for(tcp, "v1.vault.example") == ((cluster("v1"), 1),)
    assert clusters_for(tcp, "unknown.example") == ((cluster("v2"), 1),)


def test_no_tls_route_is_one_chain_to_the_service_without_inspector() -> None:
    found = listener(vault(), vs(tcp=[]))
    assert len(found.listener_filters) == 0
    assert compile_tcp_listener(found).tcp.clusters == ((cluster(), 1),)


def test_matches_not_for_this_sidecar_are_left_out() -> None:
    routes = [
        {
            "match": [{"sniHosts": ["a.example"], "sourceLabels": {"app": "other"}}],
            "route": [dest("v1")],
        },
        {"match": [{"sniHosts": ["b.example"], "port": 9999}], "route": [dest("v1")]},
        {"match": [{"sniHosts": ["c.example"], "sourceNamespace": "prod"}], "route": [dest("v1")]},
        {
            "match": [{"sniHosts": ["d.example"], "sourceLabels": {"app": "app"}}],
            "route": [dest("v2")],
        },
    ]
    tcp = compiled(vault(), vs(tls=routes), proxy=caller({"app": "app"}))
    assert [c.server_names for c in tcp.chains] == [("d.example",), ()]


def test_a_virtual_service_bound_to_a_gateway_only_does_not_apply() -> None:
    tcp = compiled(vault(), vs(tls=two_subsets(), gateways=["data/edge"]))
    assert not tcp.by_sni and tcp.tcp.clusters == ((cluster(), 1),)


def test_first_match_for_a_name_wins() -> None:
    routes = [
        {"match": [{"sniHosts": ["Vault.example"]}], "route": [dest("v1")]},
        {"match": [{"sniHosts": ["vault.example", "x.example"]}], "route": [dest("v2")]},
    ]
    tcp = compiled(vault(), vs(tls=routes))
    assert clusters_for(tcp, "vault.example") == ((cluster("v1"), 1),)
    assert clusters_for(tcp, "x.example") == ((cluster("v2"), 1),)


def subnet_route(subnets: list[str]) -> list[Obj]:
    return [
        {
            "match": [{"sniHosts": ["vault.example"], "destinationSubnets": subnets}],
            "route": [dest("v1")],
        },
    ]


def test_destination_subnets_are_matched_against_the_service_address() -> None:
    inside = compiled(vault(clusterIP="10.96.0.10"), vs(tls=subnet_route(["10.96.0.0/16"])))
    assert clusters_for(inside, "vault.example") == ((cluster("v1"), 1),)
    outside = compiled(vault(clusterIP="10.96.0.10"), vs(tls=subnet_route(["10.97.0.0/16"])))
    assert clusters_for(outside, "vault.example") == ((cluster(), 1),)


def test_destination_subnets_are_never_taken_for_a_service_without_address() -> None:
    tcp = compiled(vault(), vs(tls=subnet_route(["0.0.0.0/0"])))
    assert not tcp.by_sni


def test_tcp_destination_subnets_on_a_tcp_port() -> None:
    routes = [
        {"match": [{"destinationSubnets": ["10.96.0.10/32"]}], "route": [dest("v2")]},
        {"route": [dest("v1")]},
    ]
    plain = vault(port_name="tcp", clusterIP="10.96.0.10")
    assert compiled(plain, vs(tcp=routes)).tcp.clusters == ((cluster("v2"), 1),)
    other = vault(port_name="tcp", clusterIP="10.96.0.11")
    assert compiled(other, vs(tcp=routes)).tcp.clusters == ((cluster("v1"), 1),)


def test_translation_is_pure_and_ordered() -> None:
    objects = (vault(), vs(tls=two_subsets()))
    first = listener(*objects).SerializeToString(deterministic=True)
    assert listener(*objects).SerializeToString(deterministic=True) == first


def test_connect_to_a_service_decides_destination_subnets_by_its_address() -> None:
    routes = [
        {"match": [{"destinationSubnets": ["10.96.0.0/16"]}], "route": [dest("v2")]},
        {"route": [dest("v1")]},
    ]

    def tunnel_cluster(address: str) -> str:
        snapshot = build_snapshot([vault(port_name="tcp", clusterIP=address), vs(tcp=routes)], [])
        req = Request(method=b"CONNECT", path=b"", authority=f"{HOST}:8443".encode())
        route = sidecar_table(snapshot).connect_route(req)
        assert route is not None and isinstance(route.action, Forward)
        return route.action.pick(req, 0).cluster

    assert tunnel_cluster("10.96.3.4") == cluster("v2")
    assert tunnel_cluster("10.20.3.4") == cluster("v1")
