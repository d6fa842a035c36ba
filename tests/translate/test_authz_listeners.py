"""Where the authorization filters land in a proxy's listeners: inbound
chains of the workloads a policy selects, first, in Istio's order; gateways
by their own labels; nothing for proxies no policy selects; the mesh config
read from ConfigMap istio-system/istio."""

from __future__ import annotations

import json
from typing import Any

import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.json_format import MessageToDict
from translate_sim import BOOKINFO_INSTANCES, BOOKINFO_SERVICES, INGRESS, PRODUCTPAGE, load_file

from pilotfish.model import Proxy, build_snapshot
from pilotfish.translate import translate_listeners
from pilotfish.translate.authz import authz_settings

Obj = dict[str, Any]
REVIEWS_V2 = Proxy(
    node_id="sidecar~127.0.0.1~reviews-v2-0.default~default.svc.cluster.local",
    namespace="default",
    labels={"app": "reviews", "version": "v2"},
    workload="reviews-v2",
)


def policy(name: str, namespace: str, spec: Obj) -> Obj:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


MESH = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "istio", "namespace": "istio-system"},
    "data": {
        "mesh": yaml.safe_dump(
            {
                "trustDomain": "example.org",
                "trustDomainAliases": ["old.example.org"],
                "extensionProviders": [
                    {
                        "name": "authz",
                        "envoyExtAuthzHttp": {
                            "service": "reviews.default.svc.cluster.local",
                            "port": 9080,
                        },
                    }
                ],
            }
        )
    },
}
POLICIES = [
    policy(
        "reviews-deny",
        "default",
        {"selector": {"matchLabels": {"app": "reviews"}}, "action": "DENY", "rules": [{}]},
    ),
    policy(
        "reviews-allow", "default", {"selector": {"matchLabels": {"app": "reviews"}}, "rules": [{}]}
    ),
    policy(
        "reviews-custom",
        "default",
        {
            "selector": {"matchLabels": {"app": "reviews"}},
            "action": "CUSTOM",
            "provider": {"name": "authz"},
            "rules": [{}],
        },
    ),
    policy(
        "gateway-allow",
        "istio-system",
        {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "rules": [{}]},
    ),
]


def inbound_hcm(snapshot: Any, proxy: Proxy) -> hcm_pb2.HttpConnectionManager:
    listeners = [
        lst for lst in translate_listeners(snapshot, proxy) if lst.name.startswith("inbound_")
    ]
    assert listeners
    hcm = hcm_pb2.HttpConnectionManager()
    listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def inbound_filters(snapshot: Any, proxy: Proxy) -> list[str]:
    return [f.name for f in inbound_hcm(snapshot, proxy).http_filters]


def rbac_configs(snapshot: Any, proxy: Proxy) -> list[Obj]:
    hcm = inbound_hcm(snapshot, proxy)
    return [MessageToDict(f.typed_config) for f in hcm.http_filters if f.name.endswith(".rbac")]


def test_selected_inbound_chains_start_with_custom_then_deny_then_allow() -> None:
    snapshot = build_snapshot([*BOOKINFO_SERVICES, *POLICIES, MESH], BOOKINFO_INSTANCES)
    assert inbound_filters(snapshot, REVIEWS_V2) == [
        "envoy.filters.http.rbac",  # CUSTOM's shadow rules
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.rbac",  # DENY
        "envoy.filters.http.rbac",  # ALLOW
        "envoy.filters.http.cors",
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]
    assert "envoy.filters.http.rbac" not in inbound_filters(snapshot, PRODUCTPAGE)


def test_gateways_get_the_policies_selecting_them() -> None:
    config = [*BOOKINFO_SERVICES, *load_file("bookinfo-gateway.yaml")]
    for policies, first in ((POLICIES, "envoy.filters.http.rbac"), ([], "envoy.filters.http.cors")):
        listeners = translate_listeners(
            build_snapshot([*config, *policies], BOOKINFO_INSTANCES), INGRESS
        )
        assert listeners
        for listener in listeners:
            hcm = hcm_pb2.HttpConnectionManager()
            listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
            assert hcm.http_filters[0].name == first


def test_settings_come_from_the_mesh_config() -> None:
    settings = authz_settings(
        build_snapshot([*BOOKINFO_SERVICES, MESH], trust_domain="example.org")
    )
    assert settings.trust_domains == ("example.org", "old.example.org")
    assert [p["name"] for p in settings.providers] == ["authz"]
    assert settings.services["reviews.default.svc.cluster.local"] == ("default",)
    assert authz_settings(build_snapshot([])).trust_domains == ("cluster.local",)


def test_the_trust_domain_is_the_one_identities_are_signed_in() -> None:
    """--trust-domain (the snapshot's, which the CA signs in) is the policies'
    trust domain, also when the mesh config names another: a principal
    written as cluster.local/... means the mesh's own domain, as in Istio."""
    viewer = policy(
        "reviews-viewer",
        "default",
        {
            "selector": {"matchLabels": {"app": "reviews"}},
            "rules": [
                {
                    "from": [
                        {
                            "source": {
                                "principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]
                            }
                        }
                    ]
                }
            ],
        },
    )
    snapshot = build_snapshot(
        [*BOOKINFO_SERVICES, MESH, viewer], BOOKINFO_INSTANCES, trust_domain="corp.example"
    )
    assert authz_settings(snapshot).trust_domains == ("corp.example", "old.example.org")
    principals = json.dumps(rbac_configs(snapshot, REVIEWS_V2))
    assert "spiffe://corp.example/ns/default/sa/bookinfo-productpage" in principals
    assert "spiffe://example.org/" not in principals
