"""The fault filter: what callers see when faults are configured or asked for."""

import random
from typing import Any

import pytest
from filters_sim import FAULT_T, chain, fault, request, run

from pilotfish.proxy.filters import FaultDecision, FilterConfigError, compile_fault

FAULT = "envoy.filters.http.fault"


def fault_chain(**config: Any) -> Any:
    return chain({"name": FAULT, "typed_config": {"@type": FAULT_T, **config}})


def within_bounds(hits: int, n: int, p: float) -> bool:
    sigma = (n * p * (1 - p)) ** 0.5
    return abs(hits - n * p) <= 5 * sigma + 1e-9


@pytest.mark.parametrize("percent", [10, 50, 100])
def test_aborts_hit_the_configured_share_of_requests(percent: int) -> None:
    c = fault_chain(abort={"http_status": 503, "percentage": {"numerator": percent}})
    rng, n = random.Random(percent), 20_000
    statuses = [run(c, request(), rng).status for _ in range(n)]
    aborted = statuses.count(503)
    assert aborted + statuses.count(0) == n
    assert within_bounds(aborted, n, percent / 100), aborted


@pytest.mark.parametrize("percent", [10, 50, 100])
def test_delays_hit_the_configured_share_of_requests(percent: int) -> None:
    c = fault_chain(delay={"fixed_delay": "0.25s", "percentage": {"numerator": percent}})
    rng, n = random.Random(percent + 1), 20_000
    outcomes = [run(c, request(), rng) for _ in range(n)]
    delayed = [o for o in outcomes if o.delay]
    assert all(o.delay == 0.25 and o.flags == ["DI"] and o.status == 0 for o in delayed)
    assert all(o.flags == [] for o in outcomes if not o.delay)
    assert within_bounds(len(delayed), n, percent / 100), len(delayed)


@pytest.mark.parametrize(
    ("numerator", "denominator", "p"),
    [(2500, "TEN_THOUSAND", 0.25), (1000, "MILLION", 0.001), (0, "HUNDRED", 0.0)],
)
def test_percentages_honour_their_denominator(numerator: int, denominator: str, p: float) -> None:
    policy = compile_fault(
        fault(
            abort={
                "http_status": 500,
                "percentage": {"numerator": numerator, "denominator": denominator},
            }
        ),
        "",
    )
    rng, n = random.Random(3), 200_000
    hits = sum(policy.decide(request(), rng).abort_status == 500 for _ in range(n))
    assert within_bounds(hits, n, p), hits


def test_delay_then_abort_are_independent_and_both_flagged() -> None:
    c = fault_chain(
        delay={"fixed_delay": "1s", "percentage": {"numerator": 50}},
        abort={"http_status": 500, "percentage": {"numerator": 50}},
    )
    rng, n = random.Random(11), 20_000
    seen = {(o.delay > 0, o.status == 500) for o in (run(c, request(), rng) for _ in range(n))}
    assert seen == {(False, False), (True, False), (False, True), (True, True)}
    both = run(c, request(), random.Random(0))
    while not (both.delay and both.status):
        both = run(c, request(), rng)
    assert both.flags == ["DI", "FI"]


def test_decide_returns_the_whole_decision() -> None:
    policy = compile_fault(
        fault(
            delay={"fixed_delay": "0.5s", "percentage": {"numerator": 100}},
            abort={"grpc_status": 14, "percentage": {"numerator": 100}},
        ),
        "",
    )
    assert policy.decide(request(), random.Random(0)) == FaultDecision(0.5, 200, 14)


HEADER_ABORT = {"header_abort": {}, "percentage": {"numerator": 100}}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-envoy-fault-abort-request": "418"}, 418),
        ({"x-envoy-fault-abort-request": "200"}, 200),
        ({"x-envoy-fault-abort-request": "599"}, 599),
        ({"x-envoy-fault-abort-request": "600"}, 0),
        ({"x-envoy-fault-abort-request": "199"}, 0),
        ({"x-envoy-fault-abort-request": "nope"}, 0),
        ({}, 0),
    ],
)
def test_header_controlled_abort(headers: dict[str, str], status: int) -> None:
    outcome = run(fault_chain(abort=HEADER_ABORT), request(headers=headers))
    assert outcome.status == status
    assert outcome.flags == (["FI"] if status else [])


def test_header_controlled_faults_need_the_config_to_allow_them() -> None:
    c = fault_chain(abort={"http_status": 503, "percentage": {"numerator": 0}})
    outcome = run(c, request(headers={"x-envoy-fault-abort-request": "418"}))
    assert outcome.status == 0


def test_header_percentage_can_only_lower_the_configured_one() -> None:
    c = fault_chain(abort={"header_abort": {}, "percentage": {"numerator": 50}})
    rng, n = random.Random(5), 20_000
    ask_all = {
        "x-envoy-fault-abort-request": "503",
        "x-envoy-fault-abort-request-percentage": "100",
    }
    hits = sum(run(c, request(headers=ask_all), rng).status == 503 for _ in range(n))
    assert within_bounds(hits, n, 0.5), hits
    ask_none = {**ask_all, "x-envoy-fault-abort-request-percentage": "0"}
    assert all(run(c, request(headers=ask_none), rng).status == 0 for _ in range(200))


