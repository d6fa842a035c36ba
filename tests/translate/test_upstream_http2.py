"""Which HTTP a cluster speaks upstream, by simulation: config in, the
cluster's HttpProtocolOptions (and TLS ALPN) out, as Istio's cluster builder
makes them."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from translate_sim import BOOKINFO_INSTANCES, INGRESS, PRODUCTPAGE, cluster, instance, service

from pilotfish.model import Proxy, build_snapshot
from pilotfish.proxy.upstream.compile import compile_cluster
from pilotfish.proxy.upstream.errors import ClusterConfigError
from pilotfish.proxy.upstream.spec import UpstreamHttp
from pilotfish.translate import translate_clusters

Obj = dict[str, Any]
OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def reviews(port: Obj) -> Obj:
    return service("reviews", ports=[{"port": 9080, **port}])


def rule(http: Obj, port_level: bool = False) -> Obj:
    policy: Obj = {"connectionPool": {"http": http}}
    if port_level:
        policy = {"portLevelSettings": [{"port": {"number": 9080}, **policy}]}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "trafficPolicy": policy},
    }


def mesh(text: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": text},
    }


def built(*objects: Obj, name: str = "", proxy: Proxy = PRODUCTPAGE) -> Cluster:
    snap = build_snapshot(list(objects), BOOKINFO_INSTANCES)
    found = {c.name: c for c in translate_clusters(snap, proxy)}
    return found[name or cluster("reviews")]


def options(c: Cluster) -> hpo.HttpProtocolOptions:
    out = hpo.HttpProtocolOptions()
    if OPTIONS in c.typed_extension_protocol_options:
        c.typed_extension_protocol_options[OPTIONS].Unpack(out)
    return out


def is_h2(c: Cluster) -> bool:
    return bool(options(c).explicit_http_config.HasField("http2_protocol_options"))


@pytest.mark.parametrize(
    "port",
    [
        {"name": "grpc"},
        {"name": "grpc-api"},
        {"name": "http2-web"},
        {"name": "grpc-web"},
        {"name": "api", "appProtocol": "grpc"},
        {"name": "web", "appProtocol": "http2"},
    ],
)
def test_http2_port_protocols_speak_http2_upstream(port: Obj) -> None:
    assert is_h2(built(reviews(port)))


@pytest.mark.parametrize(
    "port",
    [{"name": "http"}, {"name": "tcp"}, {"name": "web"}, {"name": "api", "appProtocol": "http"}],
)
def test_other_ports_keep_http1(port: Obj) -> None:
    assert not is_h2(built(reviews(port)))


def test_destination_rule_upgrade_makes_http2_even_on_a_sniffed_port() -> None:
    assert is_h2(built(reviews({"name": "http"}), rule({"h2UpgradePolicy": "UPGRADE"})))
    assert is_h2(built(reviews({"name": "web"}), rule({"h2UpgradePolicy": "UPGRADE"}, True)))


def test_mesh_wide_upgrade_applies_to_http_ports_only_and_a_rule_opts_out() -> None:
    upgrade = mesh("h2UpgradePolicy: UPGRADE\n")
    assert is_h2(built(upgrade, reviews({"name": "http"})))
    assert not is_h2(built(upgrade, reviews({"name": "web"})))  # sniffed: never upgraded
    assert not is_h2(built(upgrade, reviews({"name": "tcp"})))
    opt_out = rule({"h2UpgradePolicy": "DO_NOT_UPGRADE"})
    assert not is_h2(built(upgrade, reviews({"name": "http"}), opt_out))
    assert not is_h2(built(mesh("h2UpgradePolicy: DO_NOT_UPGRADE\n"), reviews({"name": "http"})))


def test_use_client_protocol_gives_use_downstream_protocol_config() -> None:
    c = built(reviews({"name": "http"}), rule({"useClientProtocol": True}))
    config = options(c).use_downstream_protocol_config
    assert config.HasField("http_protocol_options")
    assert config.HasField("http2_protocol_options")
    assert not options(c).HasField("explicit_http_config")
    # The mesh's UPGRADE still wins over it, as Istio's applyH2Upgrade runs last.
    assert is_h2(
        built(
            mesh("h2UpgradePolicy: UPGRADE\n"),
            reviews({"name": "http"}),
            rule({"useClientProtocol": True}),
        )
    )


def test_connection_pool_maps_as_istio_maps_it() -> None:
    pool = {"http2MaxRequests": 7, "maxRequestsPerConnection": 3, "maxConcurrentStreams": 50}
    c = built(reviews({"name": "grpc"}), rule(pool))
    assert c.circuit_breakers.thresholds[0].max_requests.value == 7
    common = options(c).common_http_protocol_options
    assert common.max_requests_per_connection.value == 3
    h2 = options(c).explicit_http_config.http2_protocol_options
    assert h2.max_concurrent_streams.value == 50
    # On an HTTP/1.1 cluster there are no streams to limit.
    plain = built(reviews({"name": "http"}), rule(pool))
    assert not options(plain).explicit_http_config.http2_protocol_options.HasField(
        "max_concurrent_streams"
    )


def tls_alpn(c: Cluster) -> list[str]:
    sockets = [m.transport_socket for m in c.transport_socket_matches] + [c.transport_socket]
    for socket in sockets:
        if socket.name == "envoy.transport_sockets.tls":
            context = tls_pb2.UpstreamTlsContext()
            socket.typed_config.Unpack(context)
            return list(context.common_tls_context.alpn_protocols)
    return []


def test_http2_clusters_offer_http2_in_alpn() -> None:
    assert "istio-h2" in tls_alpn(built(reviews({"name": "grpc"})))
    assert "istio-h2" not in tls_alpn(built(reviews({"name": "http"})))
    simple = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}},
    }
    assert tls_alpn(built(reviews({"name": "grpc"}), simple)) == ["h2"]
    assert tls_alpn(built(reviews({"name": "http"}), simple)) == []


def test_inbound_cluster_of_a_grpc_port_speaks_http2_to_the_app() -> None:
    grpc_instance = [instance("productpage", "v1", 19080)]
    svc = service("productpage")
    svc["spec"]["ports"] = [{"name": "grpc", "port": 9080, "targetPort": "http"}]
    snap = build_snapshot([svc], grpc_instance)
    found = {c.name: c for c in translate_clusters(snap, PRODUCTPAGE)}
    assert is_h2(found["inbound|19080||"])
    plain = build_snapshot([service("productpage")], grpc_instance)
    assert not is_h2({c.name: c for c in translate_clusters(plain, PRODUCTPAGE)}["inbound|19080||"])


def test_the_proxy_compiles_what_translation_makes() -> None:
    grpc = compile_cluster(built(reviews({"name": "grpc"}), rule({"maxConcurrentStreams": 9})))
    assert (grpc.pool.http, grpc.pool.max_concurrent_streams) == (UpstreamHttp.HTTP2, 9)
    client = compile_cluster(built(reviews({"name": "http"}), rule({"useClientProtocol": True})))
    assert client.pool.http is UpstreamHttp.DOWNSTREAM
    plain = compile_cluster(built(reviews({"name": "http"})))
    assert (plain.pool.http, plain.pool.max_concurrent_streams) == (UpstreamHttp.HTTP1, None)


def test_the_proxy_refuses_http2_settings_it_does_not_honour() -> None:
    c = built(reviews({"name": "grpc"}))
    opts = options(c)
    opts.explicit_http_config.http2_protocol_options.initial_stream_window_size.value = 65536
    c.typed_extension_protocol_options[OPTIONS].Pack(opts)
    with pytest.raises(ClusterConfigError, match="initial_stream_window_size"):
        compile_cluster(c)


def test_a_sidecars_sniffed_port_uses_the_client_protocol_and_a_gateways_does_not() -> None:
    sniffed = reviews({"name": "web"})
    downstream = options(built(sniffed)).use_downstream_protocol_config
    assert downstream.HasField("http_protocol_options")
    assert downstream.HasField("http2_protocol_options")
    assert not options(built(reviews({"name": "http"}))).HasField("use_downstream_protocol_config")
    gateway = options(built(sniffed, proxy=INGRESS))
    assert not gateway.HasField("use_downstream_protocol_config")
