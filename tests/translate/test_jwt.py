"""RequestAuthentication -> jwt_authn, against istiod's expected filters.

Ported from istio/istio pilot/pkg/security/authn/policy_applier_test.go:
TestJwtFilter ("No policy", "Empty policy", "Single JWT policy", "JWT policy
with bad Jwks URI", "Forward original token", "Output payload", "Output claim
to header") and TestConvertToEnvoyJwtConfig ("Multiple JWT rule"). Istio's
cases in remote-jwks fetch modes (Envoy/Hybrid) are not claimed: pilotfish
fetches every jwksUri in the control plane and sends keys inline, which is
istiod's default (Istiod) mode.
"""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from translate_sim import BOOKINFO_SERVICES, INGRESS, instance, load_file

from pilotfish.model import Proxy, build_snapshot
from pilotfish.proxy.listeners import compile_listener
from pilotfish.translate import translate_listeners
from pilotfish.translate.jwt import (
    FAKE_JWKS,
    applicable,
    translate_jwt_authn,
    translate_jwt_filter,
)

URI = "http://jwks.example/oauth2/v3/certs"
KEYS = '{"keys":[{"kty":"RSA","e":"AQAB","n":"xyz"}]}'
FETCHED = {URI: KEYS}
NORMALIZE = {"space_delimited_claims": ["permission", "scope"]}


def policy(*rules: dict[str, Any], ns: str = "foo", selector: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"jwtRules": list(rules)} if rules else {}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": f"ra-{len(rules)}", "namespace": ns},
        "spec": spec,
    }


def provider(issuer: str, jwks: str = KEYS, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "local_jwks": {"inline_string": jwks},
        "payload_in_metadata": "payload",
        "normalize_payload_in_metadata": NORMALIZE,
        **extra,
    }


