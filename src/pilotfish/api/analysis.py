"""Cross-object warnings, like `istioctl analyze`: an object that is valid alone
but refers to things that do not exist. Warnings never reject an object, since
the things it refers to may simply be applied next."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Obj = dict[str, Any]
Lookup = Callable[[str, str, str], list[Obj]]
NETWORKING = "networking.istio.io"
_DOMAIN = "svc.cluster.local"
TARGET_REFS_IGNORED = (
    "targetRefs attaches a policy to a Kubernetes Gateway API resource, which "
    "pilotfish does not have: this policy applies to no workload; use selector"
)


def analyze(obj: Obj, lookup: Lookup) -> list[str]:
    """Warnings about `obj` given the stored objects `lookup(group, kind, namespace)` returns."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    kind = obj.get("kind")
    if group == NETWORKING and kind == "VirtualService":
        return _virtual_service(obj, lookup)
    if group == NETWORKING and kind == "DestinationRule":
        return _destination_rule(obj)
    if group == "security.istio.io" and kind == "RequestAuthentication":
        return _request_authentication(obj)
    return []


def _request_authentication(obj: Obj) -> list[str]:
    """Rules whose tokens cannot pass: no key source, or keys the control
    plane could not get (its Ready condition, once it has tried)."""
    spec = obj.get("spec") or {}
    warnings = [TARGET_REFS_IGNORED] if spec.get("targetRef") or spec.get("targetRefs") else []
    for i, rule in enumerate(spec.get("jwtRules") or []):
        if not rule.get("jwks") and not rule.get("jwksUri"):
            warnings.append(
                f"jwtRules[{i}]: neither jwks nor jwksUri: tokens of issuer "
                f"{rule.get('issuer', '')} will fail (keys are not discovered from the issuer)"
            )
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("reason") == "JwksUnavailable":
            warnings.append(f"JWKS unavailable: {condition.get('message', '')}")
    return warnings


def _namespace(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def fqdn(host: str, namespace: str) -> str:
    """A short name means a Service in the object's own namespace, as in Istio."""
    if "." not in host and host != "*":
        return f"{host}.{namespace}.{_DOMAIN}"
    if host.count(".") == 1 and not host.startswith("*"):
        return f"{host}.{_DOMAIN}"
    return host


def _virtual_service(obj: Obj, lookup: Lookup) -> list[str]:
    namespace, spec = _namespace(obj), obj.get("spec") or {}
    warnings = _missing_gateways(spec, namespace, lookup)
    rules = [dr.get("spec") or {} for dr in lookup(NETWORKING, "DestinationRule", namespace)]
    known = _known_hosts(namespace, lookup)
    for dest in _destinations(spec):
        host, subset = str(dest.get("host", "")), dest.get("subset")
        full = fqdn(host, namespace)
        if not any(_host_covers(h, full) for h in known):
            warnings.append(f'referenced host not found: "{host}"')
        if subset and not _subset_defined(subset, full, namespace, rules):
            warnings.append(
                f"referenced subset {subset} not found in any DestinationRule for host {host}"
            )
    return list(dict.fromkeys(warnings))


def _missing_gateways(spec: Obj, namespace: str, lookup: Lookup) -> list[str]:
    names = list(spec.get("gateways") or [])
    for route in spec.get("http") or []:
        for match in route.get("match") or []:
            names += match.get("gateways") or []
    warnings = []
    for name in dict.fromkeys(names):
        if name == "mesh":
            continue
        gw_namespace, _, gw_name = name.rpartition("/") if "/" in name else (namespace, "", name)
        if "/" not in name and "." in name:  # legacy name.namespace form
            gw_name, _, gw_namespace = name.partition(".")
            gw_namespace = gw_namespace.split(".")[0]
        stored = lookup(NETWORKING, "Gateway", gw_namespace)
        if not any((g.get("metadata") or {}).get("name") == gw_name for g in stored):
            warnings.append(f'referenced gateway not found: "{name}"')
    return warnings


def _destinations(spec: Obj) -> Iterator[Obj]:
    for section in ("http", "tcp", "tls"):
        for route in spec.get(section) or []:
            for weighted in route.get("route") or []:
                if isinstance(weighted.get("destination"), dict):
                    yield weighted["destination"]
            if isinstance(route.get("mirror"), dict):
                yield route["mirror"]


def _known_hosts(namespace: str, lookup: Lookup) -> list[str]:
    hosts = []
    for svc in lookup("", "Service", namespace):
        meta = svc.get("metadata") or {}
        hosts.append(f"{meta.get('name')}.{meta.get('namespace') or namespace}.{_DOMAIN}")
    for entry in lookup(NETWORKING, "ServiceEntry", namespace):
        hosts += [fqdn(h, namespace) for h in (entry.get("spec") or {}).get("hosts") or []]
    return hosts


def _host_covers(pattern: str, host: str) -> bool:
    return pattern == host or (pattern.startswith("*") and host.endswith(pattern[1:]))


def _subset_defined(subset: str, host: str, namespace: str, rules: list[Obj]) -> bool:
    for rule in rules:
        covers = _host_covers(fqdn(str(rule.get("host", "")), namespace), host)
        if covers and any(s.get("name") == subset for s in rule.get("subsets") or []):
            return True
    return False


def _destination_rule(obj: Obj) -> list[str]:
    """Istio accepts a subset without labels; it selects every endpoint, which is
    rarely what was meant."""
    host = (obj.get("spec") or {}).get("host")
    return [
        f"subset {s.get('name')} has no labels and selects every endpoint of host {host}"
        for s in (obj.get("spec") or {}).get("subsets") or []
        if not s.get("labels")
    ]
