"""Declared upstreams in translation: the sidecar of a Workload with
`spec.upstreams` gets a listener on localAddress:localPort per upstream,
compiled by the proxy: a tcp_proxy to a TCP port's clusters (weights of its
`tcp` route), HTTP routes for an HTTP port whatever Host the client says."""

from __future__ import annotations

import json
from typing import Any

from translate_sim import service

from pilotfish.model import Proxy, build_snapshot
from pilotfish.model.types import UPSTREAMS_METADATA
from pilotfish.proxy.listeners import compile_listener
from pilotfish.proxy.routing import Forward, Request
from pilotfish.proxy.tcp.listener import compile_tcp_listener, is_tcp_listener
from pilotfish.translate import translate_listeners

Obj = dict[str, Any]
REDIS_HOST = "redis.data.svc.cluster.local"


def redis() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "redis", "namespace": "data"},
        "spec": {"selector": {"app": "redis"}, "ports": [{"name": "tcp", "port": 6379}]},
    }


def caller(*upstreams: Obj) -> Proxy:
    return Proxy(
        node_id="sidecar~127.0.0.1~ratings-v1-0.default~default.svc.cluster.local",
        namespace="default",
        metadata={UPSTREAMS_METADATA: json.dumps(list(upstreams))},
    )


def listeners(proxy: Proxy, *extra: Obj) -> dict[str, Any]:
    snapshot = build_snapshot([redis(), service("reviews"), *extra], [])
    return {x.name: x for x in translate_listeners(snapshot, proxy)}


def test_a_tcp_upstream_gets_a_tcp_proxy_on_its_local_port() -> None:
    found = listeners(caller({"service": "redis.data", "port": 6379, "localPort": 16379}))
    listener = found["127.0.0.1_16379"]
    assert is_tcp_listener(listener)
    compiled = compile_tcp_listener(listener)
    assert (compiled.host, compiled.port, compiled.inbound) == ("127.0.0.1", 16379, False)
    assert compiled.tcp.clusters == ((f"outbound|6379||{REDIS_HOST}", 1),)


def test_an_http_upstream_routes_any_host_to_the_service() -> None:
    found = listeners(
        caller(
            {"service": "reviews", "port": 9080, "localPort": 19080, "localAddress": "127.0.0.2"}
        )
    )
    compiled = compile_listener(found["127.0.0.2_19080"])
    assert (compiled.host, compiled.port) == ("127.0.0.2", 19080)
    assert compiled.http.routes is not None
    route = compiled.http.routes.route(Request(authority=b"127.0.0.2:19080", path=b"/x"))
    assert route is not None and isinstance(route.action, Forward)
    assert route.action.pick(Request(), 0).cluster == (
        "outbound|9080||reviews.default.svc.cluster.local"
    )


def test_unknown_services_and_ports_and_taken_addresses_get_no_listener() -> None:
    found = listeners(
        caller(
            {"service": "nosuch", "port": 6379, "localPort": 16379},
            {"service": "redis.data", "port": 6380, "localPort": 16380},
            {"service": "reviews", "port": 9080, "localPort": 15001},  # the outbound listener's
        )
    )
    assert "127.0.0.1_16379" not in found and "127.0.0.1_16380" not in found
    assert is_tcp_listener(found["127.0.0.1_15001"]) is False  # still the outbound one
