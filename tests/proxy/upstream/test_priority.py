"""Priority levels, degraded hosts and panic mode, against the tables in Envoy's docs."""

import pytest
from upstream_kit import level, localities, make_cluster, share_by_priority

from pilotfish.proxy.upstream.priority import Level, priority_load


def load(*levels: tuple[int, int], factor: int = 140, threshold: float = 50.0) -> tuple[int, ...]:
    """Healthy load per level, given (healthy, total) per level, in hosts."""
    lv = [Level(h, 0, t) for h, t in levels]
    return priority_load(lv, lv, factor, threshold).healthy


@pytest.mark.parametrize(
    ("p0_healthy", "expected"),
    [(100, (100, 0)), (72, (100, 0)), (71, (99, 1)), (50, (70, 30)), (25, (35, 65)), (0, (0, 100))],
)
def test_p0_spills_to_a_healthy_p1(p0_healthy: int, expected: tuple[int, int]) -> None:
    assert load((p0_healthy, 100), (100, 100)) == expected


@pytest.mark.parametrize(
    ("p0", "p1", "expected"),
    [
        (100, 100, (100, 0)),
        (72, 72, (100, 0)),
        (71, 71, (99, 1)),
        (50, 50, (70, 30)),
        (25, 100, (35, 65)),
        (25, 25, (50, 50)),
    ],
)
def test_two_levels_both_degrading(p0: int, p1: int, expected: tuple[int, int]) -> None:
    assert load((p0, 100), (p1, 100)) == expected


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        ((100, 100, 100), (100, 0, 0)),
        ((72, 72, 100), (100, 0, 0)),
        ((71, 71, 100), (99, 1, 0)),
        ((50, 50, 100), (70, 30, 0)),
        ((25, 100, 100), (35, 65, 0)),
        ((25, 25, 100), (35, 35, 30)),
    ],
)
def test_three_levels(health: tuple[int, int, int], expected: tuple[int, ...]) -> None:
    assert load(*((h, 100) for h in health)) == expected


def test_rounding_leftover_goes_to_the_first_healthy_level() -> None:
    # Health 35/35/28 sums to 98: each is scaled by 100/98 and floored (35/35/28),
    # and Envoy gives the 2 left over to P=0. (Its docs table rounds to 36/36/28.)
    # Panic is off here: with it on, all three levels panic and share by host count.
    assert load((25, 100), (25, 100), (20, 100), threshold=0) == (37, 35, 28)
    assert load((25, 100), (25, 100), (20, 100)) == (34, 33, 33)


def test_overprovisioning_factor_comes_from_the_assignment() -> None:
    # Factor 1.0: 80% healthy is only 80% available; P=1 takes the rest.
    assert load((80, 100), (100, 100), factor=100) == (80, 20)


def test_degraded_hosts_take_load_only_when_healthy_ones_cannot() -> None:
    def split(healthy: int, degraded: int, total: int = 100) -> tuple[int, int]:
        lv = [Level(healthy, degraded, total)]
        result = priority_load(lv, lv)
        return result.healthy[0], result.degraded[0]

    assert split(100, 0) == (100, 0)
    assert split(71, 0) == (100, 0)
    assert split(71, 29) == (99, 1)
    assert split(25, 65) == (35, 65)
    assert split(5, 0) == (100, 0)


@pytest.mark.parametrize(
    ("p0", "p1", "panic"),
    [
        (72, 72, (False, False)),
        (50, 60, (False, False)),
        (25, 100, (False, False)),
        (25, 25, (True, True)),
        (5, 65, (True, False)),
    ],
)
def test_panic_only_when_total_availability_is_short(
    p0: int, p1: int, panic: tuple[bool, bool]
) -> None:
    lv = [Level(p0, 0, 100), Level(p1, 0, 100)]
    assert priority_load(lv, lv).panic == panic


def test_all_levels_in_panic_share_load_by_host_count() -> None:
    lv = [Level(1, 0, 10), Level(0, 0, 30)]
    assert priority_load(lv, lv).healthy == (25, 75)


def test_nothing_healthy_and_panic_disabled_means_no_host() -> None:
    c = make_cluster(
        localities(level(0, 0, unhealthy=3)),
        common_lb_config={"healthy_panic_threshold": {"value": 0}},
    )
    assert c.pick() is None
    assert c.stats()["upstream_cx_none_healthy"] == 1


def test_cluster_fails_over_to_p1_in_the_documented_proportion() -> None:
    # P=0: 5 of 10 healthy -> 50% * 1.4 = 70% of traffic; P=1 takes 30%.
    c = make_cluster(localities(level(0, 5, unhealthy=5), level(1, 10, base=100)))
    shares = share_by_priority(c)
    assert 67 <= shares[0] <= 73 and 27 <= shares[1] <= 33
    assert all(h.health_flags() == "healthy" for h in c.hosts if h.priority == 1)


def test_p0_keeps_all_traffic_while_above_72_percent() -> None:
    c = make_cluster(localities(level(0, 8, unhealthy=2), level(1, 4, base=100)))
    assert share_by_priority(c) == {0: 100}


def test_panic_balances_across_all_hosts_of_the_level() -> None:
    # 1 of 4 healthy and nothing else to fail over to: panic, all four get traffic.
    c = make_cluster(localities(level(0, 1, unhealthy=3)))
    picks = {h.port for h in c.hosts}
    counts: dict[int, int] = {}
    for _ in range(400):
        h = c.pick()
        assert h is not None
        counts[h.port] = counts.get(h.port, 0) + 1
    assert set(counts) == picks and len(picks) == 4
    assert c.stats()["lb_healthy_panic"] == 400


def test_below_panic_threshold_but_p1_healthy_means_no_panic() -> None:
    c = make_cluster(localities(level(0, 1, unhealthy=9), level(1, 10, base=100)))
    for _ in range(2000):
        h = c.pick()
        assert h is not None and h.health_flags() == "healthy"
    assert c.stats()["lb_healthy_panic"] == 0


def test_weighted_priority_health_counts_weights() -> None:
    # One healthy host of weight 3 beside an unhealthy one of weight 1: 75% by weight.
    from upstream_kit import endpoint

    p0 = {"priority": 0, "lb_endpoints": [endpoint(1, weight=3), endpoint(2, "UNHEALTHY")]}
    by_count = make_cluster(localities(p0, level(1, 4, base=100)))
    by_weight = make_cluster(localities(p0, level(1, 4, base=100), weighted_priority_health=True))
    assert by_count.priority_load is not None and by_count.priority_load.healthy == (70, 30)
    assert by_weight.priority_load is not None and by_weight.priority_load.healthy == (100, 0)
