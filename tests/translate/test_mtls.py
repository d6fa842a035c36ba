"""Mutual TLS decisions by simulation, without sockets: PeerAuthentication's
inheritance into each inbound port's filter chains, and auto mTLS on the
outbound clusters (TLS to endpoints with a sidecar, plaintext to others),
each checked on what the sidecar compiles from the resources."""

from __future__ import annotations

from typing import Any

import pytest
from translate_sim import BOOKINFO_SERVICES, PRODUCTPAGE, instance

from pilotfish.ca.identity import TLS_MODE_LABEL
from pilotfish.model import Instance, Proxy, ProxyType, build_snapshot
from pilotfish.proxy.listeners import compile_listener
from pilotfish.proxy.upstream.compile import compile_cluster
from pilotfish.translate import translate_clusters, translate_endpoints, translate_listeners
from pilotfish.translate.mtls import Mode, inbound_mode

Obj = dict[str, Any]
REVIEWS = Proxy(
    node_id="sidecar~127.0.0.1~reviews-v1-0.default~default.svc.cluster.local",
    namespace="default",
    labels={"app": "reviews", "version": "v1"},
    workload="reviews-v1",
)
SIDECAR = {"envoy.transport_socket_match": {"tlsMode": "istio"}}
CLUSTER = "outbound|9080||reviews.default.svc.cluster.local"


def meshed(app: str, version: str, port: int, account: str = "") -> Instance:
    """An instance whose sidecar holds a certificate (Istio's tlsMode label)."""
    base = instance(app, version, port, service_account=account or f"bookinfo-{app}")
    return Instance(**{**base.__dict__, "labels": {**base.labels, TLS_MODE_LABEL: "istio"}})


def peer_auth(
    name: str,
    mode: str | None,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    ports: dict[int, str] | None = None,
    created: str = "2024-01-01T00:00:00Z",
) -> Obj:
    spec: Obj = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {str(p): {"mode": m} for p, m in ports.items()}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": spec,
    }


MESH = "istio-system"
APP = {"app": "reviews"}


@pytest.mark.parametrize(
    ("policies", "port", "expected"),
    [
        ([], 19083, Mode.PERMISSIVE),  # Istio's default
        ([peer_auth("m", "STRICT", MESH)], 19083, Mode.STRICT),
        ([peer_auth("m", "STRICT", MESH), peer_auth("n", "PERMISSIVE")], 19083, Mode.PERMISSIVE),
        ([peer_auth("m", "STRICT", MESH), peer_auth("n", "UNSET")], 19083, Mode.STRICT),
        ([peer_auth("m", "STRICT", MESH), peer_auth("n", None)], 19083, Mode.STRICT),
        ([peer_auth("n", "DISABLE"), peer_auth("w", "STRICT", selector=APP)], 19083, Mode.STRICT),
        ([peer_auth("n", "STRICT"), peer_auth("w", "UNSET", selector=APP)], 19083, Mode.STRICT),
        # portLevelMtls, by the workload's port; other ports keep the workload's mode
        (
            [peer_auth("w", "STRICT", selector=APP, ports={19083: "DISABLE"})],
            19083,
            Mode.DISABLE,
        ),
        ([peer_auth("w", "STRICT", selector=APP, ports={19099: "DISABLE"})], 19083, Mode.STRICT),
        (
            [peer_auth("n", "STRICT"), peer_auth("w", None, selector=APP, ports={19083: "UNSET"})],
            19083,
            Mode.STRICT,
        ),
        # the oldest of two at the same level wins
        (
            [
                peer_auth("young", "DISABLE", selector=APP, created="2024-06-01T00:00:00Z"),
                peer_auth("old", "STRICT", selector=APP, created="2024-01-01T00:00:00Z"),
            ],
            19083,
            Mode.STRICT,
        ),
        # others' policies do not apply: another namespace, another selector,
        # a root-namespace policy with a selector (it selects istio-system's workloads)
        ([peer_auth("n", "STRICT", namespace="other")], 19083, Mode.PERMISSIVE),
        ([peer_auth("w", "STRICT", selector={"app": "ratings"})], 19083, Mode.PERMISSIVE),
        ([peer_auth("m", "STRICT", MESH, selector=APP)], 19083, Mode.PERMISSIVE),
    ],
)
def test_peer_authentication_inheritance(policies: list[Obj], port: int, expected: Mode) -> None:
    snap = build_snapshot([*BOOKINFO_SERVICES, *policies], [meshed("reviews", "v1", 19083)])
    assert inbound_mode(snap, "default", {"app": "reviews", "version": "v1"}, port) is expected


