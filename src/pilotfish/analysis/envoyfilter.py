"""Analyzers of EnvoyFilter patches (Istio's analyzers/envoyfilter)."""

from __future__ import annotations

from pilotfish.analysis.config import (
    NETWORKING,
    Config,
    items,
    mapping,
    name_of,
    namespace_of,
    spec,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.objects import Obj

_ROUTE_LEVEL = ("ROUTE_CONFIGURATION", "HTTP_ROUTE")
# REPLACE is also how a whole virtual host is swapped (Istio's test data expects no message).
_REPLACEABLE = ("HTTP_FILTER", "NETWORK_FILTER", "VIRTUAL_HOST")


def patches(config: Config) -> list[Message]:
    """IST0151-IST0155: patch operations that Envoy ignores for their applyTo,
    and relative ones without a priority, whose order is then undefined."""
    out: list[Message] = []
    versioned: list[str] = []  # patched filter names of filters that set a proxyVersion
    filters = sorted(
        config.of(NETWORKING, "EnvoyFilter"), key=lambda f: (namespace_of(f), name_of(f))
    )
    for envoy_filter in filters:
        for patch in items(spec(envoy_filter).get("configPatches")):
            body = mapping(mapping(patch).get("patch"))
            if not body:
                break
            name = _patched_name(mapping(patch), body)
            out += _check(
                envoy_filter, mapping(patch), str(body.get("operation") or ""), name, versioned
            )
            if mapping(mapping(mapping(patch).get("match")).get("proxy")).get("proxyVersion"):
                versioned.append(name)
    return out


def _check(
    envoy_filter: Obj, patch: Obj, operation: str, name: str, versioned: list[str]
) -> list[Message]:
    apply_to = str(patch.get("applyTo") or "")
    if operation == "ADD":
        return (
            [new("EnvoyFilterUsesAddOperationIncorrectly", envoy_filter)]
            if apply_to in _ROUTE_LEVEL
            else []
        )
    if operation == "REMOVE" and apply_to in _ROUTE_LEVEL:
        return [new("EnvoyFilterUsesRemoveOperationIncorrectly", envoy_filter)]
    if operation == "REPLACE" and apply_to not in _REPLACEABLE:
        return [new("EnvoyFilterUsesReplaceOperationIncorrectly", envoy_filter)]
    if operation not in ("REMOVE", "REPLACE", "INSERT_BEFORE", "INSERT_AFTER"):
        return []
    if spec(envoy_filter).get("priority"):
        return []
    kind = (
        "EnvoyFilterUsesRelativeOperationWithProxyVersion"
        if name in versioned
        else "EnvoyFilterUsesRelativeOperation"
    )
    return [new(kind, envoy_filter)]


def _patched_name(patch: Obj, body: Obj) -> str:
    value = mapping(body.get("value"))
    if not value:
        return ""
    if "name" in value:
        return str(value["name"])
    listener = mapping(mapping(patch.get("match")).get("listener"))
    return str(mapping(mapping(listener.get("filterChain")).get("filter")).get("name") or "")
