"""`--prometheus URL`: the dashboard's graph from a real Prometheus (Debian's,
finding a real sidecar through the control plane's HTTP service discovery)
agrees with the graph from the control plane's own sampler."""

from __future__ import annotations

import time

import pytest
from tests.rollout.metrics.test_metrics_real_prometheus import (  # noqa: F401 (fixtures)
    TOTAL,
    Sidecar,
    _value,
    discovery,
    prometheus,
    register,
    registry,
    send,
    sidecar,
    wait,
)

from pilotfish.api.errors import ApiError
from pilotfish.controlplane.api import Request
from pilotfish.dashboard.api import DashboardApi
from pilotfish.dashboard.prometheus import PrometheusMetrics
from pilotfish.dashboard.sampler import MeshSampler
from pilotfish.registry.instances import InstanceRegistry

pytestmark = pytest.mark.slow
REVIEWS = "workload:shop/reviews"


def graph_of(api: DashboardApi) -> dict:  # type: ignore[type-arg]
    answer = api(Request.of("GET", "/dashboard/api/graph?window=1m"), "/dashboard/api/graph")
    assert answer is not None and answer.status == 200
    return {(e["source"], e["target"]): e for e in answer.json()["edges"]}


def test_the_graph_from_prometheus_agrees_with_the_sampler(
    sidecar: Sidecar,  # noqa: F811
    registry: InstanceRegistry,  # noqa: F811
    prometheus: str,  # noqa: F811
) -> None:
    send(sidecar, ok=200, errors=100)  # before any scrape: invisible to both
    register(registry, sidecar)
    sampler = MeshSampler(registry.instances)
    sampler.sample()
    wait(lambda: _value(prometheus, TOTAL) == 300.0, 15, "Prometheus never saw the sidecar")
    send(sidecar, ok=90, errors=10, delay="0.035")
    wait(lambda: _value(prometheus, TOTAL) == 400.0, 10, "Prometheus never saw the requests")
    time.sleep(2.5)
    sampler.sample()

    own = graph_of(DashboardApi(sampler, registry.instances, lambda ns: []))
    metrics = PrometheusMetrics(prometheus, registry.instances)
    remote_api = DashboardApi(metrics, registry.instances, lambda ns: [])
    remote = graph_of(remote_api)
    assert own.keys() == remote.keys()
    (hop,) = [key for key in own if key[1] == REVIEWS]
    assert own[hop]["requests"] == 100
    assert own[hop]["errorRate"] == pytest.approx(0.1)
    assert remote[hop]["errorRate"] == pytest.approx(0.1)  # rate() extrapolates all alike
    assert remote[hop]["p99"] == pytest.approx(own[hop]["p99"], rel=1e-9)
    assert remote[hop]["health"] == own[hop]["health"] == "failure"
    timeline = "/dashboard/api/timeline"
    query = Request.of("GET", timeline + "?namespace=shop&workload=reviews&window=1m")
    answer = remote_api(query, timeline)
    assert answer is not None
    found = answer.json()
    assert found["points"] and found["points"][-1]["errorRate"] == pytest.approx(0.1)
    assert found["total"]["errorRate"] == pytest.approx(0.1)


def test_an_unreachable_prometheus_is_a_503_that_names_it(registry: InstanceRegistry) -> None:  # noqa: F811
    api = DashboardApi(
        PrometheusMetrics("http://127.0.0.1:9", registry.instances),
        registry.instances,
        lambda ns: [],
    )
    with pytest.raises(ApiError) as raised:
        api(Request.of("GET", "/dashboard/api/graph"), "/dashboard/api/graph")
    assert raised.value.code == 503
    assert "Prometheus at http://127.0.0.1:9 cannot be reached" in str(raised.value)
