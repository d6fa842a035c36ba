"""The CORS filter: the exact headers a browser gets back."""

import random
from typing import Any

import pytest
from filters_sim import CORS_POLICY_T, CORS_T, chain, per_route, request, run

from pilotfish.proxy.filters import FilterConfigError

CORS = "envoy.filters.http.cors"
ORIGIN = "https://app.example.com"


def cors_chain() -> Any:
    return chain({"name": CORS, "typed_config": {"@type": CORS_T}})


def policy(**fields: Any) -> Any:
    fields.setdefault("allow_origin_string_match", [{"exact": ORIGIN}])
    return per_route(**{CORS: {"@type": CORS_POLICY_T, **fields}})


FULL = {
    "allow_methods": "GET,POST",
    "allow_headers": "content-type,x-token",
    "expose_headers": "x-request-id",
    "max_age": "600",
    "allow_credentials": True,
}


def preflight(origin: str = ORIGIN, **extra: str) -> Any:
    headers = {"origin": origin, "access-control-request-method": "POST", **extra}
    return request("OPTIONS", "/api", headers)


def test_preflight_is_answered_by_the_proxy() -> None:
    outcome = run(cors_chain(), preflight(), configs=policy(**FULL))
    assert outcome.status == 200 and outcome.body == b""
    assert outcome.headers == [
        (b"access-control-allow-origin", ORIGIN.encode()),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", b"GET,POST"),
        (b"access-control-allow-headers", b"content-type,x-token"),
        (b"access-control-max-age", b"600"),
        (b"access-control-expose-headers", b"x-request-id"),  # Envoy's encoder adds it too
    ]
    assert outcome.flags == []
    assert outcome.reply is not None and outcome.reply.details == "cors_response"


def test_preflight_with_wildcards_echoes_the_request() -> None:
    configs = policy(allow_methods="*", allow_headers="*")
    req = preflight(**{"access-control-request-headers": "x-a,x-b"})
    outcome = run(cors_chain(), req, configs=configs)
    assert outcome.headers == [
        (b"access-control-allow-origin", ORIGIN.encode()),
        (b"access-control-allow-methods", b"POST"),
        (b"access-control-allow-headers", b"x-a,x-b"),
    ]


def test_simple_request_gets_the_sharing_headers_on_its_response() -> None:
    upstream = [(b"content-type", b"text/html"), (b"access-control-allow-origin", b"*")]
    req = request("GET", "/api", {"origin": ORIGIN})
    outcome = run(cors_chain(), req, configs=policy(**FULL), upstream_headers=upstream)
    assert outcome.status == 0  # forwarded
    assert outcome.headers == [
        (b"content-type", b"text/html"),
        (b"access-control-allow-origin", ORIGIN.encode()),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"x-request-id"),
    ]


def test_a_matcher_that_matches_star_allows_every_origin_and_echoes_it() -> None:
    configs = policy(allow_origin_string_match=[{"exact": "*"}])
    outcome = run(cors_chain(), request(headers={"origin": "https://x.test"}), configs=configs)
    assert outcome.headers == [(b"access-control-allow-origin", b"https://x.test")]


def test_origin_regex_and_prefix_matchers() -> None:
    configs = policy(
        allow_origin_string_match=[
            {"safe_regex": {"regex": r"https://.*\.example\.org"}},
            {"prefix": "http://localhost:"},
        ]
    )
    for origin, allowed in [
        ("https://a.example.org", True),
        ("http://localhost:3000", True),
        ("https://example.org.evil", False),
    ]:
        outcome = run(cors_chain(), request(headers={"origin": origin}), configs=configs)
        assert (outcome.headers != []) == allowed, origin


def test_denied_origin_gets_nothing_and_its_preflight_goes_upstream() -> None:
    configs = policy(**FULL)
    simple = run(cors_chain(), request(headers={"origin": "https://evil.test"}), configs=configs)
    assert simple.headers == []
    forwarded = run(cors_chain(), preflight("https://evil.test"), configs=configs)
    assert forwarded.status == 0 and forwarded.headers == []


def test_denied_preflight_answered_without_allow_origin_when_not_forwarded() -> None:
    configs = policy(forward_not_matching_preflights=False, allow_methods="GET")
    outcome = run(cors_chain(), preflight("https://evil.test"), configs=configs)
    assert outcome.status == 200
    assert outcome.headers == [(b"access-control-allow-methods", b"GET")]


def test_requests_that_are_not_cors_are_left_alone() -> None:
    c, configs = cors_chain(), policy(**FULL)
    assert run(c, request("OPTIONS", "/api"), configs=configs).headers == []
    no_method = run(c, request("OPTIONS", "/api", {"origin": ORIGIN}), configs=configs)
    assert no_method.status == 0  # not a preflight: forwarded, but shared
    assert (b"access-control-allow-origin", ORIGIN.encode()) in no_method.headers
    assert run(c, preflight()).status == 0  # no policy on the route


def test_filter_enabled_fraction() -> None:
    off = policy(**FULL, filter_enabled={"default_value": {"numerator": 0}})
    assert run(cors_chain(), preflight(), configs=off).status == 0
    half = policy(**FULL, filter_enabled={"default_value": {"numerator": 50}})
    rng, n = random.Random(2), 4000
    answered = sum(
        run(cors_chain(), preflight(), rng, configs=half).status == 200 for _ in range(n)
    )
    assert abs(answered - n / 2) < 5 * (n / 4) ** 0.5


def test_shadow_mode_changes_nothing() -> None:
    shadow = policy(
        **FULL,
        filter_enabled={"default_value": {"numerator": 0}},
        shadow_enabled={"default_value": {"numerator": 100}},
    )
    outcome = run(cors_chain(), preflight(), configs=shadow)
    assert outcome.status == 0 and outcome.headers == []


def test_private_network_access() -> None:
    configs = policy(allow_private_network_access=True)
    req = preflight(**{"access-control-request-private-network": "true"})
    outcome = run(cors_chain(), req, configs=configs)
    assert (b"access-control-allow-private-network", b"true") in outcome.headers


def test_route_v3_cors_policy_is_accepted_too() -> None:
    configs = per_route(
        **{
            CORS: {
                "@type": "type.googleapis.com/envoy.config.route.v3.CorsPolicy",
                "allow_origin_string_match": [{"exact": ORIGIN}],
            }
        }
    )
    assert run(cors_chain(), preflight(), configs=configs).status == 200


def test_a_per_route_config_of_the_wrong_type_is_rejected() -> None:
    wrong = per_route(**{CORS: {"@type": CORS_T}})
    with pytest.raises(FilterConfigError) as e:
        cors_chain().prepare(wrong)
    assert str(e.value) == (
        "typed_per_filter_config['envoy.filters.http.cors']: expected "
        "envoy.config.route.v3.CorsPolicy or envoy.extensions.filters.http.cors.v3.CorsPolicy, "
        "got envoy.extensions.filters.http.cors.v3.Cors"
    )
