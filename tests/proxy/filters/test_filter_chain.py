"""Compiling http_filters, and per-route overrides applied through a real route table."""

import random
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from filters_sim import (
    CORS_POLICY_T,
    CORS_T,
    FAULT_T,
    RL_T,
    ROUTER,
    ROUTER_T,
    FakeClock,
    chain,
    http_filters,
    per_route,
    request,
    run,
)
from google.protobuf import json_format

from pilotfish.proxy.filters import FilterConfigError, compile_http_filters
from pilotfish.proxy.routing import compile_route_config

FAULT = "envoy.filters.http.fault"
ABORT_503 = {"@type": FAULT_T, "abort": {"http_status": 503, "percentage": {"numerator": 100}}}


BUFFER_T = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"


def compile_error(*filters: Any) -> str:
    with pytest.raises(FilterConfigError) as e:
        compile_http_filters(
            [f if isinstance(f, hcm_pb2.HttpFilter) else http_filters(f)[0] for f in filters]
        )
    return str(e.value)


def unknown(optional: bool = False) -> hcm_pb2.HttpFilter:
    """A filter pilotfish does not know."""
    f = hcm_pb2.HttpFilter(name="envoy.filters.http.buffer", is_optional=optional)
    f.typed_config.type_url = BUFFER_T
    return f


def test_filters_compile_in_order_without_the_router() -> None:
    c = chain(
        {"name": FAULT, "typed_config": ABORT_503},
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS_T}},
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {"@type": RL_T, "stat_prefix": "rl"},
        },
    )
    assert [f.name for f in c.filters] == [
        FAULT,
        "envoy.filters.http.cors",
        "envoy.filters.http.local_ratelimit",
    ]
    assert repr(c).endswith("-> router)")


def test_an_unknown_filter_is_a_compile_error_naming_it() -> None:
    message = compile_error(unknown(), ROUTER)
    assert message.startswith(
        "http_filters[0] (envoy.filters.http.buffer): HTTP filter 'envoy.filters.http.buffer'"
    )
    assert "type envoy.extensions.filters.http.buffer.v3.Buffer" in message
    assert "is not supported by pilotfish" in message and "is_optional" in message


def test_an_optional_unknown_filter_is_skipped() -> None:
    c = compile_http_filters(
        [
            unknown(optional=True),
            *http_filters({"name": FAULT, "typed_config": ABORT_503}, ROUTER),
        ]
    )
    assert [f.name for f in c.filters] == [FAULT]
    assert run(c, request()).status == 503


def test_the_router_must_be_last() -> None:
    message = compile_error(ROUTER, {"name": FAULT, "typed_config": ABORT_503})
    assert message == (
        "http_filters[0]: the router must be the last filter, but 'envoy.filters.http.fault' follows it"
    )
    message = compile_error({"name": FAULT, "typed_config": ABORT_503})
    assert message == (
        "http_filters: the last filter must be the router (envoy.filters.http.router), "
        "not 'envoy.filters.http.fault'"
    )


def test_no_filters_means_the_router_alone() -> None:
    c = compile_http_filters([])
    assert c.empty and run(c, request()).status == 0


def test_the_type_decides_the_filter_and_the_name_keys_its_route_configs() -> None:
    c = chain({"name": "my-faults", "typed_config": ABORT_503})
    assert run(c, request()).status == 503
    by_name = compile_http_filters(
        http_filters({"name": FAULT}, {"name": "envoy.filters.http.router"})
    )
    assert len(by_name.filters) == 1 and run(by_name, request()).status == 0  # no config: no fault


def test_filter_config_errors_carry_the_filter_path() -> None:
    message = compile_error(
        {"name": FAULT, "typed_config": {"@type": FAULT_T, "abort": {"http_status": 100}}}, ROUTER
    )
    assert message.startswith(
        "http_filters[0] (envoy.filters.http.fault).typed_config.abort.http_status:"
    )


def test_unsupported_http_filter_fields_are_rejected() -> None:
    message = compile_error({"name": FAULT, "typed_config": ABORT_503, "disabled": True}, ROUTER)
    assert (
        message == "http_filters[0] (envoy.filters.http.fault).disabled: not supported by pilotfish"
    )
    message = compile_error(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": ROUTER_T, "suppress_envoy_headers": True},
        }
    )
    assert message.endswith("typed_config.suppress_envoy_headers: not supported by pilotfish")


