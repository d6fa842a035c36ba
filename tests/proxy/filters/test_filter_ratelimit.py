"""The local rate limit filter: token arithmetic over a fake clock, and what a
limited caller gets back."""

import random
from typing import Any

import pytest
from filters_sim import RL_T, FakeClock, chain, local_rate_limit, per_route, request, run

from pilotfish.proxy.filters import FilterConfigError
from pilotfish.proxy.filters.ratelimit import compile_local_rate_limit

RL = "envoy.filters.http.local_ratelimit"
ON = {"default_value": {"numerator": 100}}


def limiter(clock: FakeClock, **config: Any) -> Any:
    config.setdefault("stat_prefix", "http_local_rate_limiter")
    config.setdefault("filter_enabled", ON)
    config.setdefault("filter_enforced", ON)
    return chain({"name": RL, "typed_config": {"@type": RL_T, **config}}, clock=clock)


BUCKET = {"max_tokens": 3, "tokens_per_fill": 2, "fill_interval": "1s"}


def statuses(c: Any, n: int) -> list[int]:
    return [run(c, request()).status for _ in range(n)]


def test_token_bucket_arithmetic() -> None:
    clock = FakeClock()
    c = limiter(clock, token_bucket=BUCKET)
    assert statuses(c, 4) == [0, 0, 0, 429]  # starts full: 3 tokens
    clock.advance(0.999)
    assert statuses(c, 1) == [429]  # no fill before the interval ends
    clock.advance(0.001)
    assert statuses(c, 3) == [0, 0, 429]  # one fill: +2
    clock.advance(2.5)
    assert statuses(c, 4) == [0, 0, 0, 429]  # two fills: +4, capped at 3
    clock.advance(0.5)
    assert statuses(c, 2) == [0, 0]  # fills stay on the 1s grid: +2 at t=3s
    assert statuses(c, 1) == [429]


def test_limited_requests_get_429_and_flag_rl() -> None:
    clock = FakeClock()
    c = limiter(
        clock,
        token_bucket={"max_tokens": 1, "fill_interval": "60s"},
        response_headers_to_add=[{"header": {"key": "x-local-rate-limit", "value": "true"}}],
    )
    run(c, request())
    outcome = run(c, request())
    assert (outcome.status, outcome.flags, outcome.body) == (429, ["RL"], b"local_rate_limited")
    assert outcome.headers == [
        (b"content-type", b"text/plain"),
        (b"x-local-rate-limit", b"true"),
    ]


