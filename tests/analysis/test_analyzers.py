"""Analyzers where pilotfish's kinds stand in for Kubernetes' (Workloads for
Pods), and the write path's view of one object among the live ones."""

from __future__ import annotations

from typing import Any

from pilotfish.analysis import analyze, warnings_for

Obj = dict[str, Any]


def _obj(api: str, kind: str, name: str, spec: Obj) -> Obj:
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


SERVICE = _obj(
    "v1",
    "Service",
    "reviews",
    {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]},
)
RULE = _obj(
    "networking.istio.io/v1",
    "DestinationRule",
    "reviews",
    {"host": "reviews", "subsets": [{"name": n, "labels": {"version": n}} for n in ("v1", "v2")]},
)


def _workload(version: str) -> Obj:
    labels = {"app": "reviews", "version": version}
    return _obj(
        "pilotfish.dev/v1alpha1",
        "Workload",
        f"reviews-{version}",
        {"labels": labels, "command": ["x"]},
    )


def test_a_subset_no_workload_carries_is_ist0173() -> None:
    messages = [
        str(m) for m in analyze([SERVICE, RULE, _workload("v1")]) if m.type.code == "IST0173"
    ]
    assert messages == [
        "Error [IST0173] (DestinationRule default/reviews) The Subset v2 defined in the "
        "DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream)."
    ]
    entry = _obj(
        "networking.istio.io/v1",
        "WorkloadEntry",
        "vm",
        {"address": "10.0.0.9", "labels": {"app": "reviews", "version": "v2"}},
    )
    assert [
        m for m in analyze([SERVICE, RULE, _workload("v1"), entry]) if m.type.code == "IST0173"
    ] == []


def test_the_write_path_reports_on_the_written_object_only() -> None:
    first = _obj(
        "networking.istio.io/v1",
        "VirtualService",
        "a",
        {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
    )
    second = {**first, "metadata": {"name": "b", "namespace": "default"}}
    stored = {("", "Service"): [SERVICE], ("networking.istio.io", "VirtualService"): [first]}
    warnings = warnings_for(second, lambda group, kind, ns: stored.get((group, kind), []))
    assert [w.split(")")[0] for w in warnings] == ["Error [IST0109] (VirtualService default/b"]
    # the stored copy of the object being written is replaced, not counted twice
    stored[("networking.istio.io", "VirtualService")] = [first, second]
    assert warnings_for(second, lambda group, kind, ns: stored.get((group, kind), [])) == warnings


def test_every_analyzer_lists_with_a_description(capsys: Any) -> None:
    from pilotfish.analysis import ANALYZERS
    from pilotfish.cli.main import main

    assert all(a.description for a in ANALYZERS)
    assert main(["analyze", "-L"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "* authz.AuthorizationPoliciesAnalyzer:"
    assert lines[1].startswith("    IST0127 for a selector no workload matches")
    assert len(lines) == 2 * len(ANALYZERS)


def test_workload_ports_no_service_targets_are_pf0002() -> None:
    workload = _workload("v1")
    workload["spec"]["ports"] = [{"name": "http", "port": 9080}, {"name": "admin", "port": 9901}]
    found = [str(m) for m in analyze([SERVICE, workload]) if m.type.code == "PF0002"]
    assert found == [
        "Warning [PF0002] (Workload default/reviews-v1) Workload port admin (9901) is the target "
        "of no port of a Service selecting this Workload, so nothing in the mesh can call it."
    ]
    named = {
        **SERVICE,
        "spec": {**SERVICE["spec"], "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    assert [m.text for m in analyze([named, workload]) if m.type.code == "PF0002"] == [
        found[0].split(") ", 1)[1]
    ]
    alone = [m for m in analyze([workload]) if m.type.code == "PF0002"]
    assert len(alone) == 2


def test_ports_of_no_usable_shape_do_not_crash_the_workload_analyzer() -> None:
    service = _obj(
        "v1",
        "Service",
        "s",
        {"selector": {"app": "reviews"}, "ports": [5, {"port": "x"}, {"name": 3, "port": 9080}]},
    )
    workload = _workload("v1")
    workload["spec"]["ports"] = [{"name": "http", "port": 9080}]
    assert [m for m in analyze([service, workload]) if m.type.code == "PF0002"] == []
