"""Envoy's retry decisions as pure functions: which outcomes are retried,
the back-off, the per-try timeout."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.proxy.routing import RetryOn, RetryPolicy
from pilotfish.proxy.upstream.retry import (
    ACCEPT,
    EXHAUSTED,
    RETRY,
    backoff_delay,
    per_try_timeout,
    retries_allowed,
    verdict,
)


def policy(on: RetryOn, **fields: object) -> RetryPolicy:
    return RetryPolicy(retry_on=on, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("on", "outcome", "retried"),
    [
        (RetryOn.FIVE_XX, 500, True),
        (RetryOn.FIVE_XX, 404, False),
        (RetryOn.GATEWAY_ERROR, 502, True),
        (RetryOn.GATEWAY_ERROR, 500, False),
        (RetryOn.RETRIABLE_4XX, 409, True),
        (RetryOn.RETRIABLE_4XX, 404, False),
        (RetryOn.CONNECT_FAILURE, "UF", True),
        (RetryOn.CONNECT_FAILURE, "UC", False),
        (RetryOn.RESET, "UC", True),
        (RetryOn.RESET, "UPE", True),
        (RetryOn.RESET, "UT", False),
        (RetryOn.GATEWAY_ERROR, "UT", True),  # Envoy: a timeout is a gateway error (504)
        (RetryOn.FIVE_XX, "UF", True),
    ],
)
def test_which_outcomes_each_condition_retries(on: RetryOn, outcome: str | int, retried: bool) -> None:
    assert verdict(policy(on), 1, True, outcome) == (RETRY if retried else ACCEPT)


def test_retriable_status_codes_are_the_listed_ones() -> None:
    p = policy(RetryOn.RETRIABLE_STATUS_CODES, retriable_status_codes=frozenset({418}))
    assert [verdict(p, 1, True, s) for s in (418, 503)] == [RETRY, ACCEPT]


def test_no_retry_left_or_a_body_not_kept_is_exhausted() -> None:
    p = policy(RetryOn.FIVE_XX)
    assert verdict(p, 0, True, 503) == EXHAUSTED
    assert verdict(p, 2, False, 503) == EXHAUSTED
    assert verdict(None, 2, True, 503) == ACCEPT


@given(st.integers(0, 12), st.floats(0, 1, exclude_max=True))
def test_backoff_is_fully_jittered_and_capped(attempt: int, unit: float) -> None:
    p = policy(RetryOn.FIVE_XX, backoff_base=0.025, backoff_max=0.25)
    delay = backoff_delay(p, attempt, unit)
    assert 0 <= delay < min(0.25, 0.025 * 2**attempt) or delay == 0


def test_backoff_doubles_until_the_cap() -> None:
    p = policy(RetryOn.FIVE_XX, backoff_base=0.025, backoff_max=0.25)
    assert [round(backoff_delay(p, n, 0.5), 4) for n in range(5)] == [
        0.0125, 0.025, 0.05, 0.1, 0.125,
    ]  # fmt: skip


def test_per_try_timeout_and_retries_allowed() -> None:
    p = policy(RetryOn.FIVE_XX, num_retries=3, per_try_timeout=0.5)
    assert per_try_timeout(p) == 0.5
    assert per_try_timeout(None) is None
    assert retries_allowed(p, upgrade=False) == 3
    assert retries_allowed(p, upgrade=True) == 0  # a tunnel cannot be replayed
    assert retries_allowed(None, upgrade=False) == 0


@pytest.mark.parametrize(
    ("name", "code"),
    [("cancelled", 1), ("deadline-exceeded", 4), ("resource-exhausted", 8), ("internal", 13),
     ("unavailable", 14)],
)  # fmt: skip
def test_grpc_conditions_retry_their_status_in_headers(name: str, code: int) -> None:
    from pilotfish.proxy.routing.policies import RETRY_ON_NAMES

    on = RETRY_ON_NAMES[name]
    assert verdict(policy(on), 1, True, 200, code) == RETRY
    assert verdict(policy(on), 0, True, 200, code) == EXHAUSTED
    assert verdict(policy(on), 1, True, 200, 0) == ACCEPT  # OK
    assert verdict(policy(on), 1, True, 200, None) == ACCEPT  # no grpc-status in the headers
    others = RetryOn.GRPC_CANCELLED if code != 1 else RetryOn.GRPC_UNAVAILABLE
    assert verdict(policy(others), 1, True, 200, code) == ACCEPT


def test_grpc_conditions_do_not_retry_http_statuses() -> None:
    assert verdict(policy(RetryOn.GRPC_UNAVAILABLE), 1, True, 503) == ACCEPT
    assert verdict(policy(RetryOn.FIVE_XX), 1, True, 200, 14) == ACCEPT