def test_x_ratelimit_headers_on_every_response() -> None:
    clock = FakeClock()
    c = limiter(
        clock,
        token_bucket={"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "10s"},
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
    )
    first = run(c, request(), upstream_headers=[(b"server", b"app")])
    assert first.headers == [
        (b"server", b"app"),
        (b"x-ratelimit-limit", b"2"),
        (b"x-ratelimit-remaining", b"1"),
        (b"x-ratelimit-reset", b"10"),
    ]
    clock.advance(2.5)
    run(c, request())
    limited = run(c, request())
    assert limited.status == 429
    assert limited.header("x-ratelimit-remaining") == "0"
    assert limited.header("x-ratelimit-reset") == "8"  # 7.5s, rounded up


def test_unset_fractions_mean_disabled_as_in_envoy() -> None:
    clock = FakeClock()
    c = chain(
        {
            "name": RL,
            "typed_config": {
                "@type": RL_T,
                "stat_prefix": "rl",
                "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
            },
        },
        clock=clock,
    )
    assert statuses(c, 5) == [0] * 5


def test_enabled_but_not_enforced_forwards_with_request_headers() -> None:
    clock = FakeClock()
    c = limiter(
        clock,
        token_bucket={"max_tokens": 1, "fill_interval": "60s"},
        filter_enforced={"default_value": {"numerator": 0}},
        request_headers_to_add_when_not_enforced=[
            {"header": {"key": "x-would-be-limited", "value": "1"}}
        ],
    )
    first, second = run(c, request()), run(c, request())
    assert first.upstream_edits == [] and second.status == 0 and second.flags == []
    headers: list[tuple[bytes, bytes]] = []
    for edit in second.upstream_edits:
        edit.apply(headers)
    assert headers == [(b"x-would-be-limited", b"1")]


def test_enforced_fraction_limits_that_share_of_over_limit_requests() -> None:
    clock = FakeClock()
    c = limiter(
        clock,
        token_bucket={"max_tokens": 1, "fill_interval": "3600s"},
        filter_enforced={"default_value": {"numerator": 25}},
    )
    rng, n = random.Random(9), 20_000
    run(c, request(), rng)
    limited = sum(run(c, request(), rng).status == 429 for _ in range(n))
    assert abs(limited - n / 4) < 5 * (n * 0.25 * 0.75) ** 0.5


def test_configured_status_and_grpc_answers() -> None:
    clock = FakeClock()
    bucket = {"max_tokens": 1, "fill_interval": "60s"}
    c = limiter(clock, token_bucket=bucket, status={"code": "ServiceUnavailable"})
    run(c, request())
    assert run(c, request()).status == 503
    c = limiter(clock, token_bucket=bucket, status={"code": "OK"})  # below 400: 429, as Envoy
    run(c, request())
    assert run(c, request()).status == 429
    grpc = request("POST", "/pkg.Svc/M", {"content-type": "application/grpc"})
    c = limiter(clock, token_bucket=bucket)
    run(c, grpc)
    assert run(c, grpc).header("grpc-status") == "14"
    c = limiter(clock, token_bucket=bucket, rate_limited_as_resource_exhausted=True)
    run(c, grpc)
    outcome = run(c, grpc)
    assert (outcome.status, outcome.header("grpc-status"), outcome.flags) == (200, "8", ["RL"])


def test_per_route_configs_have_their_own_bucket() -> None:
    clock = FakeClock()
    c = limiter(clock, token_bucket={"max_tokens": 100, "fill_interval": "60s"})
    route = per_route(
        **{
            RL: {
                "@type": RL_T,
                "stat_prefix": "route",
                "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
                "filter_enabled": ON,
                "filter_enforced": ON,
            }
        }
    )
    assert [run(c, request(), configs=route).status for _ in range(2)] == [0, 429]
    assert statuses(c, 3) == [0, 0, 0]  # the listener's bucket is untouched by the route's
    same_config_other_route = dict(route)
    assert run(c, request(), configs=same_config_other_route).status == 429  # shared bucket


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"descriptors": [{"entries": [{"key": "a", "value": "b"}], "token_bucket": BUCKET}]},
            "rl.descriptors: rate limit descriptors are not implemented",
        ),
        (
            {"local_rate_limit_per_downstream_connection": True},
            "rl.local_rate_limit_per_downstream_connection: per-connection",
        ),
        (
            {"token_bucket": {"max_tokens": 1, "fill_interval": "0.01s"}},
            "rl.token_bucket.fill_interval: must be at least 50ms",
        ),
        (
            {"token_bucket": {"max_tokens": 0, "fill_interval": "1s"}},
            "rl.token_bucket.max_tokens: must be greater than 0",
        ),
        ({"stat_prefix": ""}, "rl.stat_prefix: is required"),
        ({"stage": 1}, "rl.stage: not supported by pilotfish"),
        (
            {"response_headers_to_add": [{"header": {"key": "x", "value": "%START_TIME%"}}]},
            "rl.response_headers_to_add[0].header: header value formatters",
        ),
        (
            {
                "request_headers_to_add_when_not_enforced": [
                    {"header": {"key": ":path", "value": "x"}}
                ]
            },
            "rl.request_headers_to_add_when_not_enforced[0].header.key",
        ),
    ],
)
def test_bad_configs_are_rejected_with_the_field(config: dict[str, Any], message: str) -> None:
    config = {"stat_prefix": "p", **config}
    with pytest.raises(FilterConfigError) as e:
        compile_local_rate_limit(local_rate_limit(**config), "rl", FakeClock())
    assert str(e.value).startswith(message), str(e.value)


def test_a_per_route_config_needs_a_bucket() -> None:
    c = limiter(FakeClock())
    route = per_route(**{RL: {"@type": RL_T, "stat_prefix": "route"}})
    with pytest.raises(FilterConfigError, match="token_bucket: is required in a per-route config"):
        c.prepare(route)
