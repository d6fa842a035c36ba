"""The jwt_authn filter by simulation: Istio-shaped configs, tokens signed here
with PyJWT, what a caller sees (status, Envoy's body, www-authenticate), and
what a request carries on (headers, dynamic metadata)."""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2
from filters_sim import chain, per_route
from google.protobuf import json_format

from pilotfish.proxy.filters import FilterConfigError, LocalReply, Proceed
from pilotfish.proxy.filters.base import Exchange
from pilotfish.proxy.filters.jwt_authn import JwtAuthnFilter, compile_jwt_authn
from pilotfish.proxy.routing.request import Request

ISSUER = "https://issuer.example"
NOW = 1_800_000_000
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    out: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
    return {**out, "kid": kid, "alg": alg}


JWKS = json.dumps(
    {"keys": [jwk(RSA_KEY, "rsa", "RS256"), jwk(EC_KEY, "ec", "ES256"), jwk(ED_KEY, "ed", "EdDSA")]}
)
SIGNERS = {"RS256": (RSA_KEY, "rsa"), "ES256": (EC_KEY, "ec"), "EdDSA": (ED_KEY, "ed")}


def token(alg: str = "RS256", key: Any = None, kid: str | None = None, **claims: Any) -> str:
    private, default_kid = SIGNERS[alg]
    payload = {"iss": ISSUER, "sub": "alice", "exp": NOW + 600, **claims}
    headers = {"kid": kid or default_kid}
    return jwt.encode(payload, key or private, algorithm=alg, headers=headers)


def provider(**extra: Any) -> dict[str, Any]:
    """A provider as istiod writes one (policy_applier.go convertToEnvoyJwtConfig)."""
    return {
        "issuer": ISSUER,
        "local_jwks": {"inline_string": JWKS},
        "payload_in_metadata": "payload",
        "normalize_payload_in_metadata": {"space_delimited_claims": ["permission", "scope"]},
        **extra,
    }


def istio_config(*providers: dict[str, Any]) -> config_pb2.JwtAuthentication:
    names = [f"origins-{i}" for i in range(len(providers))]
    inner = [
        {"requires_any": {"requirements": [{"provider_name": n}, {"allow_missing": {}}]}}
        for n in names
    ]
    requires = (
        inner[0]
        if len(inner) == 1
        else {
            "requires_any": {
                "requirements": [{"provider_name": n} for n in names]
                + [{"requires_all": {"requirements": inner}}]
            }
        }
    )
    config = {
        "providers": dict(zip(names, providers, strict=True)),
        "rules": [{"match": {"prefix": "/"}, "requires": requires}],
        "bypass_cors_preflight": True,
    }
    return json_format.ParseDict(config, config_pb2.JwtAuthentication())


def run(
    config: config_pb2.JwtAuthentication,
    headers: dict[str, str] | None = None,
    path: str = "/api?x=1",
    method: str = "GET",
) -> tuple[Exchange, Any]:
    flt = JwtAuthnFilter("jwt", compile_jwt_authn(config, "jwt"), now=lambda: NOW)
    pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    req = Request(method=method.encode(), path=path.encode(), authority=b"svc:80", headers=pairs)
    ex = Exchange(req)
    return ex, flt.decode(ex, random.Random(0))


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def upstream_headers(ex: Exchange, headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    for mutation in ex.upstream_headers:
        mutation.apply(headers)
    return dict(headers)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_a_valid_token_passes_with_its_payload_and_principal_in_metadata(alg: str) -> None:
    ex, step = run(istio_config(provider()), bearer(token(alg, aud="bookinfo", azp="web")))
    assert isinstance(step, Proceed)
    payload = ex.dynamic_metadata["envoy.filters.http.jwt_authn"]["payload"]
    assert payload["sub"] == "alice" and payload["iss"] == ISSUER
    authn = ex.dynamic_metadata["istio_authn"]
    assert authn["request.auth.principal"] == f"{ISSUER}/alice"
    assert authn["request.auth.audiences"] == ["bookinfo"]
    assert authn["request.auth.presenter"] == "web"
    assert authn["request.auth.claims"]["sub"] == "alice"


def test_a_missing_token_passes_with_no_principal() -> None:
    ex, step = run(istio_config(provider()))
    assert isinstance(step, Proceed)
    assert ex.dynamic_metadata == {}


def denied(step: Any, status: int, body: str) -> dict[bytes, bytes]:
    assert isinstance(step, LocalReply), step
    assert (step.status, step.body.decode()) == (status, body)
    assert step.details == "jwt_authn_access_denied{" + body.replace(" ", "_") + "}"
    return dict(step.headers)


@pytest.mark.parametrize(
    ("claims", "status", "body"),
    [
        ({"exp": NOW - 61}, 401, "Jwt is expired"),
        ({"nbf": NOW + 61}, 401, "Jwt not yet valid"),
        ({"iss": "https://someone.else"}, 401, "Jwt issuer is not configured"),
        ({"aud": ["other"]}, 403, "Audiences in Jwt are not allowed"),
    ],
)
def test_bad_claims_are_refused_with_envoys_status(
    claims: dict[str, Any], status: int, body: str
) -> None:
    config = istio_config(provider(audiences=["bookinfo"]))
    _, step = run(config, bearer(token(**claims)))
    headers = denied(step, status, body)
    assert (
        headers[b"www-authenticate"] == b'Bearer realm="http://svc:80/api", error="invalid_token"'
    )
    assert headers[b"content-type"] == b"text/plain"


def test_the_clock_skew_is_sixty_seconds() -> None:
    config = istio_config(provider())
    assert isinstance(run(config, bearer(token(exp=NOW - 59)))[1], Proceed)
    assert isinstance(run(config, bearer(token(nbf=NOW + 59)))[1], Proceed)


def test_a_token_signed_by_another_key_fails_verification() -> None:
    _, step = run(istio_config(provider()), bearer(token(key=OTHER_RSA)))
    denied(step, 401, "Jwt verification fails")


def test_a_tampered_payload_fails_verification() -> None:
    head, _, sig = token().split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"iss": ISSUER, "sub": "root"}).encode())
    _, step = run(istio_config(provider()), bearer(f"{head}.{forged.decode().rstrip('=')}.{sig}"))
    denied(step, 401, "Jwt verification fails")


