"""The Bookinfo reviews routing, in the RouteConfiguration Istio sends a sidecar for port 9080."""

from typing import Any

import pytest
from routing_sim import cluster_for, request, table

from pilotfish.proxy.routing import Forward

REVIEWS = "reviews.default.svc.cluster.local"
ISTIO_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": "5",
    "retriable_status_codes": [503],
}


def istio_route(name: str, cluster: str, match: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "match": match,
        "route": {
            "cluster": cluster,
            "timeout": "0s",
            "retry_policy": ISTIO_RETRY,
            "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
        },
        "metadata": {
            "filter_metadata": {
                "istio": {
                    "config": "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews"
                }
            }
        },
        "decorator": {"operation": f"{REVIEWS}:9080/*"},
    }


BOOKINFO_9080 = {
    "name": "9080",
    "validate_clusters": False,
    "ignore_port_in_host_matching": True,
    "virtual_hosts": [
        {
            "name": f"{REVIEWS}:9080",
            "domains": [REVIEWS, "reviews", "reviews.default", "reviews.default.svc", "10.96.0.12"],
            "include_request_attempt_count": True,
            "routes": [
                istio_route(
                    "jason",
                    f"outbound|9080|v2|{REVIEWS}",
                    {
                        "prefix": "/",
                        "case_sensitive": True,
                        "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}],
                    },
                ),
                istio_route("default", f"outbound|9080|v1|{REVIEWS}", {"prefix": "/"}),
            ],
        },
        {
            "name": "ratings.default.svc.cluster.local:9080",
            "domains": ["ratings.default.svc.cluster.local", "ratings"],
            "routes": [
                istio_route(
                    "default", "outbound|9080||ratings.default.svc.cluster.local", {"prefix": "/"}
                )
            ],
        },
        {
            "name": "allow_any",
            "domains": ["*"],
            "include_request_attempt_count": True,
            "routes": [
                {
                    "name": "allow_any",
                    "match": {"prefix": "/"},
                    "route": {
                        "cluster": "PassthroughCluster",
                        "timeout": "0s",
                        "max_stream_duration": {"max_stream_duration": "0s"},
                    },
                }
            ],
        },
    ],
}


@pytest.mark.parametrize(
    ("host", "headers", "cluster"),
    [
        ("reviews:9080", {"end-user": "jason"}, f"outbound|9080|v2|{REVIEWS}"),
        ("reviews:9080", {"end-user": "mike"}, f"outbound|9080|v1|{REVIEWS}"),
        ("reviews:9080", {}, f"outbound|9080|v1|{REVIEWS}"),
        (f"{REVIEWS}:9080", {"End-User": "jason"}, f"outbound|9080|v2|{REVIEWS}"),
        ("Reviews", {"end-user": "jason"}, f"outbound|9080|v2|{REVIEWS}"),
        ("ratings:9080", {"end-user": "jason"}, "outbound|9080||ratings.default.svc.cluster.local"),
        ("example.org", {}, "PassthroughCluster"),
    ],
)
def test_bookinfo_reviews_routing(host: str, headers: dict[str, str], cluster: str) -> None:
    assert (
        cluster_for(table(BOOKINFO_9080), request("/reviews/0", host=host, headers=headers))
        == cluster
    )


def test_istio_route_action_compiles_to_what_the_shell_needs() -> None:
    route = table(BOOKINFO_9080).route(
        request("/reviews/0", host="reviews", headers={"end-user": "jason"})
    )
    assert (
        route is not None
        and route.name == "jason"
        and route.virtual_host.include_request_attempt_count
    )
    assert route.operation == f"{REVIEWS}:9080/*"
    action = route.action
    assert isinstance(action, Forward)
    assert action.timeout is None  # Istio's 0s: no timeout
    assert action.grpc_timeout_header_max == 0.0 and action.max_stream_duration is None  # 0s: none
    assert (
        action.retry is not None and action.retry.num_retries == 2 and action.retry.previous_hosts
    )