def single(p: dict[str, Any]) -> dict[str, Any]:
    requires = {
        "requires_any": {"requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]}
    }
    return {
        "providers": {"origins-0": p},
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "bypass_cors_preflight": True,
    }


def built(*policies: dict[str, Any]) -> dict[str, Any] | None:
    http_filter = translate_jwt_filter(list(policies), FETCHED)
    if http_filter is None:
        return None
    assert http_filter.name == "envoy.filters.http.jwt_authn"
    config = config_pb2.JwtAuthentication()
    assert http_filter.typed_config.Unpack(config)
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


FOO = "https://secret.foo.com"


def test_no_policy_and_empty_policy_build_no_filter() -> None:
    assert built() is None
    assert built(policy()) is None


def test_single_jwt_policy() -> None:
    assert built(policy({"issuer": FOO, "jwksUri": URI})) == single(provider(FOO))


def test_a_jwks_uri_without_keys_gets_the_fake_key() -> None:
    got = built(policy({"issuer": FOO, "jwksUri": "http://site.not.exist"}))
    assert got == single(provider(FOO, FAKE_JWKS))


def test_forward_original_token() -> None:
    got = built(policy({"issuer": FOO, "jwksUri": URI, "forwardOriginalToken": True}))
    assert got == single(provider(FOO, forward=True))


def test_output_payload() -> None:
    rule = {"issuer": FOO, "jwksUri": URI, "forwardOriginalToken": True}
    got = built(policy({**rule, "outputPayloadToHeader": "x-foo"}))
    assert got == single(provider(FOO, forward=True, forward_payload_header="x-foo"))


def test_output_claim_to_header() -> None:
    claims = [
        {"header": "x-jwt-key1", "claim": "value1"},
        {"header": "x-jwt-key2", "claim": "value2"},
    ]
    rule = {"issuer": FOO, "jwksUri": URI, "forwardOriginalToken": True}
    got = built(policy({**rule, "outputClaimToHeaders": claims}))
    expected = [
        {"header_name": "x-jwt-key1", "claim_name": "value1"},
        {"header_name": "x-jwt-key2", "claim_name": "value2"},
    ]
    assert got == single(provider(FOO, forward=True, claim_to_headers=expected))


def test_multiple_jwt_rules() -> None:
    rules = [
        {"issuer": FOO, "jwksUri": URI},
        {"issuer": "https://secret.bar.com", "jwks": "jwks-inline-data"},
    ]
    got = json_format.MessageToDict(
        translate_jwt_authn(rules, FETCHED), preserving_proto_field_name=True
    )
    either = [{"provider_name": n} for n in ("origins-0", "origins-1")]
    inner = [{"requires_any": {"requirements": [p, {"allow_missing": {}}]}} for p in either]
    requires = {
        "requires_any": {"requirements": [*either, {"requires_all": {"requirements": inner}}]}
    }
    assert got == {
        "providers": {
            "origins-0": provider(FOO),
            "origins-1": provider("https://secret.bar.com", "jwks-inline-data"),
        },
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "bypass_cors_preflight": True,
    }


def test_policies_merge_sorted_by_issuer() -> None:
    """newPolicyApplier sorts every applicable policy's rules by issuer."""
    got = built(policy({"issuer": "https://z"}), policy({"issuer": "https://a", "jwks": KEYS}))
    assert got is not None
    assert got["providers"]["origins-0"]["issuer"] == "https://a"
    assert got["providers"]["origins-1"]["issuer"] == "https://z"


def test_headers_params_cookies_and_space_delimited_claims() -> None:
    rule = {
        "issuer": FOO,
        "jwks": KEYS,
        "fromHeaders": [{"name": "x-jwt", "prefix": "Tok "}, {"name": "x-raw"}],
        "fromParams": ["token"],
        "fromCookies": ["session"],
        "spaceDelimitedClaims": ["roles", "scope"],
    }
    p = built(policy(rule))["providers"]["origins-0"]  # type: ignore[index]
    assert p["from_headers"] == [{"name": "x-jwt", "value_prefix": "Tok "}, {"name": "x-raw"}]
    assert p["from_params"] == ["token"] and p["from_cookies"] == ["session"]
    assert p["normalize_payload_in_metadata"]["space_delimited_claims"] == [
        "permission",
        "roles",
        "scope",
    ]


def test_which_policies_apply() -> None:
    mesh = policy({"issuer": "m"}, ns="istio-system")
    mesh_selected = policy({"issuer": "ms"}, ns="istio-system", selector={"app": "a"})
    namespace = policy({"issuer": "n"}, ns="foo")
    mine = policy({"issuer": "w"}, ns="foo", selector={"app": "a"})
    theirs = policy({"issuer": "t"}, ns="foo", selector={"app": "b"})
    other_ns = policy({"issuer": "o"}, ns="bar")
    every = [mesh, mesh_selected, namespace, mine, theirs, other_ns]
    got = applicable(every, "foo", {"app": "a", "version": "v1"})
    assert got == [mesh, namespace, mine]


def test_inbound_listener_puts_jwt_authn_first_and_the_sidecar_takes_it() -> None:
    inst = instance("reviews", "v1", 19083)
    ra = policy({"issuer": FOO, "jwksUri": URI}, ns="default", selector={"app": "reviews"})
    other = policy({"issuer": FOO, "jwksUri": URI}, ns="default", selector={"app": "ratings"})
    proxy = Proxy(node_id="sidecar~127.0.0.1~reviews-v1-0.default~x", namespace="default")

    def inbound_filters(*objects: dict[str, Any]) -> list[str]:
        snap = build_snapshot([*BOOKINFO_SERVICES, *objects], [inst], jwks=FETCHED)
        (listener,) = [x for x in translate_listeners(snap, proxy) if x.name.startswith("inbound")]
        compile_listener(listener)  # the sidecar accepts it
        hcm = listener.filter_chains[0].filters[0].typed_config
        manager = hcm_pb2.HttpConnectionManager()
        hcm.Unpack(manager)
        return [f.name for f in manager.http_filters]

    assert inbound_filters(ra)[0] == "envoy.filters.http.jwt_authn"
    assert "envoy.filters.http.jwt_authn" not in inbound_filters(other)


def test_an_ingress_gateway_selected_in_the_root_namespace_gets_the_filter() -> None:
    """Istio's 'JWT at the ingress gateway' task: a policy in istio-system
    selecting istio: ingressgateway."""
    ra = policy(
        {"issuer": FOO, "jwksUri": URI}, ns="istio-system", selector={"istio": "ingressgateway"}
    )
    objects = [*BOOKINFO_SERVICES, *load_file("bookinfo-gateway.yaml"), ra]
    snap = build_snapshot(objects, [], jwks=FETCHED)
    (listener,) = translate_listeners(snap, INGRESS)
    compile_listener(listener)
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.http_filters[0].name == "envoy.filters.http.jwt_authn"
    snap = build_snapshot([*objects[:-1]], [], jwks=FETCHED)
    (listener,) = translate_listeners(snap, INGRESS)
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert "envoy.filters.http.jwt_authn" not in [f.name for f in manager.http_filters]