def test_a_kid_no_key_has_is_envoys_kid_alg_mismatch() -> None:
    _, step = run(istio_config(provider()), bearer(token(kid="gone")))
    denied(step, 401, "Jwks doesn't have key to match kid or alg from Jwt")


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        ("abc.def", "Jwt is not in the form of Header.Payload.Signature"),
        ("e30.e30.e30", "Jwt header [alg] field is not a string"),
        ("eyJhbGciOiJub25lIn0.e30.", "Jwt header [alg] field value is invalid"),
        ("eyJhbGciOiJSUzI1NiJ9.bm90anNvbg.", "Jwt payload is an invalid Base64 or an invalid JSON"),
        ("bm90anNvbg.e30.", "Jwt header is an invalid Base64url input or an invalid JSON"),
    ],
)
def test_malformed_tokens_get_the_parse_status(raw: str, body: str) -> None:
    denied(run(istio_config(provider()), bearer(raw))[1], 401, body)


def test_a_provider_whose_jwks_is_unusable_fails_every_token() -> None:
    _, step = run(istio_config(provider(local_jwks={"inline_string": "not json"})), bearer(token()))
    denied(step, 401, "Jwks remote fetch is failed")


def test_the_token_header_is_stripped_unless_forward() -> None:
    headers = bearer(token())
    ex, _ = run(istio_config(provider()), headers)
    assert b"authorization" not in upstream_headers(ex, [(b"authorization", b"x")])
    ex, _ = run(istio_config(provider(forward=True)), headers)
    assert upstream_headers(ex, [(b"authorization", b"x")])[b"authorization"] == b"x"


def test_payload_and_claims_go_to_headers() -> None:
    config = istio_config(
        provider(
            forward_payload_header="x-jwt-payload",
            claim_to_headers=[
                {"header_name": "x-sub", "claim_name": "sub"},
                {"header_name": "x-tier", "claim_name": "org.tier"},
                {"header_name": "x-absent", "claim_name": "nope"},
            ],
        )
    )
    tok = token(org={"tier": "gold"}, scope="read write")
    ex, _ = run(config, bearer(tok))
    got = upstream_headers(ex, [(b"x-sub", b"spoofed")])
    assert got[b"x-jwt-payload"] == tok.split(".")[1].encode()
    assert got[b"x-sub"] == b"alice" and got[b"x-tier"] == b"gold"
    assert b"x-absent" not in got
    payload = ex.dynamic_metadata["envoy.filters.http.jwt_authn"]["payload"]
    assert payload["scope"] == ["read", "write"]  # normalize_payload_in_metadata