def test_filters_run_in_order_and_a_reply_stops_the_rest() -> None:
    clock = FakeClock()
    c = chain(
        {
            "name": FAULT,
            "typed_config": {
                "@type": FAULT_T,
                "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
            },
        },
        {
            "name": "rl",
            "typed_config": {
                "@type": RL_T,
                "stat_prefix": "rl",
                "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
                "filter_enabled": {"default_value": {"numerator": 100}},
                "filter_enforced": {"default_value": {"numerator": 100}},
            },
        },
        clock=clock,
    )
    aborted = run(c, request(headers={"x-envoy-fault-abort-request": "500"}))
    assert (aborted.status, aborted.flags) == (500, ["FI"])
    assert run(c, request()).status == 0  # the abort did not spend the only token
    assert run(c, request()).flags == ["RL"]


def test_a_delayed_request_meets_the_next_filters_after_its_delay() -> None:
    clock = FakeClock()
    c = chain(
        {
            "name": FAULT,
            "typed_config": {
                "@type": FAULT_T,
                "delay": {"fixed_delay": "2s", "percentage": {"numerator": 100}},
            },
        },
        {
            "name": "rl",
            "typed_config": {
                "@type": RL_T,
                "stat_prefix": "rl",
                "token_bucket": {"max_tokens": 1, "fill_interval": "1s"},
                "filter_enabled": {"default_value": {"numerator": 100}},
                "filter_enforced": {"default_value": {"numerator": 100}},
            },
        },
        clock=clock,
    )
    rng = random.Random(0)
    run(c, request())  # spends the token
    ex = c.start(request())
    assert c.decode(ex, rng).seconds == 2.0  # type: ignore[union-attr]
    clock.advance(2.0)  # the shell sleeps; the bucket refills meanwhile
    assert c.decode(ex, rng).__class__.__name__ == "Proceed"
    assert ex.flags == ["DI"]
    c.finish(ex)


ROUTES = {
    "virtual_hosts": [
        {
            "name": "web",
            "domains": ["*"],
            "typed_per_filter_config": {
                FAULT: {
                    "@type": FAULT_T,
                    "abort": {"http_status": 418, "percentage": {"numerator": 100}},
                },
                "envoy.filters.http.cors": {
                    "@type": CORS_POLICY_T,
                    "allow_origin_string_match": [{"exact": "https://a.test"}],
                },
            },
            "routes": [
                {
                    "match": {"prefix": "/quiet"},
                    "route": {"cluster": "quiet"},
                    "typed_per_filter_config": {
                        FAULT: {
                            "@type": FAULT_T,
                            "delay": {"fixed_delay": "0.1s", "percentage": {"numerator": 100}},
                        },
                    },
                },
                {"match": {"prefix": "/"}, "route": {"cluster": "web"}},
            ],
        }
    ]
}


def test_the_most_specific_per_filter_config_replaces_the_filters_own() -> None:
    c = chain(
        {"name": FAULT, "typed_config": ABORT_503},
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS_T}},
    )
    table = compile_route_config(json_format.ParseDict(ROUTES, route_pb2.RouteConfiguration()))

    def through(path: str) -> Any:
        req = request(path=path, headers={"origin": "https://a.test"})
        selected = table.select(req)
        assert selected is not None
        _, target = selected
        assert target is not None
        c.prepare(target.filter_configs)
        return run(c, req, configs=target.filter_configs, cluster=target.cluster)

    vhost_level = through("/page")
    assert vhost_level.status == 418  # the virtual host's fault replaced the listener's 503
    quiet = through("/quiet")
    assert (quiet.status, quiet.delay) == (0, 0.1)  # the route's replaced the virtual host's
    assert quiet.headers == [(b"access-control-allow-origin", b"https://a.test")]  # vhost CORS
    assert run(c, request()).status == 503  # no route config: the listener's own


def test_a_chain_is_idle_where_no_filter_has_work() -> None:
    # A sidecar's chain: CORS and fault with no config of their own.
    c = chain(
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS_T}},
        {"name": FAULT, "typed_config": {"@type": FAULT_T}},
    )
    assert c.idle(per_route())
    assert not c.idle(per_route(**{FAULT: ABORT_503}))
    cors_policy = {"@type": CORS_POLICY_T, "allow_origin_string_match": [{"exact": "https://a"}]}
    assert not c.idle(per_route(**{"envoy.filters.http.cors": cors_policy}))
    assert not chain({"name": FAULT, "typed_config": ABORT_503}).idle(per_route())
    bucket = {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"}
    limiter = {"@type": RL_T, "stat_prefix": "rl", "token_bucket": bucket}
    assert not chain({"name": "envoy.filters.http.local_ratelimit", "typed_config": limiter}).idle(
        per_route()
    )
    assert chain(
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {"@type": RL_T, "stat_prefix": "rl"},
        }
    ).idle(per_route())
