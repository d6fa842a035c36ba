"""PF0006: failover configured where no outlier detection could trigger it."""

from __future__ import annotations

from typing import Any

from pilotfish.analysis import analyze


def rule(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"host": "echo", **spec},
    }


FAILOVER = {"loadBalancer": {"localityLbSetting": {"failover": [{"from": "a", "to": "b"}]}}}
PRIORITY = {"loadBalancer": {"localityLbSetting": {"failoverPriority": ["network"]}}}
OUTLIER = {"outlierDetection": {"consecutive5xxErrors": 1}}


def pf0006(obj: dict[str, Any]) -> list[str]:
    return [str(m) for m in analyze([obj]) if m.type.code == "PF0006"]


def test_failover_without_outlier_detection_warns_where_it_is() -> None:
    assert pf0006(rule(trafficPolicy=FAILOVER)) == [
        "Warning [PF0006] (DestinationRule default/echo) spec.trafficPolicy: outlier "
        "detection policy must be provided for failover"
    ]
    subset = {"name": "v1", "labels": {"v": "1"}, "trafficPolicy": PRIORITY}
    port = {"port": {"number": 80}, **FAILOVER}
    got = pf0006(rule(subsets=[subset], trafficPolicy={"portLevelSettings": [port], **OUTLIER}))
    assert [m.split(") ")[1].split(":")[0] for m in got] == [
        "spec.subsets[0].trafficPolicy",
        "spec.trafficPolicy.portLevelSettings[0]",  # port-level settings do not inherit it
    ]


def test_no_warning_with_outlier_detection_or_without_failover() -> None:
    assert pf0006(rule(trafficPolicy={**FAILOVER, **OUTLIER})) == []
    assert pf0006(rule(trafficPolicy={**PRIORITY, "outlierDetection": {}})) == []
    distribute = {"distribute": [{"from": "a/*", "to": {"a/*": 100}}]}
    assert pf0006(rule(trafficPolicy={"loadBalancer": {"localityLbSetting": distribute}})) == []
