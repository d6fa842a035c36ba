"""Route matches within a virtual host: first match wins; each matcher kind."""

from typing import Any

import pytest
from routing_sim import cluster_for, one_host, request, to


def test_first_matching_route_wins_not_the_longest() -> None:
    t = one_host(to("root", "/"), to("api", "/api"))
    assert cluster_for(t, request("/api/v1")) == "root"
    t = one_host(to("api", "/api"), to("root", "/"))
    assert cluster_for(t, request("/api/v1")) == "api"
    assert cluster_for(t, request("/other")) == "root"


def test_no_route_in_vhost_is_none() -> None:
    assert one_host(to("api", "/api")).route(request("/web")) is None


@pytest.mark.parametrize(
    ("match", "path", "hit"),
    [
        ({"prefix": "/api"}, "/api", True),
        ({"prefix": "/api"}, "/apiary", True),  # a plain prefix is not segment-aware
        ({"prefix": "/api"}, "/API", False),
        ({"prefix": "/api", "case_sensitive": False}, "/API/x", True),
        ({"path": "/login"}, "/login", True),
        ({"path": "/login"}, "/login?next=/", True),  # the query is not part of the path
        ({"path": "/login"}, "/login/", False),
        ({"path": "/login", "case_sensitive": False}, "/LOGIN", True),
        ({"safe_regex": {"regex": "/users/[0-9]+"}}, "/users/42", True),
        ({"safe_regex": {"regex": "/users/[0-9]+"}}, "/users/42/posts", False),  # full match
        ({"safe_regex": {"regex": "/users/[0-9]+"}}, "/users/42?x=1", True),
        ({"path_separated_prefix": "/api"}, "/api", True),
        ({"path_separated_prefix": "/api"}, "/api/v1", True),
        ({"path_separated_prefix": "/api"}, "/api?x", True),
        ({"path_separated_prefix": "/api"}, "/apiary", False),
    ],
)
def test_path_matchers(match: dict[str, Any], path: str, hit: bool) -> None:
    t = one_host({"match": match, "route": {"cluster": "c"}})
    assert (cluster_for(t, request(path)) == "c") is hit


def header_route(matcher: dict[str, Any]) -> Any:
    return one_host(
        {
            "match": {"prefix": "/", "headers": [{"name": "x-user", **matcher}]},
            "route": {"cluster": "hit"},
        },
        to("miss"),
    )


@pytest.mark.parametrize(
    ("matcher", "value", "hit"),
    [
        ({"string_match": {"exact": "jason"}}, "jason", True),
        ({"string_match": {"exact": "jason"}}, "Jason", False),
        ({"string_match": {"exact": "jason", "ignore_case": True}}, "JASON", True),
        ({"string_match": {"prefix": "ja"}}, "jason", True),
        ({"string_match": {"suffix": "son"}}, "jason", True),
        ({"string_match": {"contains": "as"}}, "jason", True),
        ({"string_match": {"contains": "AS", "ignore_case": True}}, "jason", True),
        ({"string_match": {"safe_regex": {"regex": "j.*n"}}}, "jason", True),
        ({"string_match": {"safe_regex": {"regex": "j.*"}}}, "xjason", False),
        ({"exact_match": "jason"}, "jason", True),
        ({"prefix_match": "ja"}, "jason", True),
        ({"suffix_match": "on"}, "jason", True),
        ({"contains_match": "so"}, "jason", True),
        ({"safe_regex_match": {"regex": "\\d{3}"}}, "123", True),
        ({"safe_regex_match": {"regex": "\\d{3}"}}, "1234", False),
        ({"safe_regex_match": {"regex": "\\d{3}"}, "invert_match": True}, "1234", True),
        ({"range_match": {"start": -10, "end": 0}}, "-1", True),
        ({"range_match": {"start": -10, "end": 0}}, "0", False),
        ({"range_match": {"start": -10, "end": 0}}, "abc", False),
        ({"range_match": {"start": -10, "end": 0}, "invert_match": True}, "-1", False),
        ({"present_match": True}, "", True),
        ({"present_match": False}, "x", False),
        ({}, "anything", True),  # no specifier: presence
        ({"string_match": {"exact": "jason"}, "invert_match": True}, "mike", True),
        ({"string_match": {"exact": "jason"}, "invert_match": True}, "jason", False),
    ],
)
def test_header_matchers(matcher: dict[str, Any], value: str, hit: bool) -> None:
    t = header_route(matcher)
    assert cluster_for(t, request(headers={"X-User": value})) == ("hit" if hit else "miss")


