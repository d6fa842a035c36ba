"""How metrics find the sidecars: the agent registers each instance with its
sidecar's admin port, the registry keeps it, and the control plane answers
Prometheus' HTTP service discovery with one target per sidecar."""

from __future__ import annotations

import pytest
from tests.rollout.metrics.sidecar_pages import instance

from pilotfish.api.errors import MethodNotAllowed
from pilotfish.client.registration import registration
from pilotfish.controlplane.api import Request
from pilotfish.controlplane.mesh_api import PROMETHEUS_TARGETS, MeshApi, prometheus_targets
from pilotfish.registry.instances import (
    InstanceRegistry,
    InvalidRegistration,
    Lease,
    instance_from_json,
    instance_to_json,
)


def body(metrics_port: object = 15000) -> dict[str, object]:
    return registration(
        name="reviews-7f9c",
        namespace="shop",
        workload="reviews",
        labels={"app": "reviews"},
        service_account="reviews",
        ports={"http": 9080},
        app_ports={"http": 19080},
        metrics_port=metrics_port,  # type: ignore[arg-type]
        healthy=True,
    )


def test_the_metrics_port_travels_from_agent_to_registry_and_back() -> None:
    found, ttl = instance_from_json(body())
    assert found.metrics_port == 15000
    assert instance_to_json(Lease(found, ttl, 10.0), 0.0)["metricsPort"] == 15000


def test_a_registration_without_a_metrics_port_is_still_one() -> None:
    without = {k: v for k, v in body().items() if k != "metricsPort"}
    assert instance_from_json(without)[0].metrics_port == 0


@pytest.mark.parametrize("bad", [-1, 65536, "15000", True, False, 1.5])
def test_a_bad_metrics_port_is_refused(bad: object) -> None:
    with pytest.raises(InvalidRegistration, match="metricsPort: must be a port number"):
        instance_from_json(body(bad))


def test_one_target_group_per_sidecar_with_a_metrics_port() -> None:
    instances = [
        instance("reviews-2", port=15002),
        instance("ratings-1", workload="ratings", port=15001, namespace="books"),
        instance("reviews-3", port=0),
    ]
    assert prometheus_targets(instances) == [
        {
            "targets": ["127.0.0.1:15001"],
            "labels": {
                "__metrics_path__": "/stats/prometheus",
                "namespace": "books",
                "workload": "ratings",
                "instance_name": "ratings-1",
            },
        },
        {
            "targets": ["127.0.0.1:15002"],
            "labels": {
                "__metrics_path__": "/stats/prometheus",
                "namespace": "shop",
                "workload": "reviews",
                "instance_name": "reviews-2",
            },
        },
    ]


def test_the_discovery_path_of_the_api() -> None:
    registry = InstanceRegistry()
    registry.register(instance_from_json(body())[0])
    api = MeshApi(registry, None)
    answer = api(Request.of("GET", PROMETHEUS_TARGETS), PROMETHEUS_TARGETS)
    assert answer is not None and answer.status == 200
    assert answer.json() == [
        {
            "targets": ["127.0.0.1:15000"],
            "labels": {
                "__metrics_path__": "/stats/prometheus",
                "namespace": "shop",
                "workload": "reviews",
                "instance_name": "reviews-7f9c",
            },
        }
    ]
    with pytest.raises(MethodNotAllowed):
        api(Request.of("POST", PROMETHEUS_TARGETS), PROMETHEUS_TARGETS)
