"""A cluster of one endpoint picks it without asking its balancer
(upstream/cluster.py `_LbState.only`): the same host, and the same
counters, as the balancer would give."""

from __future__ import annotations

import pytest
from upstream_kit import eds_assignment, endpoint, make_cluster

from pilotfish.proxy.upstream.host import Health


def one_host(health: str = "HEALTHY") -> dict[str, object]:
    return {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [endpoint(8000, health)]}]}


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH"])
def test_the_one_host_is_picked_every_time_even_when_excluded(policy: str) -> None:
    cluster = make_cluster(one_host(), lb_policy=policy)
    (host,) = cluster.hosts
    assert {cluster.pick(hash_key=7) for _ in range(5)} == {host}
    # previous_hosts excludes it: as in Envoy, the last pick is used anyway.
    assert cluster.pick(exclude={host}, retries=3) is host
    assert cluster.lb_healthy_panic == 0


def test_a_second_endpoint_is_balanced_to_once_it_comes() -> None:
    cluster = make_cluster(one_host(), lb_policy="ROUND_ROBIN")
    two = {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [endpoint(8000), endpoint(8001)]}]}
    cluster.set_assignment(eds_assignment(two))
    picks = [cluster.pick() for _ in range(4)]
    assert {h.port for h in picks if h is not None} == {8000, 8001}


def test_an_unhealthy_lone_host_is_picked_in_panic_and_each_pick_counted() -> None:
    cluster = make_cluster(one_host("UNHEALTHY"), lb_policy="ROUND_ROBIN")
    (host,) = cluster.hosts
    assert host.health is not Health.HEALTHY
    assert cluster.pick() is host
    assert cluster.lb_healthy_panic == 1
    # Excluded, it is picked again for each of the retries, each in panic.
    assert cluster.pick(exclude={host}, retries=2) is host
    assert cluster.lb_healthy_panic == 4


def test_a_lone_host_whose_locality_has_no_weight_gets_nothing() -> None:
    assignment = {
        "cluster_name": "svc",
        "endpoints": [{"locality": {"zone": "a"}, "lb_endpoints": [endpoint(8000)]}],
    }
    cluster = make_cluster(
        assignment, lb_policy="ROUND_ROBIN",
        common_lb_config={"locality_weighted_lb_config": {}},
    )  # fmt: skip
    assert cluster.pick() is None
    assert cluster.upstream_cx_none_healthy == 1
