"""Header mutations, retry/mirror/hash policies and per-filter configs, as compiled for the shell."""

from typing import Any

from envoy.extensions.filters.http.fault.v3 import fault_pb2
from routing_sim import one_host, request, table

from pilotfish.proxy.routing import FAULT, Forward, RetryOn, Route, shadow_authority


def only_route(t: Any, path: str = "/", **kw: Any) -> Route:
    route = t.route(request(path, **kw))
    assert route is not None
    return route


def forward(route: Route) -> Forward:
    assert isinstance(route.action, Forward)
    return route.action


def add(key: str, value: str, action: str | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "header": {"key": key, "value": value},
        **({"append_action": action} if action else {}),
        **kw,
    }


def levels_config(most_specific_wins: bool) -> dict[str, Any]:
    return {
        "name": "r",
        "most_specific_header_mutations_wins": most_specific_wins,
        "request_headers_to_add": [add("x-level", "config", "OVERWRITE_IF_EXISTS_OR_ADD")],
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["*"],
                "request_headers_to_add": [add("x-level", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {"cluster": "c"},
                        "request_headers_to_add": [
                            add("x-level", "route", "OVERWRITE_IF_EXISTS_OR_ADD")
                        ],
                    }
                ],
            }
        ],
    }


def forwarded_headers(t: Any, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    target = forward(only_route(t)).pick(request(), 0)
    out = list(headers)
    target.request_headers.apply(out)
    return out


def test_least_specific_level_wins_by_default() -> None:
    assert forwarded_headers(table(levels_config(False)), []) == [(b"x-level", b"config")]


def test_most_specific_header_mutations_wins() -> None:
    assert forwarded_headers(table(levels_config(True)), []) == [(b"x-level", b"route")]


def test_append_actions_and_removal() -> None:
    t = one_host(
        {
            "match": {"prefix": "/"},
            "route": {"cluster": "c"},
            "request_headers_to_remove": ["x-secret"],
            "request_headers_to_add": [
                add("x-append", "2"),
                add("x-absent", "new", "ADD_IF_ABSENT"),
                add("x-present", "new", "ADD_IF_ABSENT"),
                add("x-over", "new", "OVERWRITE_IF_EXISTS"),
                add("x-missing", "new", "OVERWRITE_IF_EXISTS"),
                add("x-legacy", "new", append=False),
                add("x-empty", ""),
                add("x-kept-empty", "", keep_empty_value=True),
                add("x-pct", "100%%"),
            ],
        }
    )
    before = [
        (b"x-secret", b"s"),
        (b"x-append", b"1"),
        (b"x-present", b"old"),
        (b"x-over", b"a"),
        (b"x-over", b"b"),
        (b"x-legacy", b"old"),
    ]
    assert forwarded_headers(t, before) == [
        (b"x-append", b"1"),
        (b"x-present", b"old"),
        (b"x-over", b"new"),
        (b"x-legacy", b"new"),
        (b"x-append", b"2"),
        (b"x-absent", b"new"),
        (b"x-kept-empty", b""),
        (b"x-pct", b"100%"),
    ]


def test_response_headers_for_direct_responses_and_targets() -> None:
    t = table(
        {
            "name": "r",
            "response_headers_to_add": [add("x-served-by", "pilotfish")],
            "virtual_hosts": [
                {
                    "name": "vh",
                    "domains": ["*"],
                    "response_headers_to_remove": ["server"],
                    "routes": [
                        {"match": {"path": "/ping"}, "direct_response": {"status": 200}},
                        {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
                    ],
                }
            ],
        }
    )
    resp = [(b"server", b"x")]
    only_route(t, "/ping").response_headers.apply(resp)
    assert resp == [(b"x-served-by", b"pilotfish")]
    resp = [(b"server", b"x")]
    forward(only_route(t, "/")).pick(request(), 0).response_headers.apply(resp)
    assert resp == [(b"x-served-by", b"pilotfish")]


def test_retry_policy_as_istio_sends_it() -> None:
    t = one_host(
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "c",
                "retry_policy": {
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
                },
            },
        }
    )
    retry = forward(only_route(t)).retry
    assert retry is not None
    assert retry.retry_on == (
        RetryOn.CONNECT_FAILURE
        | RetryOn.REFUSED_STREAM
        | RetryOn.GRPC_UNAVAILABLE
        | RetryOn.GRPC_CANCELLED
        | RetryOn.RETRIABLE_STATUS_CODES
    )
    assert (retry.num_retries, retry.previous_hosts, retry.host_selection_max_attempts) == (
        2,
        True,
        5,
    )
    assert retry.retriable_status_codes == frozenset({503})
    assert (retry.backoff_base, retry.backoff_max, retry.per_try_timeout) == (0.025, 0.25, None)


