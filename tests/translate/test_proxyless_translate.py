"""What proxyless gRPC gets of mesh security, read field by field as grpc's
xDS parsers read it (gRFC A29, A36, A41): certificate provider instances
only (no SDS, no tls_params, no SAN matchers on servers: grpc NACKs them),
one filter chain per server listener, RBAC filters with unique names and
the router last. tests/e2e/test_proxyless_security.py has grpcio accept it."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from translate_sim import BOOKINFO_SERVICES, instance

from pilotfish.model import Proxy, ProxyType, build_snapshot
from pilotfish.translate import translate_clusters, translate_listeners
from pilotfish.translate.proxyless import server_address

Obj = dict[str, Any]
SERVER = Proxy(
    node_id="proxyless~127.0.0.1~reviews-0.default~default.svc.cluster.local",
    namespace="default",
    type=ProxyType.GRPC,
    labels={"app": "reviews"},
)
ISTIO_NAME = "xds.istio.io/grpc/lds/inbound/0.0.0.0:50051"
GRPC_NAME = "grpc/server?xds.resource.listening_address=[::]:50052"
CLUSTER = "outbound|9080||reviews.default.svc.cluster.local"


def peer_auth(mode: str) -> Obj:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": mode}},
    }


def policy(name: str, action: str, rules: list[Obj], dry_run: bool = False) -> Obj:
    meta: Obj = {"name": name, "namespace": "default"}
    if dry_run:
        meta["annotations"] = {"istio.io/dry-run": "true"}
    spec: Obj = {"selector": {"matchLabels": {"app": "reviews"}}, "action": action, "rules": rules}
    if action == "CUSTOM":
        spec["provider"] = {"name": "authorizer"}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": spec,
    }


def listeners(*config: Obj, names: tuple[str, ...] = (ISTIO_NAME,)) -> dict[str, Any]:
    snap = build_snapshot([*BOOKINFO_SERVICES, *config], [])
    return {item.name: item for item in translate_listeners(snap, SERVER, names)}


def manager(listener: Any) -> hcm_pb2.HttpConnectionManager:
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    out = hcm_pb2.HttpConnectionManager()
    network_filter.typed_config.Unpack(out)
    return out


def test_server_listener_names_both_templates() -> None:
    assert server_address(ISTIO_NAME) == ("0.0.0.0", 50051)
    assert server_address(GRPC_NAME) == ("::", 50052)
    assert server_address("reviews.default.svc.cluster.local:9080") is None
    assert server_address("xds.istio.io/grpc/lds/inbound/0.0.0.0:http") is None
    found = listeners(names=(ISTIO_NAME, GRPC_NAME, "reviews.default.svc.cluster.local:9080"))
    assert {ISTIO_NAME, GRPC_NAME} <= set(found)
    address = found[GRPC_NAME].address.socket_address
    assert (address.address, address.port_value) == ("::", 50052)  # grpc checks it matches


def test_strict_serves_mtls_from_the_bootstraps_provider() -> None:
    (chain,) = listeners(peer_auth("STRICT"))[ISTIO_NAME].filter_chains
    assert not chain.HasField("filter_chain_match")  # grpc drops chains matching on TLS
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert common.tls_certificate_provider_instance.instance_name == "default"
    validation = common.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == "default"
    assert not validation.match_subject_alt_names  # grpc NACKs SAN matchers on servers
    assert not common.HasField("tls_params") and not common.tls_certificate_sds_secret_configs


@pytest.mark.parametrize("mode", ["PERMISSIVE", "DISABLE"])
def test_permissive_and_disable_serve_plaintext_as_istiod_builds_them(mode: str) -> None:
    (chain,) = listeners(peer_auth(mode))[ISTIO_NAME].filter_chains
    assert not chain.HasField("transport_socket")


def test_server_routes_never_forward() -> None:
    (route,) = manager(listeners()[ISTIO_NAME]).route_config.virtual_hosts[0].routes
    assert route.HasField("non_forwarding_action") and route.match.prefix == "/"


def test_rbac_deny_then_allow_and_router_last() -> None:
    deny_path = {"to": [{"operation": {"paths": ["/pkg.Svc/Secret"]}}]}
    config = [
        policy("allow-all", "ALLOW", [{}]),
        policy("no-secret", "DENY", [deny_path]),
        policy("trying", "DENY", [{}], dry_run=True),  # grpc reads no shadow rules
        policy("custom", "CUSTOM", [deny_path]),
    ]
    filters = manager(listeners(*config)[ISTIO_NAME]).http_filters
    assert [f.name for f in filters] == [
        "envoy.filters.http.rbac-deny",
        "envoy.filters.http.rbac-allow",
        "envoy.filters.http.router",
    ]
    deny = http_rbac_pb2.RBAC()
    filters[0].typed_config.Unpack(deny)
    assert sorted(deny.rules.policies) == [
        "ns[default]-policy[custom]-rule[0]-deny-due-to-bad-CUSTOM-action",
        "ns[default]-policy[no-secret]-rule[0]",
    ]
    assert not deny.HasField("shadow_rules")


def test_no_policy_means_router_only() -> None:
    assert [f.name for f in manager(listeners()[ISTIO_NAME]).http_filters] == [
        "envoy.filters.http.router"
    ]


def clusters(*config: Obj) -> dict[str, Any]:
    snap = build_snapshot(
        [*BOOKINFO_SERVICES, *config], [instance("reviews", "v1", 19083, service_account="rev")]
    )
    return {c.name: c for c in translate_clusters(snap, SERVER)}


def rule(mode: str) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "trafficPolicy": {"tls": {"mode": mode}}},
    }


def test_istio_mutual_gives_a_client_certificate_provider_tls_context() -> None:
    found = clusters(rule("ISTIO_MUTUAL"))[CLUSTER]
    context = tls_pb2.UpstreamTlsContext()
    found.transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    assert common.tls_certificate_provider_instance.instance_name == "default"
    validation = common.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == "default"
    assert [m.exact for m in validation.match_subject_alt_names] == [
        "spiffe://cluster.local/ns/default/sa/rev"
    ]
    assert not common.HasField("tls_params") and not common.alpn_protocols
    assert not found.transport_socket_matches  # grpc reads no per-endpoint matches


@pytest.mark.parametrize("mode", [None, "DISABLE", "SIMPLE"])
def test_other_modes_stay_plaintext_for_grpc(mode: str | None) -> None:
    found = clusters(*([rule(mode)] if mode else []))[CLUSTER]
    assert not found.HasField("transport_socket") and not found.transport_socket_matches
