"""localityLbSetting is refused as Istio's webhook refuses it, in its words,
at the field; what it accepts passes (cases after Istio's validation tests)."""

from __future__ import annotations

from typing import Any

import pytest

from pilotfish.api.validation import validate


def messages(setting: dict[str, Any], where: str = "trafficPolicy") -> list[str]:
    policy = {"loadBalancer": {"localityLbSetting": setting}}
    spec: dict[str, Any] = {"host": "r", "trafficPolicy": policy}
    if where == "subset":
        subset = {"name": "v1", "labels": {"v": "1"}, "trafficPolicy": policy}
        spec = {"host": "r", "subsets": [subset]}
    obj = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": spec,
    }
    return [str(e) for e in validate(obj)]


P = "spec.trafficPolicy.loadBalancer.localityLbSetting"


@pytest.mark.parametrize(
    "setting",
    [
        {"distribute": [{"from": "a/b/*", "to": {"a/b/*": 80, "a/c/*": 20}}]},
        {"distribute": [{"from": "a/*", "to": {"a/*": 100}}, {"from": "b/*", "to": {"b/*": 100}}]},
        {"failover": [{"from": "us-east", "to": "eu-west"}]},
        {"failoverPriority": ["topology.kubernetes.io/region", "network=n1"]},
        {"failover": [{"from": "a", "to": "b"}], "failoverPriority": ["network"]},
        {"enabled": False},
    ],
)
def test_accepted(setting: dict[str, Any]) -> None:
    assert messages(setting) == []


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        (
            {
                "distribute": [{"from": "a", "to": {"a": 100}}],
                "failover": [{"from": "a", "to": "b"}],
            },
            f"{P}: can not simultaneously specify 'distribute' and 'failover'",
        ),
        (
            {
                "failover": [{"from": "a", "to": "b"}],
                "failoverPriority": ["topology.istio.io/subzone"],
            },
            f"{P}.failoverPriority: can not simultaneously set 'failover' and topology label "
            "'topology.istio.io/subzone' in 'failover_priority'",
        ),
        (
            {"distribute": [{"from": "a/*", "to": {"a/b": 60, "a/c": 30}}]},
            f"{P}.distribute[0].to: total locality weight 90 != 100",
        ),
        (
            {"distribute": [{"from": "a/*", "to": {"a/b": 0, "a/c": 100}}]},
            f"{P}.distribute[0].to: locality weight must be in range [1, 100]",
        ),
        (
            {"distribute": [{"from": "a/*", "to": {"a/*/c": 100}}]},
            f"{P}.distribute[0].to: locality a/*/c wildcard '*' number can not exceed 1 and "
            "must be in the end",
        ),
        (
            {"distribute": [{"from": "a//c", "to": {"a": 100}}]},
            f"{P}.distribute: locality a//c must not contain empty region/zone/subzone info",
        ),
        (
            {"distribute": [{"from": "a/*", "to": {"a/*": 50, "a/b": 50}}]},
            f"{P}.distribute[0].to: locality a/b overlap with previous specified ones",
        ),
        (
            {"distribute": [{"from": "*", "to": {"a": 100}}, {"from": "b", "to": {"b": 100}}]},
            f"{P}.distribute: locality b overlap with previous specified ones",
        ),
        (
            {"failover": [{"from": "a", "to": "a"}]},
            f"{P}.failover[0]: locality lb failover settings must specify different regions",
        ),
        (
            {"failover": [{"from": "a/z", "to": "b"}]},
            f"{P}.failover[0]: locality lb failover only specify region",
        ),
        (
            {"failover": [{"from": "a*", "to": "b"}]},
            f"{P}.failover[0]: locality lb failover region should not contain '*' wildcard",
        ),
    ],
)
def test_refused_in_istios_words(setting: dict[str, Any], error: str) -> None:
    assert messages(setting) == [error]


def test_a_subsets_setting_is_checked_too() -> None:
    got = messages({"failover": [{"from": "a", "to": "a"}]}, where="subset")
    assert got == [
        "spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting.failover[0]: "
        "locality lb failover settings must specify different regions"
    ]
