"""AuthorizationPolicy analyzers (Istio's analyzers/authz): a selector no
workload matches, and source namespaces that do not exist. pilotfish's
workloads are Workloads and WorkloadEntries (Istio's are Pods), all in the
mesh since the node agent gives every one a sidecar."""

from __future__ import annotations

import fnmatch

from pilotfish.analysis.config import (
    SECURITY,
    Config,
    items,
    labels_match,
    labels_text,
    mapping,
    namespace_of,
    spec,
    workloads,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.model.hosts import ROOT_NAMESPACE
from pilotfish.objects import Obj


def policies(config: Config) -> list[Message]:
    """IST0127 for a selector no workload matches (namespace-wide: none in the
    namespace), IST0101 for a source namespace pattern no namespace matches."""
    known = _namespaces(config)
    found = workloads(config)
    out = []
    for policy in config.of(SECURITY, "AuthorizationPolicy"):
        out += _workloads_matched(policy, found)
        for rule in items(spec(policy).get("rules")):
            for source in items(mapping(rule).get("from")):
                source = mapping(mapping(source).get("source"))
                for field in ("namespaces", "notNamespaces"):
                    out += [
                        new("ReferencedResourceNotFound", policy, "namespace", pattern)
                        for pattern in items(source.get(field))
                        if not any(fnmatch.fnmatchcase(ns, str(pattern)) for ns in known)
                    ]
    return out


def _workloads_matched(policy: Obj, found: list[Obj]) -> list[Message]:
    selector = mapping(mapping(spec(policy).get("selector")).get("matchLabels"))
    namespace = namespace_of(policy)
    mesh_wide = namespace == ROOT_NAMESPACE
    if mesh_wide and not selector:
        return []
    for workload in found:
        in_scope = mesh_wide or namespace_of(workload) == namespace
        if in_scope and labels_match(selector, mapping(spec(workload).get("labels"))):
            return []
    return [new("NoMatchingWorkloadsFound", policy, labels_text(selector))]


def _namespaces(config: Config) -> set[str]:
    """Namespaces that exist: Namespace objects, and any namespace an object
    lives in (pilotfish, unlike Kubernetes, needs no Namespace object first)."""
    names = {str(mapping(o.get("metadata")).get("name")) for o in config.of("", "Namespace")}
    return names | {namespace_of(o) for o in config.all() if namespace_of(o)}
