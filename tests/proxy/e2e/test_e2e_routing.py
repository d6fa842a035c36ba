"""Routing through a real proxy: matches, virtual hosts, the outbound
HTTP_PROXY form, local answers, rewrites, header mutations and weights."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from harness import (
    Backend,
    Proxy,
    curl,
    curl_many,
    free_port,
    listener,
    route,
    static_cluster,
    vhost,
)


@dataclass
class Routed:
    proxy: Proxy
    port: int
    alpha: Backend
    beta: Backend
    reviews: Backend
    ratings: Backend

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def header_route(prefix: str, matcher: dict) -> dict:
    return route("beta", prefix=prefix, headers=[{"name": "x-h", **matcher}])


MATCHER_ROUTES = [
    header_route("/m/hprefix", {"string_match": {"prefix": "abc"}}),
    header_route("/m/hsuffix", {"string_match": {"suffix": "xyz"}}),
    header_route("/m/hcontains", {"string_match": {"contains": "mid"}}),
    header_route("/m/hregex", {"string_match": {"safe_regex": {"regex": "v[0-9]+"}}}),
    header_route("/m/hpresent", {"present_match": True}),
    header_route("/m/hinvert", {"string_match": {"exact": "no"}, "invert_match": True}),
    route(
        "beta",
        prefix="/m/query",
        query_parameters=[{"name": "version", "string_match": {"exact": "2"}}],
    ),
]
MATCHER_ROUTES[-1]["match"]["query_parameters"] = MATCHER_ROUTES[-1].pop("query_parameters")
MATCHER_ROUTES.append(route("beta", prefix="/m/CASE"))
MATCHER_ROUTES[-1]["match"]["case_sensitive"] = False


@pytest.fixture(scope="module")
def routed(start_module_proxy, module_backends) -> Routed:
    alpha, beta = module_backends("alpha"), module_backends("beta")
    reviews, ratings = module_backends("reviews"), module_backends("ratings")
    port = free_port()
    default_routes = [
        route("alpha", path="/exact"),
        route("beta", regex="/re/[0-9]+"),
        route(
            "beta",
            prefix="/hdr",
            headers=[{"name": "x-canary", "string_match": {"exact": "yes"}}],
        ),
        route("alpha", prefix="/hdr"),
        route(
            prefix="/direct",
            direct_response={"status": 418, "body": {"inline_string": "short and stout"}},
        ),
        route(
            prefix="/redirect",
            redirect={"host_redirect": "example.com", "path_redirect": "/new-place"},
        ),
        route("alpha", prefix="/old/", action={"prefix_rewrite": "/echo/"}),
        route(
            "alpha",
            prefix="/hostrw",
            action={"prefix_rewrite": "/echo", "host_rewrite_literal": "rewritten.example"},
        ),
        route(
            "alpha",
            prefix="/headers",
            action={"prefix_rewrite": "/echo"},
            request_headers_to_add=[
                {"header": {"key": "x-added", "value": "added-value"}},
                {
                    "header": {"key": "x-replaced", "value": "new"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
            ],
            request_headers_to_remove=["x-secret"],
            response_headers_to_add=[{"header": {"key": "x-resp-added", "value": "resp-value"}}],
            response_headers_to_remove=["x-backend"],
        ),
        route(
            prefix="/weighted",
            action={
                "weighted_clusters": {
                    "clusters": [{"name": "alpha", "weight": 80}, {"name": "beta", "weight": 20}]
                }
            },
        ),
        route("alpha", prefix="/prefix/"),
        *MATCHER_ROUTES,
        route("alpha", prefix="/m/"),
        route(
            "alpha",
            prefix="/rx/",
            action={
                "regex_rewrite": {
                    "pattern": {"regex": "^/rx/(\\w+)/(\\w+)$"},
                    "substitution": "/echo/\\2/\\1",
                }
            },
        ),
    ]
    proxy = start_module_proxy(
        [
            listener(
                "outbound",
                port,
                [
                    vhost("reviews", ["reviews", "reviews:9080"], [route("reviews")]),
                    vhost("ratings", ["*.ratings.test"], [route("ratings")]),
                    vhost(
                        "details",
                        ["details.*"],
                        [route("reviews", action={"prefix_rewrite": "/echo"})],
                    ),
                    vhost("default", ["*"], default_routes),
                ],
                outbound=True,
            )
        ],
        [
            static_cluster("alpha", [alpha.port]),
            static_cluster("beta", [beta.port]),
            static_cluster("reviews", [reviews.port]),
            static_cluster("ratings", [ratings.port]),
        ],
    )
    return Routed(proxy, port, alpha, beta, reviews, ratings)


def test_path_prefix_match(routed: Routed) -> None:
    r = curl(routed.url("/prefix/some/thing"))
    assert (r.status, r.header("x-backend"), r.text) == (200, "alpha", "alpha\n")


def test_path_exact_match(routed: Routed) -> None:
    assert curl(routed.url("/exact")).header("x-backend") == "alpha"
    missed = curl(routed.url("/exact/more"))
    assert missed.status == 404
    assert missed.flags == "NR"


def test_path_regex_match(routed: Routed) -> None:
    assert curl(routed.url("/re/123")).header("x-backend") == "beta"
    # safe_regex matches the whole path, not a part of it.
    assert curl(routed.url("/re/12x")).status == 404


def test_header_match(routed: Routed) -> None:
    assert curl(routed.url("/hdr"), headers={"x-canary": "yes"}).header("x-backend") == "beta"
    assert curl(routed.url("/hdr"), headers={"x-canary": "no"}).header("x-backend") == "alpha"
    assert curl(routed.url("/hdr")).header("x-backend") == "alpha"


def test_virtual_host_domain_match(routed: Routed) -> None:
    assert curl(routed.url("/"), headers={"Host": "reviews"}).header("x-backend") == "reviews"
    assert curl(routed.url("/"), headers={"Host": "reviews:9080"}).header("x-backend") == "reviews"
    suffix = curl(routed.url("/"), headers={"Host": "eu.ratings.test"})
    assert suffix.header("x-backend") == "ratings"
    # The catch-all virtual host has no route for "/".
    assert curl(routed.url("/"), headers={"Host": "unknown"}).status == 404


def test_absolute_form_through_http_proxy(routed: Routed) -> None:
    r = curl("http://reviews:9080/echo?q=1", proxy=routed.port)
    assert r.status == 200
    seen = r.json()
    assert seen["backend"] == "reviews"
    assert seen["path"] == "/echo?q=1"  # origin form upstream
    assert seen["headers"]["host"] == "reviews:9080"


def test_no_route_is_404_with_nr(routed: Routed) -> None:
    r = curl(routed.url("/nothing-here"))
    assert r.status == 404
    assert r.flags == "NR"
    assert r.header("x-backend") is None


def test_direct_response(routed: Routed) -> None:
    before = routed.alpha.count + routed.beta.count
    r = curl(routed.url("/direct"))
    assert (r.status, r.text) == (418, "short and stout")
    assert routed.alpha.count + routed.beta.count == before  # no upstream involved
    assert r.header("x-backend") is None


def test_redirect(routed: Routed) -> None:
    r = curl(routed.url("/redirect/x"))
    assert r.status == 301
    assert r.header("location") == "http://example.com/new-place"


def test_prefix_rewrite(routed: Routed) -> None:
    seen = curl(routed.url("/old/page?x=1")).json()
    assert seen["path"] == "/echo/page?x=1"


def test_host_rewrite(routed: Routed) -> None:
    seen = curl(routed.url("/hostrw"), headers={"Host": "original.example"}).json()
    assert seen["headers"]["host"] == "rewritten.example"


def test_request_and_response_header_mutation(routed: Routed) -> None:
    r = curl(routed.url("/headers"), headers={"x-secret": "hunter2", "x-replaced": "old"})
    assert r.status == 200
    seen = r.json()["headers"]
    assert seen["x-added"] == "added-value"
    assert seen["x-replaced"] == "new"
    assert "x-secret" not in seen
    assert r.header("x-resp-added") == "resp-value"
    assert r.header("x-backend") is None


def test_weighted_clusters_80_20(routed: Routed) -> None:
    n = 400
    results = curl_many([routed.url("/weighted")] * n)
    assert all(status == 200 for status, _ in results)
    alpha = sum(1 for _, h in results if h["x-backend"] == "alpha")
    beta = sum(1 for _, h in results if h["x-backend"] == "beta")
    assert alpha + beta == n
    # Binomial(400, 0.8): mean 320, sd 8; five sd either side.
    assert 280 <= alpha <= 360, (alpha, beta)


def test_a_runtime_fraction_match_takes_its_share(start_proxy, make_backend) -> None:
    """The request's random value is drawn before routing only when a route
    of the table has a runtime fraction (Exchange.start): one that does must
    match its share, not every request."""
    alpha, beta = make_backend("alpha"), make_backend("beta")
    port = free_port()
    quarter = route("beta")
    quarter["match"]["runtime_fraction"] = {"default_value": {"numerator": 25}}
    start_proxy(
        [listener("in", port, [vhost("all", ["*"], [quarter, route("alpha")])])],
        [static_cluster("alpha", [alpha.port]), static_cluster("beta", [beta.port])],
    )
    n = 400
    results = curl_many([f"http://127.0.0.1:{port}/"] * n)
    assert all(status == 200 for status, _ in results)
    to_beta = sum(1 for _, h in results if h["x-backend"] == "beta")
    # Binomial(400, 0.25): mean 100, sd 8.7; five sd either side.
    assert 57 <= to_beta <= 143, to_beta


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/m/hprefix", {"x-h": "abcdef"}, "beta"),
        ("/m/hprefix", {"x-h": "xabc"}, "alpha"),
        ("/m/hsuffix", {"x-h": "wxyz"}, "beta"),
        ("/m/hsuffix", {"x-h": "xyzw"}, "alpha"),
        ("/m/hcontains", {"x-h": "amidb"}, "beta"),
        ("/m/hcontains", {"x-h": "ambd"}, "alpha"),
        ("/m/hregex", {"x-h": "v12"}, "beta"),
        ("/m/hregex", {"x-h": "v12a"}, "alpha"),  # the regex matches the whole value
        ("/m/hpresent", {"x-h": ""}, "beta"),
        ("/m/hpresent", {}, "alpha"),
        ("/m/hinvert", {"x-h": "yes"}, "beta"),
        ("/m/hinvert", {"x-h": "no"}, "alpha"),
        ("/m/query?version=2", {}, "beta"),
        ("/m/query?version=1", {}, "alpha"),
        ("/m/query", {}, "alpha"),
        ("/m/case", {}, "beta"),  # case_sensitive: false
    ],
)
def test_match_variants(routed: Routed, path: str, headers: dict, expected: str) -> None:
    args = ["-H", "x-h;"] if headers == {"x-h": ""} else []
    r = curl(routed.url(path), *args, headers=headers if args == [] else None)
    assert (r.status, r.header("x-backend")) == (200, expected)


def test_domain_prefix_wildcard(routed: Routed) -> None:
    seen = curl(routed.url("/x"), headers={"Host": "details.internal"}).json()
    assert seen["backend"] == "reviews"


def test_regex_rewrite(routed: Routed) -> None:
    seen = curl(routed.url("/rx/first/second")).json()
    assert seen["path"] == "/echo/second/first"