def inbound(*policies: Obj) -> Any:
    snap = build_snapshot([*BOOKINFO_SERVICES, *policies], [meshed("reviews", "v1", 19083)])
    (listener,) = [
        item for item in translate_listeners(snap, REVIEWS) if item.name.startswith("inbound_")
    ]
    return listener, compile_listener(listener)


def test_permissive_serves_tls_and_plaintext_on_the_port() -> None:
    proto, compiled = inbound()
    assert compiled.plaintext and compiled.tls is not None
    assert compiled.tls.require_client_certificate
    settings = compiled.tls.settings
    assert (settings.certificate, settings.validation) == ("default", "ROOTCA")
    assert settings.min_version.name == "TLSv1_2"
    secure, plain = proto.filter_chains
    assert secure.filter_chain_match.transport_protocol == "tls"
    assert "istio-peer-exchange" in secure.filter_chain_match.application_protocols
    assert plain.filter_chain_match.transport_protocol == "raw_buffer"
    assert [f.name for f in proto.listener_filters] == ["envoy.filters.listener.tls_inspector"]


def test_strict_serves_tls_only_and_disable_plaintext_only() -> None:
    _, strict = inbound(peer_auth("n", "STRICT"))
    assert strict.tls is not None and not strict.plaintext
    proto, disabled = inbound(peer_auth("n", "DISABLE"))
    assert disabled.tls is None and disabled.plaintext
    assert not proto.listener_filters


def clusters(*objects: Obj, instances: list[Instance], proxy: Proxy = PRODUCTPAGE) -> Any:
    snap = build_snapshot([*BOOKINFO_SERVICES, *objects], instances)
    return snap, {c.name: c for c in translate_clusters(snap, proxy)}


def test_auto_mtls_sends_tls_to_sidecars_and_plaintext_to_the_rest() -> None:
    snap, found = clusters(
        instances=[meshed("reviews", "v1", 19083), instance("reviews", "v2", 19084)]
    )
    spec = compile_cluster(found[CLUSTER])
    tls = spec.upstream_tls(SIDECAR)
    assert tls is not None and spec.upstream_tls({}) is None
    assert tls.sni == "outbound_.9080_._.reviews.default.svc.cluster.local"
    assert tls.settings.alpn == ("istio-peer-exchange", "istio-http/1.1", "istio")
    # the service's identities: its endpoints' service accounts (v2's is `default`)
    assert tls.settings.sans == (
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        "spiffe://cluster.local/ns/default/sa/default",
    )
    (assignment,) = translate_endpoints(snap, PRODUCTPAGE, [CLUSTER])
    by_port = {
        e.endpoint.address.socket_address.port_value: e.metadata
        for loc in assignment.endpoints
        for e in loc.lb_endpoints
    }
    assert by_port[19083].filter_metadata["envoy.transport_socket_match"]["tlsMode"] == "istio"
    assert not by_port[19084].filter_metadata


