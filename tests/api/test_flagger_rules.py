"""Canaries that could never run are refused when applied, with the field
and the reason; Flagger's own examples pass."""

from __future__ import annotations

from typing import Any

import pytest

from pilotfish.api.errors import Invalid
from pilotfish.api.validation import validate_or_raise


def canary(target_kind: str = "Deployment", **analysis: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test"},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": target_kind, "name": "podinfo"},
            "service": {"port": 9898},
            "analysis": {"interval": "1m", "threshold": 5, **analysis},
        },
    }


@pytest.mark.parametrize(
    "analysis",
    [
        {"maxWeight": 50, "stepWeight": 10},
        {"stepWeights": [1, 5, 20, 50]},
        {"iterations": 10, "match": [{"headers": {"x-canary": {"exact": "insider"}}}]},
        {"iterations": 10, "mirror": True, "mirrorWeight": 100},
        {"stepWeight": 10, "mirror": True},
        {
            "stepWeight": 5,
            "metrics": [
                {"name": "request-success-rate", "interval": "1m", "thresholdRange": {"min": 99}},
                {"name": "latency", "templateRef": {"name": "latency"}},
            ],
        },
    ],
)
def test_flaggers_strategies_pass(analysis: dict[str, Any]) -> None:
    validate_or_raise(canary(**analysis))


def test_a_target_may_be_a_workload_of_pilotfish() -> None:
    workload = canary("Workload", stepWeight=10)
    workload["spec"]["targetRef"]["apiVersion"] = "pilotfish.dev/v1alpha1"
    validate_or_raise(workload)
    with pytest.raises(Invalid) as refused:
        validate_or_raise(canary("Workload", stepWeight=10))  # apiVersion apps/v1
    assert (
        'spec.targetRef.apiVersion: Invalid value: "apps/v1": a Workload target is '
        "pilotfish.dev/v1alpha1" in str(refused.value)
    )


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (canary("DaemonSet", stepWeight=10), "spec.targetRef.kind: Invalid value"),
        (canary(), "should match exactly one schema in oneOf"),  # Flagger's CRD says so
        (canary(stepWeight=0), "spec.analysis.stepWeight: Invalid value: 0"),
        (canary(stepWeights=[20, 10]), "spec.analysis.stepWeights: Invalid value"),
        (canary(stepWeight=10, match=[{"headers": {}}]), "A/B testing (match) needs iterations"),
        (
            canary(iterations=10, match=[{"headers": {}}], mirror=True),
            "mirroring is for blue/green and canary releases, not A/B testing (match)",
        ),
        (canary(stepWeight=10, interval="soon"), "spec.analysis.interval: Invalid value"),
        (
            canary(stepWeight=10, metrics=[{"name": "error-rate"}]),
            "is not a built-in metric (request-success-rate, request-duration)",
        ),
    ],
)
def test_canaries_that_cannot_run_are_refused(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(Invalid) as refused:
        validate_or_raise(obj)
    assert message in str(refused.value)