@pytest.mark.parametrize(
    ("matcher", "hit"),
    [
        ({"string_match": {"exact": "jason"}}, False),
        (
            {"string_match": {"exact": "jason"}, "invert_match": True},
            False,
        ),  # Envoy: missing never matches a value
        (
            {
                "string_match": {"exact": "jason"},
                "invert_match": True,
                "treat_missing_header_as_empty": True,
            },
            True,
        ),
        ({"string_match": {"exact": ""}, "treat_missing_header_as_empty": True}, True),
        (
            {
                "range_match": {"start": 0, "end": 10},
                "invert_match": True,
                "treat_missing_header_as_empty": True,
            },
            True,
        ),
        ({"present_match": True}, False),
        ({"present_match": True, "invert_match": True}, True),
        ({"present_match": False}, True),
        ({"present_match": False, "invert_match": True}, False),
    ],
)
def test_header_matchers_on_a_missing_header(matcher: dict[str, Any], hit: bool) -> None:
    t = header_route(matcher)
    assert cluster_for(t, request(headers={"other": "x"})) == ("hit" if hit else "miss")


def test_repeated_headers_are_matched_joined_with_commas() -> None:
    t = header_route({"string_match": {"exact": "a,b"}})
    req = request()
    req.headers = [(b"x-user", b"a"), (b"accept", b"*/*"), (b"x-user", b"b")]
    assert cluster_for(t, req) == "hit"


def test_all_header_matchers_must_hold() -> None:
    t = one_host(
        {
            "match": {
                "prefix": "/",
                "headers": [
                    {"name": "a", "string_match": {"exact": "1"}},
                    {"name": "b", "string_match": {"exact": "2"}},
                ],
            },
            "route": {"cluster": "both"},
        },
        to("other"),
    )
    assert cluster_for(t, request(headers={"a": "1", "b": "2"})) == "both"
    assert cluster_for(t, request(headers={"a": "1"})) == "other"


def test_pseudo_headers_read_the_request_line() -> None:
    t = one_host(
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
            },
            "route": {"cluster": "post"},
        },
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": ":authority", "string_match": {"prefix": "admin."}}],
            },
            "route": {"cluster": "admin"},
        },
        to("other"),
    )
    assert cluster_for(t, request(method=b"POST")) == "post"
    assert cluster_for(t, request(host="admin.example.com")) == "admin"
    assert cluster_for(t, request()) == "other"


@pytest.mark.parametrize(
    ("matcher", "path", "hit"),
    [
        ({"name": "debug", "string_match": {"exact": "1"}}, "/?debug=1", True),
        (
            {"name": "debug", "string_match": {"exact": "1"}},
            "/?debug=2&debug=1",
            False,
        ),  # the first value counts
        ({"name": "debug", "string_match": {"exact": "1"}}, "/", False),
        ({"name": "debug", "present_match": True}, "/?x=1&debug", True),
        ({"name": "debug", "present_match": True}, "/?x=1", False),
        ({"name": "q", "string_match": {"prefix": "a%20"}}, "/?q=a%20b", True),  # raw, not decoded
    ],
)
def test_query_parameter_matchers(matcher: dict[str, Any], path: str, hit: bool) -> None:
    t = one_host(
        {"match": {"prefix": "/", "query_parameters": [matcher]}, "route": {"cluster": "hit"}},
        to("miss"),
    )
    assert cluster_for(t, request(path)) == ("hit" if hit else "miss")


def test_grpc_match() -> None:
    t = one_host({"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "grpc"}}, to("http"))
    assert cluster_for(t, request(headers={"content-type": "application/grpc"})) == "grpc"
    assert cluster_for(t, request(headers={"content-type": "application/grpc+proto"})) == "grpc"
    assert cluster_for(t, request(headers={"content-type": "application/grpcx"})) == "http"
    assert cluster_for(t, request(headers={"content-type": "application/json"})) == "http"


def test_runtime_fraction_uses_the_random_value() -> None:
    t = one_host(
        {
            "match": {
                "prefix": "/",
                "runtime_fraction": {"default_value": {"numerator": 25}, "runtime_key": "k"},
            },
            "route": {"cluster": "canary"},
        },
        to("stable"),
    )
    chosen = [cluster_for(t, request(), rand) for rand in range(100)]
    assert chosen.count("canary") == 25
    assert chosen[:25] == ["canary"] * 25


def test_runtime_fraction_with_million_denominator() -> None:
    t = one_host(
        {
            "match": {
                "prefix": "/",
                "runtime_fraction": {"default_value": {"numerator": 1, "denominator": "MILLION"}},
            },
            "route": {"cluster": "canary"},
        },
        to("stable"),
    )
    assert cluster_for(t, request(), 1_000_000) == "canary"
    assert cluster_for(t, request(), 1_000_001) == "stable"


def test_ignore_path_parameters_in_path_matching() -> None:
    from routing_sim import table

    t = table(
        {
            "name": "r",
            "ignore_path_parameters_in_path_matching": True,
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"path": "/a"}, "route": {"cluster": "a"}}],
                }
            ],
        }
    )
    assert cluster_for(t, request("/a;jsessionid=1?x=2")) == "a"


def test_re2_spellings_python_lacks_are_translated() -> None:
    t = one_host(
        {"match": {"safe_regex": {"regex": "/(?<id>[0-9]+)\\z"}}, "route": {"cluster": "c"}}
    )
    assert cluster_for(t, request("/42")) == "c"
    assert cluster_for(t, request("/x")) is None
