"""tcp_proxy listeners compiled from protos: what is served, and bad config
rejected by field path."""

from __future__ import annotations

from collections import Counter

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2  # noqa: F401  (registers it)
from google.protobuf import json_format

from pilotfish.proxy import xds_types
from pilotfish.proxy.config import ProxyConfig
from pilotfish.proxy.listeners import ListenerError
from pilotfish.proxy.tcp.config import TcpProxy
from pilotfish.proxy.tcp.listener import compile_tcp_listener

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def tcp_listener(**proxy: object) -> Listener:
    config = {"@type": TCP_PROXY, "stat_prefix": "redis", **proxy}
    return json_format.ParseDict(
        {
            "name": "redis",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 6379}},
            "filter_chains": [
                {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": config}]}
            ],
        },
        Listener(),
    )


def test_a_single_cluster_with_envoy_defaults() -> None:
    compiled = compile_tcp_listener(tcp_listener(cluster="redis"))
    assert compiled.tcp == TcpProxy("redis", (("redis", 1),), 3600.0, 1)
    assert (compiled.host, compiled.port, compiled.plaintext, compiled.tls) == (
        "127.0.0.1",
        6379,
        True,
        None,
    )


def test_weights_choose_clusters_in_proportion() -> None:
    weighted = {"clusters": [{"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}
    proxy = compile_tcp_listener(
        tcp_listener(weighted_clusters=weighted, idle_timeout="2s", max_connect_attempts=3)
    ).tcp
    assert (proxy.idle_timeout, proxy.max_connect_attempts) == (2.0, 3)
    picks = [proxy.choose(i / 1000) for i in range(1000)]
    assert picks.count("a") == 800 and picks.count("b") == 200


@pytest.mark.parametrize(
    ("proxy", "error"),
    [
        ({}, "cluster_specifier: exactly one of cluster, weighted_clusters"),
        (
            {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}},
            "weighted_clusters.clusters[0].weight: value must be greater than or equal to 1",
        ),
        (
            {"weighted_clusters": {"clusters": [{"weight": 3}]}},
            "weighted_clusters.clusters[0].name: value length must be at least 1 characters",
        ),
        (
            {"cluster": "a", "max_connect_attempts": 0},
            "max_connect_attempts: value must be greater than or equal to 1",
        ),
        (
            {"cluster": "a", "max_downstream_connection_duration": "1s"},
            "field not supported by pilotfish: max_downstream_connection_duration",
        ),
    ],
)
def test_bad_tcp_proxy_is_rejected_by_path(proxy: dict[str, object], error: str) -> None:
    with pytest.raises(ListenerError, match="listener redis: ") as e:
        compile_tcp_listener(tcp_listener(**proxy))
    assert error in str(e.value)


def test_a_bad_tcp_listener_rejects_the_whole_update() -> None:
    config = ProxyConfig()
    config.load_static([tcp_listener(cluster="redis")], [])
    assert set(config.snapshot.tcp_listeners) == {"redis"}
    with pytest.raises(ListenerError):
        config.load_static([tcp_listener(cluster="redis", max_connect_attempts=0)], [])
    assert config.snapshot.tcp_listeners["redis"].tcp.max_connect_attempts == 1


NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def with_filter(listener: Listener, config: dict[str, object]) -> Listener:
    xds_types.register_named(config)  # network RBAC's messages load on demand
    extra = json_format.ParseDict(
        {"name": "f", "typed_config": config}, listener.filter_chains[0].filters.add()
    )
    chain = listener.filter_chains[0]
    filters = [extra, *list(chain.filters)[:-1]]
    del chain.filters[:]
    chain.filters.extend(filters)
    return listener


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"@type": NETWORK_RBAC, "stat_prefix": "tcp.", "enforcement_type": "CONTINUOUS"},
            "filters[0].typed_config: field not supported by pilotfish: enforcement_type",
        ),
        (
            {"@type": NETWORK_RBAC, "rules": {}},
            "filters[0].typed_config.stat_prefix: value length must be at least 1 characters",
        ),
        (
            {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
                "stat_prefix": "x",
            },
            "filters[0]: before a tcp_proxy only envoy.filters.network.rbac and "
            "envoy.filters.network.sni_cluster are supported",
        ),
    ],
)
def test_bad_filters_before_the_tcp_proxy_are_rejected(
    config: dict[str, object], error: str
) -> None:
    with pytest.raises(ListenerError) as e:
        compile_tcp_listener(with_filter(tcp_listener(cluster="redis"), config))
    assert error in str(e.value)


def test_network_rbac_decides_on_the_connection() -> None:
    from pilotfish.proxy.filters.base import Connection

    config = {
        "@type": NETWORK_RBAC,
        "stat_prefix": "tcp.",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "ns[a]": {
                    "permissions": [{"destination_port": 6379}],
                    "principals": [
                        {"authenticated": {"principal_name": {"exact": "spiffe://td/ns/a/sa/x"}}}
                    ],
                }
            },
        },
    }
    (rbac,) = compile_tcp_listener(with_filter(tcp_listener(cluster="redis"), config)).rbac
    counters: Counter[str] = Counter()
    good = Connection.of("10.0.0.1", "127.0.0.1:6379", "", "spiffe://td/ns/a/sa/x")
    assert rbac.check(good, counters) is None
    plaintext = Connection.of("10.0.0.1", "127.0.0.1:6379")
    assert rbac.check(plaintext, counters) == "rbac_access_denied_matched_policy[none]"
    other_port = Connection.of("10.0.0.1", "127.0.0.1:6380", "", "spiffe://td/ns/a/sa/x")
    assert rbac.check(other_port, counters) is not None
    assert counters == {"tcp.rbac.allowed": 1, "tcp.rbac.denied": 2}


def sni_listener(*chains: tuple[list[str], str]) -> Listener:
    listener = tcp_listener(cluster="unused")
    proto = listener.filter_chains[0]
    del listener.filter_chains[:]
    for names, cluster in chains:
        chain = listener.filter_chains.add()
        chain.CopyFrom(proto)
        chain.filter_chain_match.server_names.extend(names)
        config = json_format.ParseDict(
            {"@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster},
            chain.filters[0].typed_config,
        )
        chain.filters[0].typed_config.CopyFrom(config)
    return listener


def test_chains_chosen_by_sni_as_envoy_orders_them() -> None:
    compiled = compile_tcp_listener(
        sni_listener((["*.example.com"], "wild"), (["*.a.example.com"], "longer"),
                     (["exact.a.example.com"], "exact"), ([], "default"))
    )  # fmt: skip
    assert compiled.by_sni and compiled.tls is None

    def cluster(sni: str) -> str | None:
        chain = compiled.chain_for(sni)
        return None if chain is None else chain.tcp.clusters[0][0]

    assert cluster("exact.a.example.com") == "exact"
    assert cluster("x.a.example.com") == "longer"
    assert cluster("b.example.com") == "wild"
    assert cluster("example.com") == "default"
    assert cluster("") == "default"
    no_default = compile_tcp_listener(sni_listener((["a.test"], "a")))
    assert no_default.chain_for("b.test") is None


def test_a_passthrough_chain_must_not_terminate_tls() -> None:
    listener = sni_listener((["a.test"], "a"))
    listener.filter_chains[0].transport_socket.name = "envoy.transport_sockets.tls"
    with pytest.raises(ListenerError, match="must not terminate TLS"):
        compile_tcp_listener(listener)
