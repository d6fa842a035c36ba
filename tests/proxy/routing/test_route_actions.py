"""What a matched route does: weighted splits, redirects, direct responses, rewrites."""

import random
from typing import Any

import pytest
from routing_sim import cluster_for, one_host, request

from pilotfish.proxy.routing import DirectResponse, Forward, Redirect


def weighted(*pairs: tuple[str, int], **extra: Any) -> Any:
    clusters = [{"name": n, "weight": w} for n, w in pairs]
    return one_host(
        {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": clusters, **extra}}}
    )


def test_weighted_split_holds_within_statistical_bounds() -> None:
    t = weighted(("v1", 80), ("v2", 15), ("v3", 5))
    rng, n = random.Random(7), 100_000
    counts = {"v1": 0, "v2": 0, "v3": 0}
    for _ in range(n):
        counts[cluster_for(t, request(), rng.getrandbits(64))] += 1  # type: ignore[index]
    for name, share in (("v1", 0.80), ("v2", 0.15), ("v3", 0.05)):
        sigma = (n * share * (1 - share)) ** 0.5
        assert abs(counts[name] - n * share) < 5 * sigma, counts


def test_weighted_selection_is_envoys_modulo_walk() -> None:
    t = weighted(("zero", 0), ("a", 30), ("b", 70))
    assert [cluster_for(t, request(), r) for r in (0, 29, 30, 99, 100, 129)] == [
        "a",
        "a",
        "b",
        "b",
        "a",
        "a",
    ]


def test_weighted_random_value_from_header() -> None:
    t = weighted(("a", 50), ("b", 50), header_name="x-split")
    assert cluster_for(t, request(headers={"x-split": "75"}), rand=0) == "b"
    assert cluster_for(t, request(headers={"x-split": "oops"}), rand=0) == "a"


def test_per_cluster_headers_come_before_route_headers() -> None:
    t = one_host(
        {
            "match": {"prefix": "/"},
            "request_headers_to_add": [{"header": {"key": "x-route", "value": "r"}}],
            "route": {
                "weighted_clusters": {
                    "clusters": [
                        {
                            "name": "v1",
                            "weight": 1,
                            "request_headers_to_add": [
                                {"header": {"key": "x-version", "value": "v1"}}
                            ],
                        },
                        {
                            "name": "v2",
                            "weight": 1,
                            "request_headers_to_add": [
                                {"header": {"key": "x-version", "value": "v2"}}
                            ],
                            "host_rewrite_literal": "v2.internal",
                        },
                    ]
                }
            },
        }
    )
    route = t.route(request())
    assert route is not None and isinstance(route.action, Forward)
    target = route.action.pick(request(), 1)
    headers: list[tuple[bytes, bytes]] = [(b"accept", b"*/*")]
    target.request_headers.apply(headers)
    assert headers == [(b"accept", b"*/*"), (b"x-version", b"v2"), (b"x-route", b"r")]
    assert target.host_rewrite == b"v2.internal"
    assert route.action.pick(request(), 0).host_rewrite is None


def test_cluster_header() -> None:
    t = one_host({"match": {"prefix": "/"}, "route": {"cluster_header": "x-cluster"}})
    assert cluster_for(t, request(headers={"x-cluster": "blue"})) == "blue"
    assert cluster_for(t, request()) == ""  # the shell answers "cluster not found"


def location(
    redirect: dict[str, Any],
    path: str = "/a/b?x=1",
    host: str = "example.com",
    scheme: bytes = b"http",
    match: dict[str, Any] | None = None,
) -> tuple[int, bytes]:
    t = one_host({"match": match or {"prefix": "/"}, "redirect": redirect})
    req = request(path, host=host, scheme=scheme)
    route = t.route(req)
    assert route is not None and isinstance(route.action, Redirect)
    return route.action.status, route.action.location(req)


@pytest.mark.parametrize(
    ("redirect", "kw", "expected"),
    [
        ({"https_redirect": True}, {}, (301, b"https://example.com/a/b?x=1")),
        (
            {"https_redirect": True},
            {"host": "example.com:80"},
            (301, b"https://example.com/a/b?x=1"),
        ),
        (
            {"https_redirect": True},
            {"host": "example.com:8080"},
            (301, b"https://example.com:8080/a/b?x=1"),
        ),
        (
            {"scheme_redirect": "HTTP"},
            {"host": "example.com:443", "scheme": b"https"},
            (301, b"http://example.com/a/b?x=1"),
        ),
        (
            {"host_redirect": "new.example.com"},
            {"host": "example.com:8080"},
            (301, b"http://new.example.com/a/b?x=1"),
        ),
        (
            {"port_redirect": 8443},
            {"host": "example.com:8080"},
            (301, b"http://example.com:8443/a/b?x=1"),
        ),
        (
            {"path_redirect": "/new", "response_code": "FOUND"},
            {},
            (302, b"http://example.com/new?x=1"),
        ),
        (
            {"path_redirect": "/new?y=2", "strip_query": True},
            {},
            (301, b"http://example.com/new?y=2"),
        ),
        ({"path_redirect": "/new", "strip_query": True}, {}, (301, b"http://example.com/new")),
        (
            {"strip_query": True, "response_code": "PERMANENT_REDIRECT"},
            {},
            (308, b"http://example.com/a/b"),
        ),
        (
            {"prefix_rewrite": "/z", "response_code": "TEMPORARY_REDIRECT"},
            {"match": {"prefix": "/a"}},
            (307, b"http://example.com/z/b?x=1"),
        ),
        (
            {
                "regex_rewrite": {"pattern": {"regex": "^/a/(.*)$"}, "substitution": "/c/\\1"},
                "response_code": "SEE_OTHER",
            },
            {},
            (303, b"http://example.com/c/b?x=1"),
        ),
    ],
)
def test_redirect_location(
    redirect: dict[str, Any], kw: dict[str, Any], expected: tuple[int, bytes]
) -> None:
    assert location(redirect, **kw) == expected


def test_direct_response() -> None:
    t = one_host(
        {
            "match": {"path": "/healthz"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        }
    )
    route = t.route(request("/healthz"))
    assert route is not None and route.action == DirectResponse(200, b"ok\n")


def rewrite(match: dict[str, Any], action: dict[str, Any], path: str) -> bytes:
    t = one_host({"match": match, "route": {"cluster": "c", **action}})
    route = t.route(request(path))
    assert (
        route is not None
        and isinstance(route.action, Forward)
        and route.action.rewrite_path is not None
    )
    return route.action.rewrite_path(path.encode())


@pytest.mark.parametrize(
    ("match", "action", "path", "expected"),
    [
        ({"prefix": "/prefix"}, {"prefix_rewrite": "/"}, "/prefix/etc?x=1", b"//etc?x=1"),
        ({"prefix": "/prefix/"}, {"prefix_rewrite": "/"}, "/prefix/etc?x=1", b"/etc?x=1"),
        (
            {"prefix": "/API", "case_sensitive": False},
            {"prefix_rewrite": "/v2"},
            "/api/users",
            b"/v2/users",
        ),
        ({"path": "/old"}, {"prefix_rewrite": "/new"}, "/old?q=1", b"/new?q=1"),
        (
            {"safe_regex": {"regex": "/u/[0-9]+"}},
            {"prefix_rewrite": "/user"},
            "/u/42?q=1",
            b"/user?q=1",
        ),
        # The examples of Envoy's regex_rewrite documentation:
        (
            {"prefix": "/"},
            {
                "regex_rewrite": {
                    "pattern": {"regex": "^/service/([^/]+)(/.*)$"},
                    "substitution": "\\2/instance/\\1",
                }
            },
            "/service/foo/v1/api",
            b"/v1/api/instance/foo",
        ),
        (
            {"prefix": "/"},
            {"regex_rewrite": {"pattern": {"regex": "one"}, "substitution": "two"}},
            "/xxx/one/yyy/one/zzz",
            b"/xxx/two/yyy/two/zzz",
        ),
        (
            {"prefix": "/"},
            {
                "regex_rewrite": {
                    "pattern": {"regex": "^(.*?)one(.*)$"},
                    "substitution": "\\1two\\2",
                }
            },
            "/xxx/one/yyy/one/zzz",
            b"/xxx/two/yyy/one/zzz",
        ),
        (
            {"prefix": "/"},
            {"regex_rewrite": {"pattern": {"regex": "(?i)/xxx/"}, "substitution": "/yyy/"}},
            "/aaa/XxX/bbb",
            b"/aaa/yyy/bbb",
        ),
        # The query string is left alone, and a literal backslash is written as \\.
        (
            {"prefix": "/"},
            {"regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "\\\\"}},
            "/a?a=a",
            b"/\\?a=a",
        ),
    ],
)
def test_path_rewrites(
    match: dict[str, Any], action: dict[str, Any], path: str, expected: bytes
) -> None:
    assert rewrite(match, action, path) == expected


def test_timeouts_and_host_rewrite_flags() -> None:
    t = one_host(
        {
            "match": {"prefix": "/none"},
            "route": {"cluster": "c", "timeout": "0s", "idle_timeout": "0s"},
        },
        {
            "match": {"prefix": "/set"},
            "route": {
                "cluster": "c",
                "timeout": "2.5s",
                "idle_timeout": "30s",
                "host_rewrite_literal": "svc",
            },
        },
        {"match": {"prefix": "/auto"}, "route": {"cluster": "c", "auto_host_rewrite": True}},
        {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
    )

    def forward(path: str) -> Forward:
        route = t.route(request(path))
        assert route is not None and isinstance(route.action, Forward)
        return route.action

    assert (forward("/none").timeout, forward("/none").idle_timeout) == (None, 0.0)
    assert (forward("/set").timeout, forward("/set").idle_timeout) == (2.5, 30.0)
    assert forward("/set").pick(request(), 0).host_rewrite == b"svc"
    assert forward("/auto").auto_host_rewrite and not forward("/set").auto_host_rewrite
    assert (forward("/").timeout, forward("/").idle_timeout) == (15.0, None)  # Envoy's defaults
