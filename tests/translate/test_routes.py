"""VirtualService features, each checked by where a request ends up (or what
the route does) in the proxy's compiled table."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from translate_sim import (
    BOOKINFO_INSTANCES,
    BOOKINFO_SERVICES,
    PRODUCTPAGE,
    cluster,
    cluster_for,
    request,
    route_config,
    service,
    sidecar_table,
)

from pilotfish.model import Proxy, build_snapshot
from pilotfish.proxy.routing import DirectResponse, Forward, Redirect, RouteTable

Obj = dict[str, Any]
SUBSETS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {
        "host": "reviews",
        "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")],
    },
}


def vs(
    *http: Obj, name: str = "reviews", hosts: tuple[str, ...] = ("reviews",), **spec: Any
) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": spec.pop("namespace", "default")},
        "spec": {"hosts": list(hosts), "http": list(http), **spec},
    }


def to(subset: str, **route: Any) -> Obj:
    return {"route": [{"destination": {"host": "reviews", "subset": subset}}], **route}


def sim(*objects: Obj, proxy: Proxy = PRODUCTPAGE) -> RouteTable:
    snap = build_snapshot([*BOOKINFO_SERVICES, SUBSETS, *objects], BOOKINFO_INSTANCES)
    return sidecar_table(snap, proxy)


def go(
    t: RouteTable, path: str = "/", headers: dict[str, str] | None = None, **kw: Any
) -> str | None:
    return cluster_for(t, request(kw.get("host", "reviews:9080"), path, headers))


def test_uri_matches_first_match_wins() -> None:
    t = sim(
        vs(
            to("v2", match=[{"uri": {"exact": "/exact"}}, {"uri": {"prefix": "/pre"}}]),
            to("v3", match=[{"uri": {"regex": "/r[0-9]+"}}]),
            to("v1"),
        )
    )
    assert go(t, "/exact") == cluster("reviews", "v2")
    assert go(t, "/exact/more") == cluster("reviews", "v1")
    assert go(t, "/prefix/x") == cluster("reviews", "v2")
    assert go(t, "/r42") == cluster("reviews", "v3")
    assert go(t, "/r42x") == cluster("reviews", "v1")


def test_ignore_uri_case() -> None:
    t = sim(vs(to("v2", match=[{"uri": {"prefix": "/api"}, "ignoreUriCase": True}]), to("v1")))
    assert go(t, "/API/x") == cluster("reviews", "v2")


def test_method_authority_headers_and_query_params() -> None:
    t = sim(
        vs(
            to("v2", match=[{"method": {"exact": "POST"}}]),
            to("v3", match=[{"authority": {"prefix": "reviews.default"}}]),
            to("v2", match=[{"headers": {"x-canary": {"regex": "yes|true"}}}]),
            to("v3", match=[{"queryParams": {"debug": {"exact": "1"}}}]),
            to("v1"),
        )
    )
    post = request("reviews:9080", "/")
    post.method = b"POST"
    assert cluster_for(t, post) == cluster("reviews", "v2")
    assert go(t, host="reviews.default:9080") == cluster("reviews", "v3")
    assert go(t, headers={"x-canary": "true"}) == cluster("reviews", "v2")
    assert go(t, headers={"x-canary": "nope"}) == cluster("reviews", "v1")
    assert go(t, "/?debug=1") == cluster("reviews", "v3")
    assert go(t, "/?debug=2") == cluster("reviews", "v1")


def test_without_headers_and_presence() -> None:
    t = sim(
        vs(
            to("v2", match=[{"withoutHeaders": {"end-user": {"exact": "jason"}}}]),
            to("v1"),
        )
    )
    assert go(t) == cluster("reviews", "v2")  # missing header: not "jason"
    assert go(t, headers={"end-user": "bob"}) == cluster("reviews", "v2")
    assert go(t, headers={"end-user": "jason"}) == cluster("reviews", "v1")
    present = sim(vs(to("v3", match=[{"headers": {"x-debug": {}}}]), to("v1")))
    assert go(present, headers={"x-debug": ""}) == cluster("reviews", "v3")
    assert go(present) == cluster("reviews", "v1")


def test_source_labels_decide_per_proxy() -> None:
    config = vs(to("v3", match=[{"sourceLabels": {"app": "productpage"}}]), to("v1"))
    assert go(sim(config)) == cluster("reviews", "v3")
    other = Proxy(
        node_id="sidecar~127.0.0.1~ratings-v1-0.default~x",
        namespace="default",
        labels={"app": "ratings"},
    )
    assert go(sim(config, proxy=other)) == cluster("reviews", "v1")


def test_port_match_selects_routes_per_service_port() -> None:
    two_ports = service(
        "reviews", ports=[{"name": "http", "port": 9080}, {"name": "http-admin", "port": 9090}]
    )
    config = vs(to("v3", match=[{"port": 9090}]), to("v1"))
    snap = build_snapshot([*BOOKINFO_SERVICES[:2], two_ports, SUBSETS, config], BOOKINFO_INSTANCES)
    t = sidecar_table(snap)
    assert go(t, host="reviews:9090") == cluster("reviews", "v3", port=9090)
    assert go(t, host="reviews:9080") == cluster("reviews", "v1")


def test_default_route_domains_and_unknown_host() -> None:
    t = sim()
    for host in (
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc:9080",
        "reviews.default.svc.cluster.local:9080",
    ):
        assert go(t, host=host) == cluster("reviews"), host
    assert go(t, host="nowhere:9080") is None


def test_redirect_direct_response_and_rewrites() -> None:
    t = sim(
        vs(
            {
                "match": [{"uri": {"prefix": "/old"}}],
                "redirect": {"uri": "/new", "authority": "example.com", "redirectCode": 302},
            },
            {
                "match": [{"uri": {"prefix": "/teapot"}}],
                "directResponse": {"status": 418, "body": {"string": "short and stout"}},
            },
            to(
                "v2",
                match=[{"uri": {"prefix": "/api"}}],
                rewrite={"uri": "/v2/api", "authority": "reviews-v2"},
            ),
            to("v1"),
        )
    )
    redirect = t.route(request("reviews:9080", "/old"), 0)
    assert redirect is not None and isinstance(redirect.action, Redirect)
    direct = t.route(request("reviews:9080", "/teapot"), 0)
    assert direct is not None and isinstance(direct.action, DirectResponse)
    assert direct.action.status == 418
    rewritten = t.route(request("reviews:9080", "/api/x"), 0)
    assert rewritten is not None and isinstance(rewritten.action, Forward)
    assert rewritten.action.rewrite_path is not None
    assert rewritten.action.rewrite_path(b"/api/x") == b"/v2/api/x"
    assert rewritten.action.pick(request("reviews:9080"), 0).host_rewrite == b"reviews-v2"


def _action(*http: Obj) -> Any:
    snap = build_snapshot([*BOOKINFO_SERVICES, SUBSETS, vs(*http)], BOOKINFO_INSTANCES)
    config = route_config(snap, PRODUCTPAGE, "http_proxy")
    (vhost,) = [v for v in config.virtual_hosts if v.name.startswith("reviews.")]
    return vhost.routes[0]


def test_timeouts_are_disabled_unless_set() -> None:
    assert _action(to("v1")).route.timeout.ToSeconds() == 0
    assert _action(to("v1", timeout="1.5s")).route.timeout.ToMilliseconds() == 1500


def test_retry_defaults_and_overrides() -> None:
    default = _action(to("v1")).route.retry_policy
    assert default.num_retries.value == 2
    assert (
        default.retry_on
        == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    )
    assert list(default.retriable_status_codes) == [503]  # Istio's DefaultPolicy
    attempts_only = _action(to("v1", retries={"attempts": 4})).route.retry_policy
    assert list(attempts_only.retriable_status_codes) == [503]
    replaced = _action(to("v1", retries={"attempts": 1, "retryOn": "gateway-error"}))
    assert list(replaced.route.retry_policy.retriable_status_codes) == []  # retryOn replaces
    custom = _action(to("v1", retries={"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,503"}))
    policy = custom.route.retry_policy
    assert (policy.num_retries.value, policy.per_try_timeout.seconds) == (3, 2)
    assert policy.retry_on == "5xx,retriable-status-codes"
    assert list(policy.retriable_status_codes) == [503]
    assert not _action(to("v1", retries={"attempts": 0})).route.HasField("retry_policy")


def test_mirror_percentages() -> None:
    mirror = {"host": "reviews", "subset": "v3"}
    full = _action(to("v1", mirror=mirror)).route.request_mirror_policies
    assert [(m.cluster, m.runtime_fraction.default_value.numerator) for m in full] == [
        (cluster("reviews", "v3"), 1_000_000)
    ]
    half = _action(to("v1", mirror=mirror, mirrorPercentage={"value": 50.5})).route
    assert half.request_mirror_policies[0].runtime_fraction.default_value.numerator == 505_000
    off = _action(to("v1", mirror=mirror, mirrorPercentage={"value": 0})).route
    assert not off.request_mirror_policies
    many = _action(to("v1", mirrors=[{"destination": mirror, "percentage": {"value": 10}}])).route
    assert many.request_mirror_policies[0].runtime_fraction.default_value.numerator == 100_000


def test_cors_and_fault_per_filter_configs() -> None:
    route = _action(
        to(
            "v1",
            corsPolicy={
                "allowOrigins": [{"exact": "https://a.example"}],
                "allowMethods": ["GET", "POST"],
                "maxAge": "24h",
                "allowCredentials": True,
            },
            fault={"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 10}}},
        )
    )
    cors = cors_pb2.CorsPolicy()
    route.typed_per_filter_config["envoy.filters.http.cors"].Unpack(cors)
    assert cors.allow_origin_string_match[0].exact == "https://a.example"
    assert (cors.allow_methods, cors.max_age, cors.allow_credentials.value) == (
        "GET,POST",
        "86400",
        True,
    )
    fault = fault_pb2.HTTPFault()
    route.typed_per_filter_config["envoy.filters.http.fault"].Unpack(fault)
    assert (fault.abort.grpc_status, fault.abort.percentage.numerator) == (14, 100_000)


def test_header_operations() -> None:
    t = sim(
        vs(
            to(
                "v1",
                headers={
                    "request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]},
                    "response": {"set": {"x-served-by": "reviews"}},
                },
            )
        )
    )
    route = t.route(request("reviews:9080"), 0)
    assert route is not None and isinstance(route.action, Forward)
    target = route.action.pick(request("reviews:9080"), 0)
    headers = [(b"x-a", b"0"), (b"x-c", b"gone")]
    target.request_headers.apply(headers)
    assert sorted(headers) == [(b"x-a", b"1"), (b"x-b", b"2")]
    response: list[tuple[bytes, bytes]] = []
    target.response_headers.apply(response)
    assert response == [(b"x-served-by", b"reviews")]


def test_delegate_virtual_service() -> None:
    root = vs(
        {"match": [{"uri": {"prefix": "/reviews"}}], "delegate": {"name": "reviews-team"}}, to("v1")
    )
    delegate = vs(
        to("v2", match=[{"uri": {"prefix": "/reviews/beta"}}]),
        to("v3", match=[{"uri": {"prefix": "/other"}}]),  # outside the root: dropped
        to("v3"),
        name="reviews-team",
        hosts=(),
    )
    t = sim(root, delegate)
    assert go(t, "/reviews/beta/1") == cluster("reviews", "v2")
    assert go(t, "/reviews/1") == cluster("reviews", "v3")
    assert go(t, "/other") == cluster("reviews", "v1")


def test_vs_in_other_namespace_with_short_names_resolves_there() -> None:
    # `reviews` in namespace "shop" means reviews.shop, which does not exist:
    # the default service keeps its default route.
    t = sim(vs(to("v3"), namespace="shop"))
    assert go(t) == cluster("reviews")


def test_wildcard_virtual_service_and_exact_host_precedence() -> None:
    teapot = {"directResponse": {"status": 418}}
    wildcard = vs(teapot, name="all", hosts=("*.default.svc.cluster.local",))
    t = sim(wildcard, vs(to("v2")))
    assert go(t) == cluster("reviews", "v2")  # the exact host wins
    route = t.route(request("ratings:9080"), 0)
    assert route is not None and isinstance(route.action, DirectResponse)
