"""Configurations the proxy cannot honour are refused whole, naming the field (-> NACK)."""

from typing import Any

import pytest
from routing_sim import one_host, table

from pilotfish.proxy.routing import RouteConfigError


def refused(*routes: dict[str, Any], **vhost: Any) -> str:
    with pytest.raises(RouteConfigError) as e:
        one_host(*routes, **vhost)
    return str(e.value)


def route(match: dict[str, Any] | None = None, **action: Any) -> dict[str, Any]:
    return {"match": match or {"prefix": "/"}, "route": {"cluster": "c", **action}}


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        (
            route(
                {
                    "prefix": "/",
                    "dynamic_metadata": [
                        {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": True}}
                    ],
                }
            ),
            "virtual_hosts[0].routes[0].match.dynamic_metadata",
        ),
        (
            route(hedge_policy={"hedge_on_per_try_timeout": True}),
            "virtual_hosts[0].routes[0].route.hedge_policy",
        ),
        (
            route(rate_limits=[{"actions": [{"remote_address": {}}]}]),
            "virtual_hosts[0].routes[0].route.rate_limits",
        ),
        (
            route(
                hash_policy=[{"cookie": {"name": "s", "attributes": [{"name": "a", "value": "b"}]}}]
            ),
            "virtual_hosts[0].routes[0].route.hash_policy[0].cookie.attributes",
        ),
    ],
)
def test_unsupported_fields_are_named(bad: dict[str, Any], path: str) -> None:
    assert refused(bad).startswith(f"{path}: field not supported by pilotfish")


def test_unsupported_vhost_field() -> None:
    assert refused(route(), rate_limits=[{"stage": 1}]).startswith(
        "virtual_hosts[0].rate_limits: field not supported"
    )


@pytest.mark.parametrize(
    ("regex", "why"),
    [
        ("/a(", "missing \\)"),
        ("/(a)\\1", "RE2 does not support backreferences"),
        ("/(?=a)", "RE2 does not support lookahead"),
        ("/(?<!a)b", "RE2 does not support negative lookbehind"),
        ("/a*+", "RE2 does not support possessive quantifiers"),
        ("/(?>a)", "RE2 does not support atomic groups"),
        ("/a{1001}", "repeat count above 1000"),
        ("/\\pL", "pilotfish does not support \\\\p"),
        ("/[[:alpha:]]", "pilotfish does not support POSIX classes"),
    ],
)
def test_invalid_regex_is_refused_with_its_path(regex: str, why: str) -> None:
    message = refused(route({"safe_regex": {"regex": regex}}))
    assert message.startswith("virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex")
    assert why.replace("\\\\", "\\").replace("\\)", ")") in message or why in message


def test_invalid_header_regex_path() -> None:
    message = refused(
        route({"prefix": "/", "headers": [{"name": "x", "safe_regex_match": {"regex": "(?!x)"}}]})
    )
    assert message.startswith(
        "virtual_hosts[0].routes[0].match.headers[0].safe_regex_match.regex: invalid regex"
    )


def test_substitution_naming_a_missing_group() -> None:
    message = refused(route(regex_rewrite={"pattern": {"regex": "/(a)"}, "substitution": "\\2"}))
    assert message.startswith("virtual_hosts[0].routes[0].route.regex_rewrite.substitution:")


@pytest.mark.parametrize(
    ("bad", "start"),
    [
        (
            route(retry_policy={"retry_on": "5xx,bogus"}),
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on: retry condition 'bogus' is unknown",
        ),
        (
            route(retry_policy={"retry_on": "retriable-headers"}),
            "virtual_hosts[0].routes[0].route.retry_policy.retry_on: retry condition 'retriable-headers' is not supported",
        ),
        (
            route() | {"request_headers_to_add": [{"header": {"key": ":path", "value": "/x"}}]},
            "virtual_hosts[0].routes[0].request_headers_to_add[0].header.key",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "c"},
                "response_headers_to_add": [{"header": {"key": "x", "value": "%START_TIME%"}}],
            },
            "virtual_hosts[0].routes[0].response_headers_to_add[0].header: header value formatters",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}},
            },
            "virtual_hosts[0].routes[0].route.weighted_clusters.clusters: weights must add up",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {
                        "clusters": [{"name": "a", "weight": 1}],
                        "total_weight": 100,
                    }
                },
            },
            "virtual_hosts[0].routes[0].route.weighted_clusters.total_weight: is 100",
        ),
        (
            {
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "x" * 4097}},
            },
            "virtual_hosts[0].routes[0].direct_response.body: 4097 bytes",
        ),
        (
            {
                "match": {"prefix": "/"},
                "typed_per_filter_config": {
                    "envoy.filters.http.fault": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    }
                },
                "route": {"cluster": "c"},
            },
            "virtual_hosts[0].routes[0].typed_per_filter_config['envoy.filters.http.fault']: expected",
        ),
    ],
)
def test_invalid_values_are_refused_with_their_path(bad: dict[str, Any], start: str) -> None:
    assert refused(bad).startswith(start)


def test_one_bad_route_refuses_the_whole_config() -> None:
    with pytest.raises(RouteConfigError):
        table(
            {
                "name": "r",
                "virtual_hosts": [
                    {"name": "good", "domains": ["a"], "routes": [route()]},
                    {
                        "name": "bad",
                        "domains": ["b"],
                        "routes": [route({"safe_regex": {"regex": "("}})],
                    },
                ],
            }
        )