def test_tokens_from_params_cookies_and_custom_headers() -> None:
    tok = token()
    custom = provider(from_headers=[{"name": "x-token", "value_prefix": "Tok "}])
    assert isinstance(run(istio_config(custom), {"X-Token": f"Tok {tok}"})[1], Proceed)
    # The default locations include the access_token query parameter.
    ex, step = run(istio_config(provider()), path=f"/api?access_token={tok}")
    assert isinstance(step, Proceed) and "istio_authn" in ex.dynamic_metadata
    by_cookie = provider(from_cookies=["session"])
    ex, step = run(istio_config(by_cookie), {"Cookie": f"a=b; session={tok}"})
    assert isinstance(step, Proceed) and "istio_authn" in ex.dynamic_metadata
    # A configured location replaces the defaults: a bearer token is not looked for.
    ex, step = run(istio_config(by_cookie), bearer("garbage"))
    assert isinstance(step, Proceed) and ex.dynamic_metadata == {}


def test_two_providers_each_token_judged_by_its_issuer() -> None:
    second = provider(issuer="https://second.example")
    config = istio_config(provider(), second)
    ex, step = run(config, bearer(token(iss="https://second.example")))
    assert isinstance(step, Proceed)
    assert ex.dynamic_metadata["istio_authn"]["request.auth.principal"].startswith("https://second")
    denied(
        run(config, bearer(token(iss="https://third.example")))[1],
        401,
        "Jwt issuer is not configured",
    )
    assert isinstance(run(config)[1], Proceed)


def test_cors_preflight_bypasses() -> None:
    headers = {**bearer("garbage"), "Origin": "http://a", "Access-Control-Request-Method": "GET"}
    assert isinstance(run(istio_config(provider()), headers, method="OPTIONS")[1], Proceed)


def test_a_grpc_caller_gets_unauthenticated() -> None:
    headers = {**bearer(token(exp=NOW - 3600)), "content-type": "application/grpc"}
    _, step = run(istio_config(provider()), headers)
    assert isinstance(step, LocalReply)
    got = dict(step.headers)
    assert got[b"grpc-status"] == b"16" and got[b"grpc-message"] == b"Jwt is expired"


def test_the_chain_takes_the_filter_and_refuses_remote_jwks() -> None:
    config = json_format.MessageToDict(istio_config(provider()), preserving_proto_field_name=True)
    typed = {"@type": "type.googleapis.com/" + config_pb2.JwtAuthentication.DESCRIPTOR.full_name}
    built = chain({"name": "envoy.filters.http.jwt_authn", "typed_config": {**typed, **config}})
    assert "envoy.filters.http.jwt_authn" in repr(built)
    remote = provider(remote_jwks={"http_uri": {"uri": "http://x/jwks", "cluster": "c"}})
    del remote["local_jwks"]
    with pytest.raises(FilterConfigError, match="remote_jwks"):
        compile_jwt_authn(istio_config(remote), "jwt")


def test_real_clock_default_is_wall_time() -> None:
    flt = JwtAuthnFilter("jwt", compile_jwt_authn(istio_config(provider()), "jwt"))
    assert abs(flt.now() - time.time()) < 5


def test_a_cached_token_still_expires() -> None:
    """Envoy's jwt cache skips the signature of a token seen before, never its time."""
    now = [NOW]
    flt = JwtAuthnFilter("jwt", compile_jwt_authn(istio_config(provider()), "jwt"), lambda: now[0])
    headers = [(b"authorization", b"Bearer " + token(exp=NOW + 10).encode())]

    def decode() -> Any:
        req = Request(method=b"GET", path=b"/", authority=b"svc", headers=headers)
        return flt.decode(Exchange(req), random.Random(0))

    assert isinstance(decode(), Proceed)
    assert isinstance(decode(), Proceed)  # from the cache
    now[0] = NOW + 71
    denied(decode(), 401, "Jwt is expired")


def test_with_two_providers_the_real_error_beats_unknown_issuer() -> None:
    """Envoy's AnyVerifier: a token of the second issuer whose keys do not match
    reports that, not the first provider's 'issuer is not configured'."""
    second = provider(issuer="https://second.example", local_jwks={"inline_string": '{"keys": []}'})
    keyless = provider(issuer="https://second.example")
    keyless["local_jwks"] = {
        "inline_string": json.dumps({"keys": [jwk(OTHER_RSA, "other", "RS256")]})
    }
    config = istio_config(provider(), keyless)
    _, step = run(config, bearer(token(iss="https://second.example")))
    denied(step, 401, "Jwks doesn't have key to match kid or alg from Jwt")
    _, step = run(istio_config(provider(), second), bearer(token(iss="https://second.example")))
    denied(step, 401, "Jwks remote fetch is failed")


