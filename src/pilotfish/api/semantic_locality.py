"""Istio's rules for `localityLbSetting` (validateLocalityLbSetting), with
its messages: `distribute` and `failover` exclude each other; `distribute`
weights are 1..100 and sum to 100 per `from`; localities have no empty part,
at most one `*` and only at the end, and do not overlap; a `failover` names
two different regions, without `/` or `*`, and is not combined with a
topology label in `failoverPriority`."""

from __future__ import annotations

from typing import Any

from pilotfish.api.semantic import Errors

TOPOLOGY_LABELS = (
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
)


def locality_lb_setting(path: str, setting: Any, errors: Errors) -> None:
    if not isinstance(setting, dict):
        return
    distribute = setting.get("distribute") or []
    failover = setting.get("failover") or []
    if distribute and failover:
        errors.add(path, "can not simultaneously specify 'distribute' and 'failover'")
        return
    if failover:
        for label in setting.get("failoverPriority") or []:
            if label in TOPOLOGY_LABELS:
                errors.add(
                    f"{path}.failoverPriority",
                    f"can not simultaneously set 'failover' and topology label '{label}' "
                    "in 'failover_priority'",
                )
                return
    if _distribute(f"{path}.distribute", distribute, errors):
        return
    for i, rule in enumerate(failover):
        if isinstance(rule, dict):
            _failover(f"{path}.failover[{i}]", rule, errors)


def _distribute(path: str, rules: list[Any], errors: Errors) -> bool:
    """True when an error stops the checks, as Istio returns at the first."""
    for i, rule in enumerate(r for r in rules if isinstance(r, dict)):
        weights = rule.get("to") or {}
        if any(not isinstance(w, int) or not 0 < w <= 100 for w in weights.values()):
            errors.add(f"{path}[{i}].to", "locality weight must be in range [1, 100]")
            return True
        if sum(weights.values()) != 100:
            errors.add(f"{path}[{i}].to", f"total locality weight {sum(weights.values())} != 100")
            return True
        message = overlapping_localities([str(k) for k in weights])
        if message:
            errors.add(f"{path}[{i}].to", message)
    sources = [str(r.get("from") or "") for r in rules if isinstance(r, dict)]
    message = overlapping_localities(sources)
    if message:
        errors.add(path, message)
    return False


def _failover(path: str, rule: dict[str, Any], errors: Errors) -> None:
    source, target = str(rule.get("from") or ""), str(rule.get("to") or "")
    if source == target:
        errors.add(path, "locality lb failover settings must specify different regions")
    if "/" in source or "/" in target:
        errors.add(path, "locality lb failover only specify region")
    if "*" in source or "*" in target:
        errors.add(path, "locality lb failover region should not contain '*' wildcard")


def overlapping_localities(localities: list[str]) -> str:
    """Istio's validateLocalities: the first problem's message, or ""."""
    seen: dict[str, dict[str, set[str]]] = {}
    for locality in localities:
        stars = locality.count("*")
        if stars and (stars > 1 or not locality.endswith("*")):
            return (
                f"locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            )
        overlap = f"locality {locality} overlap with previous specified ones"
        if "*" in seen:
            return overlap
        parts = locality.split("/", 2)
        if any(not p for p in parts):
            return f"locality {locality} must not contain empty region/zone/subzone info"
        if _overlaps(seen, parts):
            return overlap
    return ""


def _overlaps(seen: dict[str, dict[str, set[str]]], parts: list[str]) -> bool:
    """Record `parts`; whether an earlier locality already covers them."""
    region = parts[0]
    if len(parts) == 1:
        if region in seen:
            return True
        seen[region] = {"*": {"*"}}
        return False
    zones = seen.setdefault(region, {})
    if "*" in zones:
        return True
    zone = parts[1]
    if len(parts) == 2:
        if zone in zones:
            return True
        zones[zone] = {"*"}
        return False
    subzones = zones.setdefault(zone, set())
    if "*" in subzones or parts[2] in subzones:
        return True
    subzones.add(parts[2])
    return False