def test_retry_defaults_backoff_and_vhost_inheritance() -> None:
    t = one_host(
        {
            "match": {"prefix": "/own"},
            "route": {
                "cluster": "c",
                "retry_policy": {
                    "retry_on": "5xx",
                    "per_try_timeout": "0.5s",
                    "retry_back_off": {"base_interval": "0.1s"},
                },
            },
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
        retry_policy={"retry_on": "gateway-error,reset"},
    )
    own = forward(only_route(t, "/own")).retry
    assert own is not None
    assert (own.retry_on, own.num_retries, own.per_try_timeout) == (RetryOn.FIVE_XX, 1, 0.5)
    assert (own.backoff_base, own.backoff_max) == (0.1, 1.0)  # max defaults to 10x base
    inherited = forward(only_route(t, "/")).retry
    assert inherited is not None and inherited.retry_on == RetryOn.GATEWAY_ERROR | RetryOn.RESET


def test_mirror_policies_most_specific_non_empty_wins() -> None:
    t = one_host(
        {
            "match": {"prefix": "/own"},
            "route": {
                "cluster": "c",
                "request_mirror_policies": [
                    {"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 10}}}
                ],
            },
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
        request_mirror_policies=[{"cluster": "vhost-shadow"}],
    )
    (own,) = forward(only_route(t, "/own")).mirrors
    assert own.cluster == "shadow"
    assert [own.fires(r) for r in (0, 9, 10, 99, 100)] == [True, True, False, False, True]
    (inherited,) = forward(only_route(t, "/")).mirrors
    assert inherited.cluster == "vhost-shadow" and all(inherited.fires(r) for r in range(100))
    assert shadow_authority(b"reviews:9080") == b"reviews-shadow:9080"
    assert shadow_authority(b"reviews") == b"reviews-shadow"


def test_hash_policies() -> None:
    t = one_host(
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "c",
                "hash_policy": [
                    {"header": {"header_name": "x-user"}, "terminal": True},
                    {"cookie": {"name": "session", "ttl": "3600s"}},
                    {"query_parameter": {"name": "shard"}},
                    {"connection_properties": {"source_ip": True}},
                ],
            },
        }
    )
    key = forward(only_route(t)).hash_key
    assert key is not None
    assert key(request(headers={"X-User": "alice"})) == b"alice"  # terminal: stops here
    assert (
        key(request("/?shard=7", headers={"cookie": "a=1; session=abc"}, source_ip="10.0.0.1"))
        == b"abc\x007\x0010.0.0.1"
    )
    assert key(request(source_ip="10.0.0.2")) == b"10.0.0.2"


def test_no_hash_policy_no_key() -> None:
    assert (
        forward(
            only_route(one_host({"match": {"prefix": "/"}, "route": {"cluster": "c"}}))
        ).hash_key
        is None
    )


def test_fault_config_is_decoded_and_most_specific_wins() -> None:
    def fault(percent: int) -> dict[str, Any]:
        return {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"http_status": 503, "percentage": {"numerator": percent}},
        }

    t = one_host(
        {
            "match": {"prefix": "/own"},
            "route": {"cluster": "c"},
            "typed_per_filter_config": {FAULT: fault(50)},
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
        typed_per_filter_config={FAULT: fault(10)},
    )
    own = only_route(t, "/own").filter_configs[FAULT]
    assert isinstance(own, fault_pb2.HTTPFault) and own.abort.percentage.numerator == 50
    inherited = only_route(t, "/").filter_configs[FAULT]
    assert isinstance(inherited, fault_pb2.HTTPFault) and inherited.abort.percentage.numerator == 10
