"""Istio's webhook rules for security.istio.io: AuthorizationPolicy,
PeerAuthentication, RequestAuthentication (pkg/config/validation)."""

from __future__ import annotations

from typing import Any

from pilotfish.api import checks
from pilotfish.api.semantic import Errors, Rules
from pilotfish.objects import Obj

GROUP = "security.istio.io"
_OPERATION_FIELDS = (
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
)
_IP_KEYS = ("source.ip", "remote.ip", "destination.ip")


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def authorization_policy(obj: Obj, errors: Errors) -> None:
    spec = _spec(obj)
    action, rules = spec.get("action", "ALLOW"), spec.get("rules")
    if action in ("CUSTOM", "DENY") and rules is None:
        errors.add(
            "spec.rules",
            f"{action} action without `rules` is meaningless as it will never be "
            "triggered, add an empty rule `{}` if you want it be triggered for every request",
        )
    for field in ("targetRef", "targetRefs"):
        if field in spec:
            errors.add(
                f"spec.{field}",
                f"Forbidden: `{field}` attaches a policy to a Kubernetes Gateway API "
                "resource (Gateway, Service), which pilotfish does not have; "
                "select workloads with `selector` instead",
            )
    if action == "CUSTOM" and not (spec.get("provider") or {}).get("name"):
        errors.add("spec.provider.name", "Required value: `provider.name` must not be empty")
    if spec.get("provider") and action != "CUSTOM":
        errors.add(
            "spec.provider", f"`provider` must not be with non CUSTOM action, found {action}"
        )
    for i, rule in enumerate(rules or []):
        _authz_rule(f"spec.rules[{i}]", i, rule or {}, errors)


def _authz_rule(path: str, index: int, rule: Obj, errors: Errors) -> None:
    if rule.get("from") == []:
        errors.add(f"{path}.from", f"`from` must not be empty, found at rule {index}")
    for j, item in enumerate(rule.get("from") or []):
        source = item.get("source")
        if not source:
            errors.add(
                f"{path}.from[{j}].source",
                f"`from.source` must not be empty, found at rule {index}",
            )
            continue
        for field in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
            for k, block in enumerate(source.get(field) or []):
                errors.invalid(
                    f"{path}.from[{j}].source.{field}[{k}]", block, *checks.ip_or_cidr(block)
                )
    if rule.get("to") == []:
        errors.add(f"{path}.to", f"`to` must not be empty, found at rule {index}")
    for j, item in enumerate(rule.get("to") or []):
        operation = item.get("operation")
        if not operation or not any(operation.get(f) for f in _OPERATION_FIELDS):
            errors.add(
                f"{path}.to[{j}].operation",
                f"`to.operation` must not be empty, found at rule {index}",
            )
            continue
        for field in ("ports", "notPorts"):
            for k, port in enumerate(operation.get(field) or []):
                _port_string(f"{path}.to[{j}].operation.{field}[{k}]", port, errors)
    for j, condition in enumerate(rule.get("when") or []):
        _condition(f"{path}.when[{j}]", condition, errors)


def _port_string(path: str, port: str, errors: Errors) -> None:
    number = int(port) if port.isdigit() else -1
    errors.invalid(path, port, *checks.port(number))


def _condition(path: str, condition: Obj, errors: Errors) -> None:
    key = str(condition.get("key", ""))
    if not key:
        errors.add(f"{path}.key", "Required value: `key` must not be empty")
        return
    if not condition.get("values") and not condition.get("notValues"):
        errors.add(path, f"at least one of `values` or `notValues` must be set for key {key}")
    for field in ("values", "notValues"):
        for k, value in enumerate(condition.get(field) or []):
            errors.invalid(f"{path}.{field}[{k}]", value, *_attribute(key, value))


def _attribute(key: str, value: str) -> list[str]:
    if key in _IP_KEYS:
        return checks.ip_or_cidr(value)
    if key == "destination.port":
        return checks.port(int(value) if value.isdigit() else -1)
    return []


def peer_authentication(obj: Obj, errors: Errors) -> None:
    spec = _spec(obj)
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if not selector and spec.get("portLevelMtls"):
        errors.add(
            "spec.portLevelMtls", "mesh/namespace peer authentication cannot have port level mTLS"
        )


def request_authentication(obj: Obj, errors: Errors) -> None:
    for i, rule in enumerate(_spec(obj).get("jwtRules") or []):
        _jwt_rule(f"spec.jwtRules[{i}]", rule, errors)


def _jwt_rule(path: str, rule: Obj, errors: Errors) -> None:
    if not rule.get("issuer"):
        errors.add(f"{path}.issuer", "Required value: issuer must be set")
    for i, audience in enumerate(rule.get("audiences") or []):
        if not audience:
            errors.add(f"{path}.audiences[{i}]", "audience must be non-empty string")
    if "timeout" in rule:
        errors.invalid(f"{path}.timeout", rule["timeout"], *checks.duration(rule["timeout"]))
    for i, header in enumerate(rule.get("outputClaimToHeaders") or []):
        name: Any = header.get("header", "")
        if str(name).lower() in ("host", ":authority"):
            errors.invalid(
                f"{path}.outputClaimToHeaders[{i}].header",
                name,
                "header name cannot be host or authority",
            )


RULES: dict[tuple[str, str], Rules] = {
    (GROUP, "AuthorizationPolicy"): authorization_policy,
    (GROUP, "PeerAuthentication"): peer_authentication,
    (GROUP, "RequestAuthentication"): request_authentication,
}