def test_subset_clusters_send_their_sni_and_every_account_is_expected() -> None:
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "subsets": [{"name": "v2", "labels": {"version": "v2"}}]},
    }
    _, found = clusters(
        rule,
        instances=[meshed("reviews", "v1", 19083), meshed("reviews", "v2", 19084, "other")],
    )
    tls = compile_cluster(found["outbound|9080|v2|reviews.default.svc.cluster.local"]).upstream_tls(
        SIDECAR
    )
    assert tls is not None
    assert tls.sni == "outbound_.9080_.v2_.reviews.default.svc.cluster.local"
    assert tls.settings.sans == (
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        "spiffe://cluster.local/ns/default/sa/other",
    )


def test_a_trust_domain_other_than_cluster_local_is_expected_of_servers() -> None:
    snap = build_snapshot(BOOKINFO_SERVICES, [meshed("reviews", "v1", 19083)], "corp.example")
    found = {c.name: c for c in translate_clusters(snap, PRODUCTPAGE)}
    tls = compile_cluster(found[CLUSTER]).upstream_tls(SIDECAR)
    assert tls is not None
    assert tls.settings.sans == ("spiffe://corp.example/ns/default/sa/bookinfo-reviews",)


@pytest.mark.parametrize(("mode", "always_tls"), [("DISABLE", False), ("ISTIO_MUTUAL", True)])
def test_a_destination_rule_tls_mode_overrides_auto_mtls(mode: str, always_tls: bool) -> None:
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "trafficPolicy": {"tls": {"mode": mode}}},
    }
    _, found = clusters(rule, instances=[meshed("reviews", "v1", 19083)])
    spec = compile_cluster(found[CLUSTER])
    assert (spec.upstream_tls({}) is not None) is always_tls
    assert (spec.upstream_tls(SIDECAR) is not None) is always_tls


def test_an_external_service_entry_and_a_proxyless_client_get_no_tls() -> None:
    entry = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "httpbin", "namespace": "default"},
        "spec": {
            "hosts": ["httpbin.org"],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": "10.0.0.1"}],
        },
    }
    snap, _ = clusters(entry, instances=[])
    (assignment,) = translate_endpoints(snap, PRODUCTPAGE, ["outbound|80||httpbin.org"])
    assert not assignment.endpoints[0].lb_endpoints[0].metadata.filter_metadata
    grpc = Proxy(node_id="grpc-client", namespace="default", type=ProxyType.GRPC)
    _, found = clusters(instances=[meshed("reviews", "v1", 19083)], proxy=grpc)
    assert not found[CLUSTER].transport_socket_matches
    assert not found[CLUSTER].HasField("transport_socket")


def test_simple_and_mutual_name_istio_agents_file_backed_secrets() -> None:
    def spec_for(tls: Obj) -> Any:
        rule = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"host": "reviews", "trafficPolicy": {"tls": tls}},
        }
        _, found = clusters(rule, instances=[meshed("reviews", "v1", 19083)])
        return compile_cluster(found[CLUSTER])

    mutual = spec_for(
        {"mode": "MUTUAL", "caCertificates": "/etc/ca.pem", "clientCertificate": "/etc/c.pem",
         "privateKey": "/etc/c.key", "sni": "shop.example", "subjectAltNames": ["spiffe://x/y"]}
    ).upstream_tls({})  # fmt: skip
    assert mutual is not None and mutual.sni == "shop.example"
    assert mutual.settings.certificate == "file-cert:/etc/c.pem~/etc/c.key"
    assert mutual.settings.validation == "file-root:/etc/ca.pem"
    assert mutual.settings.sans == ("spiffe://x/y",)
    simple = spec_for({"mode": "SIMPLE"}).upstream_tls({})
    assert simple is not None and simple.sni == "reviews.default.svc.cluster.local"
    assert (simple.settings.certificate, simple.settings.validation) == ("", "")  # system roots
    # credentialName: Istio's SDS names, which the sidecar does not serve yet (fails closed)
    named = spec_for({"mode": "MUTUAL", "credentialName": "shop-tls"}).upstream_tls({})
    assert named is not None
    assert named.settings.certificate == "kubernetes://shop-tls"
    assert named.settings.validation == "kubernetes://shop-tls-cacert"
