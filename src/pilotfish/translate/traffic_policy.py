"""A DestinationRule's traffic policy as it applies to one cluster: the
top-level policy, its portLevelSettings for the port, then the subset's
policy and the subset's own portLevelSettings (Istio's MergeTrafficPolicy).

Port-level settings replace connectionPool, loadBalancer, outlierDetection and
tls as a whole, even where they leave one unset: Istio documents that they do
not inherit. A subset's policy overrides field by field.
"""

from __future__ import annotations

from pilotfish.model import DestinationRule
from pilotfish.objects import Obj

PORT_FIELDS = ("connectionPool", "loadBalancer", "outlierDetection", "tls")
SUBSET_FIELDS = (*PORT_FIELDS, "proxyProtocol", "tunnel")


def with_port_settings(policy: Obj | None, port: int) -> Obj:
    if not policy:
        return {}
    out = {k: v for k, v in policy.items() if k != "portLevelSettings"}
    for settings in policy.get("portLevelSettings") or []:
        if (settings.get("port") or {}).get("number") == port:
            for name in PORT_FIELDS:
                out[name] = settings.get(name)
            break
    return {k: v for k, v in out.items() if v is not None}


def cluster_policy(rule: DestinationRule | None, subset: str, port: int) -> Obj:
    """The effective policy of `outbound|port|subset|host`."""
    if rule is None:
        return {}
    merged = with_port_settings(rule.traffic_policy, port)
    found = rule.subset(subset) if subset else None
    if found is None or not found.traffic_policy:
        return merged
    for name in SUBSET_FIELDS:
        if found.traffic_policy.get(name) is not None:
            merged[name] = found.traffic_policy[name]
    for name, value in with_port_settings(found.traffic_policy, port).items():
        if name in PORT_FIELDS:
            merged[name] = value
    return merged


def consistent_hash(rule: DestinationRule | None, subset: str, port: int | None) -> Obj | None:
    """The consistentHash a route to this destination hashes by (Istio's
    HashForHTTPDestination): the subset's port-level, the subset's, the
    port-level, then the top-level one. Port-level settings count only when
    the destination names its port."""
    if rule is None:
        return None
    candidates = []
    found = rule.subset(subset) if subset else None
    if found is not None and found.traffic_policy:
        candidates += [_port_hash(found.traffic_policy, port), _hash(found.traffic_policy)]
    candidates += [_port_hash(rule.traffic_policy, port), _hash(rule.traffic_policy)]
    return next((c for c in candidates if c), None)


def _hash(policy: Obj | None) -> Obj | None:
    lb = (policy or {}).get("loadBalancer") or {}
    hashed: Obj | None = lb.get("consistentHash")
    return hashed


def _port_hash(policy: Obj | None, port: int | None) -> Obj | None:
    if port is None:
        return None
    for settings in (policy or {}).get("portLevelSettings") or []:
        if (settings.get("port") or {}).get("number") == port:
            return _hash(settings)
    return None