def test_forged_output_headers_are_removed_from_requests_without_a_token() -> None:
    """Envoy's sanitizeHeaders: x-jwt-payload and claim headers only ever come
    from a verified token."""
    config = istio_config(
        provider(
            forward_payload_header="x-jwt-payload",
            claim_to_headers=[{"header_name": "x-jwt-sub", "claim_name": "sub"}],
        )
    )
    forged = {"x-jwt-payload": "e30", "x-jwt-sub": "admin"}
    ex, step = run(config, forged)
    assert isinstance(step, Proceed)
    got = upstream_headers(ex, [(b"x-jwt-payload", b"e30"), (b"x-jwt-sub", b"admin"), (b"a", b"b")])
    assert got == {b"a": b"b"}
    ex, _ = run(config, {**forged, **bearer(token())})
    got = upstream_headers(ex, [(b"x-jwt-sub", b"admin")])
    assert got[b"x-jwt-sub"] == b"alice"


def test_padded_payload_header_and_a_rule_without_requirement() -> None:
    tok = token(pad="x")  # a payload whose base64url needs padding
    assert len(tok.split(".")[1]) % 4 == 2
    config = istio_config(provider(forward_payload_header="x-p", pad_forward_payload_header=True))
    ex, _ = run(config, bearer(tok))
    value = upstream_headers(ex, [])[b"x-p"]
    assert value.rstrip(b"=") == tok.split(".")[1].encode() and len(value) % 4 == 0
    config.rules[0].ClearField("requires")  # no requirement: nothing checked, a bad token passes
    ex, step = run(config, bearer("garbage"))
    assert isinstance(step, Proceed) and ex.dynamic_metadata == {}


def test_clear_route_cache_is_refused() -> None:
    with pytest.raises(FilterConfigError, match="clear_route_cache"):
        compile_jwt_authn(istio_config(provider(clear_route_cache=True)), "jwt")


def test_envoys_counters_allowed_denied_and_cors_preflight_bypassed() -> None:
    """`jwt_authn.allowed|denied|cors_preflight_bypassed` (Envoy's names, in the
    connection manager's scope), under the config's stat_prefix when it has one."""
    config = istio_config(provider())
    preflight = {"Origin": "http://a", "Access-Control-Request-Method": "GET"}
    cases = [
        ({}, "GET", {"jwt_authn.allowed": 1}),  # missing: allowed by the requirement
        (bearer(token()), "GET", {"jwt_authn.allowed": 1}),
        (bearer(token(exp=NOW - 3600)), "GET", {"jwt_authn.denied": 1}),
        (bearer(token(key=OTHER_RSA)), "GET", {"jwt_authn.denied": 1}),
        (
            {**bearer("garbage"), **preflight},
            "OPTIONS",
            {"jwt_authn.allowed": 1, "jwt_authn.cors_preflight_bypassed": 1},
        ),
    ]
    for headers, method, counted in cases:
        ex, _ = run(config, headers, method=method)
        assert dict(ex.counters) == counted, (headers, method)
    config.stat_prefix = "inbound_9080."
    ex, _ = run(config, bearer(token(key=OTHER_RSA)))
    assert dict(ex.counters) == {"jwt_authn.inbound_9080.denied": 1}
    config.rules[0].match.prefix = "/only-here"  # no rule for the path: let through, counted
    ex, _ = run(config, bearer("garbage"))
    assert dict(ex.counters) == {"jwt_authn.inbound_9080.allowed": 1}


JWT_PER_ROUTE_T = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"


def test_a_route_may_turn_the_filter_off_with_per_route_config() -> None:
    """Envoy's PerRouteConfig `disabled: true`: no token is checked there, so
    a bad one passes and nothing is counted; other routes still check."""
    flt = JwtAuthnFilter("jwt", compile_jwt_authn(istio_config(provider()), "jwt"), now=lambda: NOW)
    off = per_route(jwt={"@type": JWT_PER_ROUTE_T, "disabled": True})
    flt.prepare(off)
    assert flt.idle(off)
    bad = [(b"authorization", b"Bearer not.a.jwt")]
    req = Request(method=b"GET", path=b"/", authority=b"svc", headers=bad)
    ex = Exchange(req, off)
    assert isinstance(flt.decode(ex, random.Random(0)), Proceed)
    assert not ex.counters
    assert isinstance(flt.decode(Exchange(req), random.Random(0)), LocalReply)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"requirement_name": "origins"}, "['jwt'].requirement_name: not supported"),
        ({"disabled": False}, "['jwt'].disabled: value must equal true"),
    ],
)
def test_per_route_config_beyond_disabled_is_refused(config: dict[str, Any], field: str) -> None:
    flt = JwtAuthnFilter("jwt", compile_jwt_authn(istio_config(provider()), "jwt"))
    with pytest.raises(FilterConfigError) as raised:
        flt.prepare(per_route(jwt={"@type": JWT_PER_ROUTE_T, **config}))
    assert field in str(raised.value)
