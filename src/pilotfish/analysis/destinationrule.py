"""Analyzers of DestinationRules (Istio's analyzers/destinationrule)."""

from __future__ import annotations

from pilotfish.analysis.config import (
    NETWORKING,
    Config,
    items,
    labels_match,
    mapping,
    name_of,
    namespace_of,
    spec,
    to_fqdn,
    workloads,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.objects import Obj

_VERIFIED_MODES = ("SIMPLE", "MUTUAL")


def locality_failover(config: Config) -> list[Message]:
    """PF0006: a localityLbSetting `failover` or `failoverPriority` beside no
    outlierDetection (Istio's webhook warns the same): proxies never learn a
    host is bad, so they never leave the caller's own locality.

    Checked at each level a traffic policy can be, as Istio checks it."""
    out = []
    for rule in config.of(NETWORKING, "DestinationRule"):
        for path, policy in _traffic_policies(spec(rule)):
            setting = mapping(mapping(policy.get("loadBalancer")).get("localityLbSetting"))
            failover = setting.get("failover") or setting.get("failoverPriority")
            if failover and policy.get("outlierDetection") is None:
                out.append(new("FailoverWithoutOutlierDetection", rule, path))
    return out


def _traffic_policies(rule_spec: Obj) -> list[tuple[str, Obj]]:
    """(path, policy) for the rule's, its subsets' and their port-level ones."""
    found = [("spec.trafficPolicy", mapping(rule_spec.get("trafficPolicy")))]
    found += [
        (f"spec.subsets[{i}].trafficPolicy", mapping(mapping(s).get("trafficPolicy")))
        for i, s in enumerate(items(rule_spec.get("subsets")))
    ]
    out = []
    for path, policy in found:
        out.append((path, policy))
        for j, settings in enumerate(items(policy.get("portLevelSettings"))):
            out.append((f"{path}.portLevelSettings[{j}]", mapping(settings)))
    return out


def ca_certificates(config: Config) -> list[Message]:
    """IST0128/IST0129: TLS to a destination without caCertificates does not
    verify the server; a credentialName on a gateway's rule (one with a
    workloadSelector) carries its own CA."""
    out = []
    for rule in config.of(NETWORKING, "DestinationRule"):
        policy = mapping(spec(rule).get("trafficPolicy"))
        host = str(spec(rule).get("host") or "")
        mode = _unverified(rule, mapping(policy.get("tls")))
        if mode:
            out.append(
                new(
                    "NoServerCertificateVerificationDestinationLevel",
                    rule,
                    name_of(rule),
                    namespace_of(rule),
                    mode,
                    host,
                )
            )
        for settings in items(policy.get("portLevelSettings")):
            mode = _unverified(rule, mapping(mapping(settings).get("tls")))
            if mode:
                port = str(mapping(mapping(settings).get("port")).get("number", ""))
                out.append(
                    new(
                        "NoServerCertificateVerificationPortLevel",
                        rule,
                        name_of(rule),
                        namespace_of(rule),
                        mode,
                        host,
                        port,
                    )
                )
    return out


def _unverified(rule: Obj, tls: Obj) -> str:
    mode = str(tls.get("mode") or "")
    if mode not in _VERIFIED_MODES or tls.get("caCertificates") or tls.get("insecureSkipVerify"):
        return ""
    if tls.get("credentialName") and spec(rule).get("workloadSelector"):
        return ""
    return mode


def subsets_select_workloads(config: Config) -> list[Message]:
    """IST0173: a subset of a Service's DestinationRule that no Workload or
    WorkloadEntry of the Service carries: requests routed to it get 503 UH.
    (Istio looks at Pods; pilotfish's are Workloads and WorkloadEntries.)"""
    out = []
    for rule in config.of(NETWORKING, "DestinationRule"):
        service = _service_of(
            config, to_fqdn(namespace_of(rule), str(spec(rule).get("host") or ""))
        )
        if service is None:
            continue
        selector = mapping(spec(service).get("selector"))
        labels = _workload_labels(config, namespace_of(service))
        for subset in items(spec(rule).get("subsets")):
            wanted = {**selector, **mapping(mapping(subset).get("labels"))}
            if not any(labels_match(wanted, have) for have in labels):
                out.append(
                    new("DestinationRuleSubsetNotSelectPods", rule, mapping(subset).get("name"))
                )
    return out


def _service_of(config: Config, host: str) -> Obj | None:
    return next(iter(config.services_at(host)), None)


def _workload_labels(config: Config, namespace: str) -> list[Obj]:
    return [
        mapping(spec(o).get("labels")) for o in workloads(config) if namespace_of(o) == namespace
    ]