def test_header_controlled_delay() -> None:
    c = fault_chain(delay={"header_delay": {}, "percentage": {"numerator": 100}})
    delayed = run(c, request(headers={"x-envoy-fault-delay-request": "250"}))
    assert (delayed.delay, delayed.flags, delayed.status) == (0.25, ["DI"], 0)
    assert run(c, request(headers={"x-envoy-fault-delay-request": "0"})).delay == 0
    assert run(c, request()).delay == 0


def test_header_grpc_abort_and_http_status_wins_over_it() -> None:
    c = fault_chain(abort=HEADER_ABORT)
    grpc = {"content-type": "application/grpc", "x-envoy-fault-abort-grpc-request": "5"}
    outcome = run(c, request("POST", "/pkg.Svc/Method", grpc))
    assert outcome.status == 200 and outcome.header("grpc-status") == "5"
    both = {**grpc, "x-envoy-fault-abort-request": "503"}
    outcome = run(c, request("POST", "/pkg.Svc/Method", both))
    assert outcome.status == 200 and outcome.header("grpc-status") == "14"  # 503 -> UNAVAILABLE


def test_grpc_abort_is_a_trailers_only_response() -> None:
    c = fault_chain(abort={"grpc_status": 14, "percentage": {"numerator": 100}})
    grpc = request("POST", "/pkg.Svc/Method", {"content-type": "application/grpc+proto"})
    outcome = run(c, grpc)
    assert outcome.status == 200
    assert outcome.headers == [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"fault filter abort"),
    ]
    assert outcome.body == b"" and outcome.flags == ["FI"]


def test_http_abort_to_a_plain_request_is_text() -> None:
    outcome = run(
        fault_chain(abort={"http_status": 503, "percentage": {"numerator": 100}}), request()
    )
    assert outcome.status == 503
    assert outcome.headers == [(b"content-type", b"text/plain")]
    assert outcome.body == b"fault filter abort"
    assert outcome.reply is not None and outcome.reply.details == "fault_filter_abort"


def test_headers_matchers_gate_the_fault() -> None:
    c = fault_chain(
        abort={"http_status": 503, "percentage": {"numerator": 100}},
        headers=[
            {"name": "x-user", "string_match": {"exact": "tester"}},
            {"name": ":method", "string_match": {"exact": "GET"}},
        ],
    )
    assert run(c, request(headers={"x-user": "tester"})).status == 503
    assert run(c, request(headers={"x-user": "someone"})).status == 0
    assert run(c, request("POST", headers={"x-user": "tester"})).status == 0
    assert run(c, request()).status == 0


def test_downstream_nodes_and_upstream_cluster_restrict_the_fault() -> None:
    c = fault_chain(
        abort={"http_status": 503, "percentage": {"numerator": 100}},
        downstream_nodes=["productpage"],
        upstream_cluster="reviews",
    )
    node = {"x-envoy-downstream-service-node": "productpage"}
    assert run(c, request(headers=node), cluster="reviews").status == 503
    assert run(c, request(headers=node), cluster="ratings").status == 0
    assert run(c, request(), cluster="reviews").status == 0
    other = {"x-envoy-downstream-service-node": "details"}
    assert run(c, request(headers=other), cluster="reviews").status == 0


def test_max_active_faults_caps_faults_in_flight() -> None:
    c = fault_chain(
        abort={"http_status": 503, "percentage": {"numerator": 100}}, max_active_faults=1
    )
    first = c.start(request(), {}, "backend")
    assert c.decode(first, random.Random(0)).status == 503  # type: ignore[union-attr]
    assert run(c, request()).status == 0  # the first is still being answered
    c.finish(first)
    assert run(c, request()).status == 503


def test_a_delay_holds_its_slot_only_while_it_lasts() -> None:
    c = fault_chain(
        delay={"fixed_delay": "1s", "percentage": {"numerator": 100}}, max_active_faults=1
    )
    rng = random.Random(0)
    first = c.start(request(), {}, "backend")
    assert c.decode(first, rng).seconds == 1.0  # type: ignore[union-attr]
    assert run(c, request()).delay == 0  # overflow: not delayed
    assert c.decode(first, rng).__class__.__name__ == "Proceed"  # delay over, no abort
    assert run(c, request()).delay == 1.0  # slot free again before the first finishes
    c.finish(first)


def test_zero_max_active_faults_disables_faults() -> None:
    c = fault_chain(
        abort={"http_status": 503, "percentage": {"numerator": 100}}, max_active_faults=0
    )
    assert run(c, request()).status == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"abort": {"http_status": 700, "percentage": {"numerator": 1}}},
            "f.abort.http_status: must be in [200, 600)",
        ),
        (
            {"abort": {"percentage": {"numerator": 1}}},
            "f.abort: an abort needs http_status, grpc_status or header_abort",
        ),
        (
            {"delay": {"percentage": {"numerator": 1}}},
            "f.delay: a delay needs fixed_delay or header_delay",
        ),
        ({"delay": {"fixed_delay": "0s"}}, "f.delay.fixed_delay: must be greater than 0s"),
        (
            {"response_rate_limit": {"fixed_limit": {"limit_kbps": 1}}},
            "f.response_rate_limit: not supported by pilotfish",
        ),
        (
            {"headers": [{"name": "x", "safe_regex_match": {"regex": "("}}]},
            "f.headers[0].safe_regex_match.regex",
        ),
    ],
)
def test_bad_configs_are_rejected_with_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(FilterConfigError) as e:
        compile_fault(fault(**config), "f")
    assert str(e.value).startswith(message)
