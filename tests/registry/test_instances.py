"""Instance leases: registration, renewal, expiry on silence, health, and
the wire shape's validation."""

from __future__ import annotations

import pytest

from pilotfish.model import Instance
from pilotfish.registry.instances import (
    InstanceRegistry,
    InstanceTable,
    InvalidRegistration,
    instance_from_json,
    instance_to_json,
)


def inst(name: str = "reviews-v1-0", healthy: bool = True) -> Instance:
    return Instance(
        name=name,
        namespace="default",
        workload="reviews-v1",
        address="127.0.0.1",
        ports={"http": 9080},
        labels={"app": "reviews", "version": "v1"},
        healthy=healthy,
    )


def test_renewal_extends_the_lease_and_silence_expires_it() -> None:
    table = InstanceTable()
    assert table.register(inst(), ttl=3, now=0) is True
    assert table.register(inst(), ttl=3, now=2) is False  # a bare heartbeat changes nothing
    assert table.expire(now=4) == []
    assert [i.name for i in table.expire(now=5)] == ["reviews-v1-0"]
    assert table.instances() == ()


def test_a_health_change_is_a_change() -> None:
    table = InstanceTable()
    table.register(inst(), ttl=3, now=0)
    assert table.register(inst(healthy=False), ttl=3, now=1) is True


def test_registry_notifies_on_change_and_expiry_not_on_heartbeat() -> None:
    now = [0.0]
    changes: list[int] = []
    registry = InstanceRegistry(lambda: changes.append(1), clock=lambda: now[0])
    registry.register(inst(), ttl=2)
    registry.register(inst(), ttl=2)
    assert len(changes) == 1
    now[0] = 1.9
    assert registry.sweep() == []
    now[0] = 2.0
    assert [i.name for i in registry.sweep()] == ["reviews-v1-0"]
    assert len(changes) == 2 and registry.instances() == ()


def test_remove_is_a_change_only_when_registered() -> None:
    changes: list[int] = []
    registry = InstanceRegistry(lambda: changes.append(1))
    assert registry.remove("default", "nobody") is False
    registry.register(inst())
    assert registry.remove("default", "reviews-v1-0") is True
    assert len(changes) == 2


def test_wire_shape_round_trip() -> None:
    body = {
        "name": "reviews-v1-0",
        "workload": "reviews-v1",
        "address": "10.0.0.7",
        "ports": {"http": 9080},
        "labels": {"app": "reviews", "version": "v1"},
        "serviceAccount": "bookinfo-reviews",
        "locality": "us-east/zone-a",
        "ttlSeconds": 5,
    }
    instance, ttl = instance_from_json(body)
    assert ttl == 5 and instance.namespace == "default" and instance.healthy
    registry = InstanceRegistry(clock=lambda: 100.0)
    lease = registry.register(instance, ttl)
    shown = instance_to_json(lease, 101.0)
    assert shown["expiresInSeconds"] == 4.0
    assert {k: shown[k] for k in body} == {**body, "ttlSeconds": 5.0}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"address": "1.2.3.4", "ports": {"http": 1}}, "name: Required value"),
        ({"name": "a", "ports": {"http": 1}}, "address: Required value"),
        ({"name": "a", "address": "1.2.3.4"}, "ports: Required value"),
        ({"name": "a", "address": "1.2.3.4", "ports": {"http": 70000}}, "ports.http: must be"),
        ({"name": "a", "address": "1.2.3.4", "ports": {"h": 1}, "ttlSeconds": 0}, "ttlSeconds"),
        ({"name": "a", "address": "1.2.3.4", "ports": {"h": 1}, "healthy": "yes"}, "healthy"),
        ({"name": "a", "address": "1.2.3.4", "ports": {"h": 1}, "labels": {"a": 1}}, "labels"),
        ({"name": "a", "address": "1.2.3.4", "ports": {"h": 1}, "locality": "r//s"}, "locality"),
        ({"name": "a", "address": "1.2.3.4", "ports": {"h": 1}, "locality": "a/b/c/d"}, "locality"),
    ],
)
def test_invalid_registrations_name_the_field(body: dict[str, object], error: str) -> None:
    with pytest.raises(InvalidRegistration, match=error):
        instance_from_json(body)
