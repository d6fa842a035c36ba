"""Locality load balancing, as istiod applies it to each proxy's endpoints.

Endpoints are grouped by locality (region/zone/subzone). For a caller, the
groups of a cluster then get, as Istio's `ApplyLocalityLoadBalancer` gives
them:

- with `distribute`: the first rule whose `from` matches the caller sets
  the groups' weights (a `to` entry's weight is split over the groups it
  matches, by their own weights); groups no entry matches get no endpoints;
- otherwise, and only when the cluster has outlier detection (without it the
  proxy never learns a host is bad, so a lower priority would never be
  used): priorities by proximity, 0 for the caller's own subzone, 1 its zone,
  2 its region, 3 elsewhere, 4 for regions a `failover` rule from the
  caller's region does not name; or with `failoverPriority`, by how many of
  the listed labels (in order) the endpoint shares with the caller, each
  group split by that, then `failover` on top when it is also set.

Priorities are renumbered 0..N without gaps, as Envoy wants them. The
setting comes from the DestinationRule's `loadBalancer.localityLbSetting`,
else the mesh config's (Istio's default mesh config enables it); either may
turn it off with `enabled: false`.

The caller's locality is its node's (the sidecar's bootstrap `node.locality`),
else that of the instance it fronts. Endpoints and callers carry their
locality as Kubernetes topology labels too, so that `failoverPriority` can
name them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pilotfish.model import Endpoint, Proxy, Snapshot
from pilotfish.model.locality import locality_labels, split_locality
from pilotfish.model.types import Labels
from pilotfish.objects import Obj
from pilotfish.translate.traffic_policy import cluster_policy

FAILOVER_LEVELS = 5  # priorities applyLocalityFailover hands out (0..4)


@dataclass(frozen=True)
class LocalityGroup:
    """One LocalityLbEndpoints before it becomes a proto."""

    locality: str
    endpoints: tuple[Endpoint, ...]
    weight: int
    priority: int = 0


@dataclass(frozen=True)
class Caller:
    locality: str
    labels: Labels


@dataclass(frozen=True)
class LocalityPolicy:
    """What of the DestinationRule and mesh config applies to one cluster."""

    setting: Obj | None
    failover: bool  # the cluster has outlier detection

    @property
    def weighted(self) -> bool:
        """Whether the cluster balances over localities by their weights
        (Envoy's locality_weighted_lb_config), as Istio decides it."""
        if self.setting is None:
            return False
        if self.setting.get("distribute"):
            return True
        return self.failover and bool(
            self.setting.get("failover") or self.setting.get("failoverPriority")
        )


def caller(snapshot: Snapshot, proxy: Proxy) -> Caller:
    locality = proxy.locality or next(
        (i.locality for i in snapshot.own_instances(proxy) if i.locality), ""
    )
    return Caller(locality, {**proxy.labels, **locality_labels(locality)})


def locality_setting(mesh: Mapping[str, Any], lb: Obj | None) -> Obj | None:
    """Istio's GetLocalityLbSetting: the DestinationRule's setting wins, else
    the mesh's; `enabled: false` in the one that applies turns it off."""
    rule = (lb or {}).get("localityLbSetting")
    if rule is not None:
        return None if rule.get("enabled") is False else dict(rule)
    found = mesh.get("localityLbSetting", {"enabled": True})
    if not isinstance(found, dict) or found.get("enabled") is False:
        return None
    return found


def locality_policy(mesh: Mapping[str, Any], policy: Obj) -> LocalityPolicy:
    """For a cluster's merged traffic policy (traffic_policy.cluster_policy)."""
    setting = locality_setting(mesh, policy.get("loadBalancer"))
    return LocalityPolicy(setting, policy.get("outlierDetection") is not None)


def cluster_locality_policy(
    snapshot: Snapshot, proxy: Proxy, host: str, port: int, subset: str
) -> LocalityPolicy:
    policy = cluster_policy(snapshot.destination_rule(proxy, host), subset, port)
    return locality_policy(snapshot.mesh_config, policy)


def group_by_locality(endpoints: Iterable[Endpoint]) -> list[LocalityGroup]:
    """Groups sorted by locality, each weighing the sum of its endpoints'
    weights (gRPC's xDS client drops a locality without a weight)."""
    by_locality: dict[str, list[Endpoint]] = {}
    for e in endpoints:
        by_locality.setdefault(e.locality, []).append(e)
    return [
        LocalityGroup(loc, tuple(members), sum(max(e.weight, 1) for e in members))
        for loc, members in sorted(by_locality.items())
    ]


def apply_locality_lb(
    groups: Sequence[LocalityGroup], who: Caller, policy: LocalityPolicy
) -> list[LocalityGroup]:
    setting = policy.setting
    if setting is None:
        return list(groups)
    if setting.get("distribute"):
        return apply_distribute(groups, who.locality, setting["distribute"])
    if not policy.failover:
        return list(groups)
    failover = setting.get("failover") or []
    priorities = setting.get("failoverPriority") or []
    if priorities:
        out = apply_failover_priority(groups, who.labels, priorities)
        return apply_failover(out, who.locality, failover) if failover else out
    return apply_failover(groups, who.locality, failover)


def locality_match(locality: str, rule: str) -> bool:
    """Istio's LocalityMatch: each part equal, or the rule's part `*` or empty."""
    return all(
        rule_part in ("", "*") or part == rule_part
        for part, rule_part in zip(split_locality(locality), split_locality(rule), strict=True)
    )


def lb_priority(caller_locality: str, endpoint_locality: str) -> int:
    """0 same subzone, 1 same zone, 2 same region, 3 elsewhere."""
    mine, theirs = split_locality(caller_locality), split_locality(endpoint_locality)
    for level in range(3):
        if mine[level] != theirs[level]:
            return 3 - level
    return 0


def apply_distribute(
    groups: Sequence[LocalityGroup], locality: str, rules: Sequence[Obj]
) -> list[LocalityGroup]:
    rule = next((r for r in rules if locality_match(locality, str(r.get("from") or ""))), None)
    if rule is None:
        return list(groups)
    out: list[LocalityGroup | None] = [None] * len(groups)
    for target, weight in (rule.get("to") or {}).items():
        matched = [
            i for i, g in enumerate(groups) if out[i] is None and locality_match(g.locality, target)
        ]
        total = sum(groups[i].weight for i in matched)
        for i in matched:
            share = math.ceil(groups[i].weight * int(weight) / total) if total else 0
            out[i] = replace(groups[i], weight=share or groups[i].weight)
    # A locality the rule does not send to keeps its place but loses its endpoints.
    return [g if g is not None else replace(groups[i], endpoints=()) for i, g in enumerate(out)]


def apply_failover(
    groups: Sequence[LocalityGroup], locality: str, rules: Sequence[Obj]
) -> list[LocalityGroup]:
    region = split_locality(locality)[0]
    raw = []
    for g in groups:
        priority = lb_priority(locality, g.locality)
        if priority == 3:
            rule = next((r for r in rules if r.get("from") == region), None)
            if rule is not None and split_locality(g.locality)[0] != rule.get("to"):
                priority = 4
        # Priorities set by failoverPriority stay the major order.
        raw.append(g.priority * FAILOVER_LEVELS + priority)
    return _renumbered(groups, raw)


def apply_failover_priority(
    groups: Sequence[LocalityGroup], labels: Labels, priorities: Sequence[str]
) -> list[LocalityGroup]:
    if not labels or not groups:
        return list(groups)
    wanted = [_label_and_value(text, labels) for text in priorities]
    out = [part for g in groups for part in _split_by_labels(g, wanted)]
    return _renumbered(out, [g.priority for g in out])


def _label_and_value(text: str, labels: Labels) -> tuple[str, str]:
    """`label` compares with the caller's value; `label=value` with that value."""
    name, sep, value = text.partition("=")
    return name, value if sep else labels.get(name, "")


def _split_by_labels(group: LocalityGroup, wanted: list[tuple[str, str]]) -> list[LocalityGroup]:
    lowest = len(wanted)
    by_priority: dict[int, list[Endpoint]] = {}
    for e in group.endpoints:
        own = {**e.labels, **locality_labels(e.locality)}
        priority = next(
            (lowest - j for j, (name, value) in enumerate(wanted) if own.get(name, "") != value), 0
        )
        by_priority.setdefault(priority, []).append(e)
    return [
        replace(
            group,
            endpoints=tuple(members),
            priority=p,
            weight=sum(max(e.weight, 1) for e in members),
        )
        for p, members in sorted(by_priority.items())
    ]


def _renumbered(groups: Sequence[LocalityGroup], raw: list[int]) -> list[LocalityGroup]:
    """Priorities 0..N in the order of `raw`, without gaps."""
    rank = {p: i for i, p in enumerate(sorted(set(raw)))}
    return [replace(g, priority=rank[p]) for g, p in zip(groups, raw, strict=True)]
