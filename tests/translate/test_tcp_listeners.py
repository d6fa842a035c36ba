"""TCP ports in translation: Istio's protocol selection by port name or
appProtocol, inbound tcp_proxy listeners, and a gateway's TCP servers routed
by VirtualService `tcp` routes; every listener compiles in the proxy."""

from __future__ import annotations

from typing import Any

import pytest
from translate_sim import INGRESS, instance, service

from pilotfish.model import Proxy, build_snapshot
from pilotfish.proxy.listeners import compile_listener
from pilotfish.proxy.tcp.listener import compile_tcp_listener, is_tcp_listener
from pilotfish.translate import translate_listeners

Obj = dict[str, Any]
REDIS = Proxy(node_id="sidecar~127.0.0.1~redis-v1-0.default~x", namespace="default")


def redis_service(port: Obj) -> Obj:
    return service("redis", spec_ports=None) | {
        "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379, **port}]}
    }


def inbound(port: Obj, *extra: Obj) -> Any:
    inst = instance("redis", "v1", 16379)
    snap = build_snapshot([redis_service({"targetPort": "http", **port}), *extra], [inst])
    (listener,) = [x for x in translate_listeners(snap, REDIS) if x.name.startswith("inbound")]
    return listener


@pytest.mark.parametrize(
    "port",
    [
        {"name": "tcp"},
        {"name": "redis-main"},
        {"name": "mysql"},
        {"name": "mongo"},
        {"name": "tls-db"},
        {"name": "db", "appProtocol": "redis"},
        {"name": "http-looking", "appProtocol": "tcp"},
    ],
)
def test_tcp_ports_by_name_or_app_protocol_get_a_tcp_proxy(port: Obj) -> None:
    listener = inbound(port)
    assert is_tcp_listener(listener)
    compiled = compile_tcp_listener(listener)
    assert compiled.tcp.clusters == (("inbound|16379||", 1),)
    assert compiled.inbound and (compiled.host, compiled.port) == ("127.0.0.1", 16379)
    # PERMISSIVE by default: mutual TLS (ALPN istio) and plaintext, as for HTTP ports
    assert compiled.tls is not None and compiled.plaintext
    assert "istio" in compiled.tls.settings.alpn


@pytest.mark.parametrize("port", [{"name": "http"}, {"name": "grpc-x"}])
def test_http_ports_stay_http(port: Obj) -> None:
    listener = inbound(port)
    assert not is_tcp_listener(listener)
    assert compile_listener(listener).http.routes is not None


def test_strict_mtls_leaves_only_the_tls_chain() -> None:
    strict = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    compiled = compile_tcp_listener(inbound({"name": "tcp"}, strict))
    assert compiled.tls is not None and not compiled.plaintext


def authz_policy(spec: Obj) -> Obj:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "policy", "namespace": "default"},
        "spec": spec,
    }


def test_a_tcp_port_under_authorization_runs_network_rbac_first() -> None:
    allow = {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]}]}
    listener = inbound({"name": "tcp"}, authz_policy(allow))
    names = [f.name for f in listener.filter_chains[0].filters]
    assert names == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    compiled = compile_tcp_listener(listener)
    assert [r.stat_prefix for r in compiled.rbac] == ["tcp."]


def test_a_tcp_port_under_a_custom_policy_gets_no_listener() -> None:
    """The proxy runs no network ext_authz: closed rather than open."""
    custom = authz_policy({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]})
    mesh = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {
            "mesh": "extensionProviders:\n- name: opa\n  envoyExtAuthzGrpc:\n"
            "    service: opa.default.svc.cluster.local\n    port: 9000\n"
        },
    }
    inst = instance("redis", "v1", 16379)
    service_obj = redis_service({"name": "tcp", "targetPort": "http"})
    snap = build_snapshot([service_obj, service("opa", port=9000), mesh, custom], [inst])
    assert [x.name for x in translate_listeners(snap, REDIS)] == ["127.0.0.1_15001"]


def gateway(protocol: str = "TCP", number: int = 31400, **server: Any) -> Obj:
    port = {"number": number, "name": protocol.lower(), "protocol": protocol}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "tcp-gw", "namespace": "istio-system"},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [{"port": port, "hosts": ["*"], **server}],
        },
    }


