"""The PromQL pieces behind the built-ins: counters across restarts and
histogram_quantile, case by case as Prometheus computes them."""

from __future__ import annotations

import math

import pytest

from pilotfish.rollout.metrics.promql import counted, histogram_quantile

INF = math.inf


def test_a_counter_counts_its_rise() -> None:
    assert counted({"a": 10.0, "b": 5.0}, {"a": 15.0, "b": 5.0}) == {"a": 5.0, "b": 0.0}


def test_a_counter_that_falls_restarted_from_zero() -> None:
    assert counted({"a": 100.0}, {"a": 30.0}) == {"a": 30.0}


def test_a_new_series_counts_whole_and_a_vanished_one_not_at_all() -> None:
    assert counted({"gone": 7.0}, {"new": 3.0}) == {"new": 3.0}


def test_p99_interpolates_inside_its_bucket() -> None:
    # 100 requests: 90 under 10 ms, 10 between 10 and 100 ms; rank 99 is 9/10 into (10, 100].
    assert histogram_quantile(0.99, {10.0: 90, 100.0: 100, INF: 100}) == pytest.approx(91.0)


def test_the_first_bucket_starts_at_zero() -> None:
    assert histogram_quantile(0.5, {10.0: 100, INF: 100}) == pytest.approx(5.0)


def test_a_rank_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, {10.0: 0, 25.0: 10, INF: 100}) == 25.0


def test_a_first_bucket_at_or_below_zero_is_its_bound() -> None:
    assert histogram_quantile(0.5, {0.0: 10, 5.0: 10, INF: 10}) == 0.0


def test_where_promql_gives_nan_there_is_no_value() -> None:
    assert histogram_quantile(0.99, {}) is None
    assert histogram_quantile(0.99, {INF: 5}) is None, "fewer than two buckets"
    assert histogram_quantile(0.99, {10.0: 5, 20.0: 5}) is None, "no +Inf bucket"
    assert histogram_quantile(0.99, {10.0: 0, INF: 0}) is None, "no observations"


def test_counts_that_fall_with_the_bound_are_held_at_the_highest_so_far() -> None:
    # (10 -> 50, 25 -> 40): 25 is read as 50, so the rank (49.5) falls in the first bucket.
    assert histogram_quantile(0.99, {10.0: 50, 25.0: 40, INF: 50}) == pytest.approx(9.9)
