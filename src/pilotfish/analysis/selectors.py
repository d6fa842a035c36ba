"""Sidecar and Telemetry workload selectors (Istio's analyzers/sidecar and
analyzers/telemetry SelectorAnalyzers): a selector no workload matches, two
objects selecting one workload, two namespace-wide objects in a namespace.
Workloads and WorkloadEntries stand in for Istio's Pods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pilotfish.analysis.config import (
    NETWORKING,
    TELEMETRY,
    Config,
    labels_match,
    labels_text,
    mapping,
    name_of,
    namespace_of,
    spec,
    workloads,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.objects import Obj


@dataclass(frozen=True)
class Selecting:
    group: str
    kind: str
    selector: Callable[[Obj], Obj]  # the object's workload selector; {} for namespace-wide
    conflicting: str  # message type for two objects on one workload
    namespace_wide: str  # message type for two namespace-wide objects


SIDECAR = Selecting(
    NETWORKING,
    "Sidecar",
    lambda o: mapping(mapping(spec(o).get("workloadSelector")).get("labels")),
    "ConflictingSidecarWorkloadSelectors",
    "MultipleSidecarsWithoutWorkloadSelectors",
)
TELEMETRY_KIND = Selecting(
    TELEMETRY,
    "Telemetry",
    lambda o: mapping(mapping(spec(o).get("selector")).get("matchLabels")),
    "ConflictingTelemetryWorkloadSelectors",
    "MultipleTelemetriesWithoutWorkloadSelectors",
)


def selected(config: Config, what: Selecting) -> list[Message]:
    """IST0101 for a selector matching nothing, the conflict type for a
    workload two selectors match."""
    out = []
    by_workload: dict[tuple[str, str], list[Obj]] = {}
    for obj in config.of(what.group, what.kind):
        selector = what.selector(obj)
        if not selector or _targeted(obj):
            continue
        matched = [
            w
            for w in workloads(config)
            if namespace_of(w) == namespace_of(obj)
            and labels_match(selector, mapping(spec(w).get("labels")))
        ]
        if not matched:
            out.append(new("ReferencedResourceNotFound", obj, "selector", labels_text(selector)))
        for w in matched:
            by_workload.setdefault((namespace_of(w), name_of(w)), []).append(obj)
    for (namespace, workload), found in sorted(by_workload.items()):
        if len(found) > 1:
            names = [name_of(o) for o in found]
            out += [new(what.conflicting, o, names, namespace, workload) for o in found]
    return out


def namespace_wide(config: Config, what: Selecting) -> list[Message]:
    """Two objects without a selector in one namespace: which applies is undefined."""
    by_namespace: dict[str, list[Obj]] = {}
    for obj in config.of(what.group, what.kind):
        if not what.selector(obj) and not _targeted(obj):
            by_namespace.setdefault(namespace_of(obj), []).append(obj)
    out = []
    for namespace, found in sorted(by_namespace.items()):
        if len(found) > 1:
            names = [name_of(o) for o in found]
            out += [new(what.namespace_wide, o, names, namespace) for o in found]
    return out


def _targeted(obj: Obj) -> bool:
    return bool(spec(obj).get("targetRef") or spec(obj).get("targetRefs"))


def sidecars(config: Config) -> list[Message]:
    """Sidecars: selectors matching no workload, two on one workload, two namespace-wide."""
    return selected(config, SIDECAR) + namespace_wide(config, SIDECAR)


def telemetry_selectors(config: Config) -> list[Message]:
    """Telemetries: selectors matching no workload, two on one workload."""
    return selected(config, TELEMETRY_KIND)


def telemetry_namespace_wide(config: Config) -> list[Message]:
    """IST0160: two Telemetries without a selector in one namespace."""
    return namespace_wide(config, TELEMETRY_KIND)