def tcp_vs(routes: list[Obj], name: str = "redis") -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": ["*"], "gateways": ["istio-system/tcp-gw"], "tcp": routes},
    }


def dest(subset: str, weight: int | None = None) -> Obj:
    out: Obj = {"destination": {"host": "redis", "subset": subset, "port": {"number": 6379}}}
    if weight is not None:
        out["weight"] = weight
    return out


def gateway_tcp(*objects: Obj) -> list[Any]:
    snap = build_snapshot([redis_service({"name": "tcp"}), *objects], [])
    return [x for x in translate_listeners(snap, INGRESS) if is_tcp_listener(x)]


def test_a_gateway_tcp_server_splits_connections_by_weight() -> None:
    routes = [{"match": [{"port": 31400}], "route": [dest("v1", 80), dest("v2", 20)]}]
    (listener,) = gateway_tcp(gateway(), tcp_vs(routes))
    compiled = compile_tcp_listener(listener)
    assert (compiled.host, compiled.port, compiled.tls) == ("0.0.0.0", 31400, None)
    host = "redis.default.svc.cluster.local"
    assert compiled.tcp.clusters == (
        (f"outbound|6379|v1|{host}", 80),
        (f"outbound|6379|v2|{host}", 20),
    )


def test_the_first_tcp_route_that_applies_wins() -> None:
    routes = [
        {"match": [{"port": 9999}], "route": [dest("v9")]},
        {"match": [{"sourceLabels": {"istio": "other"}}], "route": [dest("v8")]},
        {"match": [{"sourceLabels": {"istio": "ingressgateway"}}], "route": [dest("v1")]},
        {"route": [dest("v2")]},
    ]
    (listener,) = gateway_tcp(gateway(), tcp_vs(routes))
    host = "redis.default.svc.cluster.local"
    assert compile_tcp_listener(listener).tcp.clusters == ((f"outbound|6379|v1|{host}", 1),)


def test_no_tcp_route_no_listener_and_http_servers_are_untouched() -> None:
    assert gateway_tcp(gateway(), tcp_vs([{"match": [{"port": 1}], "route": [dest("v1")]}])) == []
    assert gateway_tcp(gateway("HTTP", 8080), tcp_vs([{"route": [dest("v1")]}])) == []


def test_a_destination_subnets_match_is_never_taken() -> None:
    routes = [
        {"match": [{"destinationSubnets": ["10.0.0.0/8"]}], "route": [dest("v9")]},
        {"route": [dest("v1")]},
    ]
    (listener,) = gateway_tcp(gateway(), tcp_vs(routes))
    host = "redis.default.svc.cluster.local"
    assert compile_tcp_listener(listener).tcp.clusters == ((f"outbound|6379|v1|{host}", 1),)


def passthrough_gateway() -> Obj:
    return gateway("TLS", 8443, hosts=["*.example.com"], tls={"mode": "PASSTHROUGH"})


def tls_vs(host: str, subsets: list[tuple[str, int]]) -> Obj:
    route = [dest(s, w) for s, w in subsets] if len(subsets) > 1 else [dest(subsets[0][0])]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": host.partition(".")[0], "namespace": "default"},
        "spec": {
            "hosts": [host],
            "gateways": ["istio-system/tcp-gw"],
            "tls": [{"match": [{"port": 8443, "sniHosts": [host]}], "route": route}],
        },
    }


def test_a_passthrough_server_chooses_clusters_by_sni() -> None:
    (listener,) = gateway_tcp(
        passthrough_gateway(),
        tls_vs("a.example.com", [("v1", 90), ("v2", 10)]),
        tls_vs("b.example.com", [("v3", 100)]),
        tls_vs("c.other.com", [("v4", 100)]),  # not a host of the server
    )
    compiled = compile_tcp_listener(listener)
    assert compiled.by_sni and compiled.tls is None  # TLS is not terminated
    host = "redis.default.svc.cluster.local"
    a, b = compiled.chain_for("a.example.com"), compiled.chain_for("b.example.com")
    assert a is not None and b is not None
    assert a.tcp.clusters == ((f"outbound|6379|v1|{host}", 90), (f"outbound|6379|v2|{host}", 10))
    assert b.tcp.clusters == ((f"outbound|6379|v3|{host}", 1),)
    assert compiled.chain_for("c.other.com") is None
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
