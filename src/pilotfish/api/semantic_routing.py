"""Istio's webhook rules for VirtualService (pkg/config/validation): hosts,
gateways, delegation, HTTP/TCP/TLS routes, matches, destinations and weights,
retries, faults, mirrors, redirects, rewrites, direct responses, CORS."""

from __future__ import annotations

from typing import Any

from pilotfish.api import checks
from pilotfish.api.semantic import Errors, Rules
from pilotfish.api.semantic_networking import GROUP, check_export_to, namespace_of, spec_of
from pilotfish.objects import Obj

_STRING_MATCH_FIELDS = ("uri", "scheme", "method", "authority")
_RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
        "http3-post-connect-failure",
        "reset-before-request",
    }
)
_GRPC_STATUS = frozenset(
    {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)
_CORS_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def virtual_service(obj: Obj, errors: Errors) -> None:
    spec = spec_of(obj)
    hosts, gateways = spec.get("hosts") or [], spec.get("gateways") or []
    if not hosts:
        _delegate_limits(spec, errors)
    for i, name in enumerate(gateways):
        _gateway_name(f"spec.gateways[{i}]", name, errors)
    _vs_hosts(hosts, mesh=not gateways or "mesh" in gateways, errors=errors)
    if not (spec.get("http") or spec.get("tcp") or spec.get("tls")):
        errors.add("spec", "http, tcp or tls must be provided in virtual service")
    for i, route in enumerate(spec.get("http") or []):
        _http_route(f"spec.http[{i}]", route, delegate=not hosts, errors=errors)
    if all(g == "mesh" for g in gateways):
        _no_claims_in_the_mesh(spec, gateways, errors)
    for i, route in enumerate(spec.get("tcp") or []):
        _l4_route(f"spec.tcp[{i}]", route, "TCP", errors)
    for i, route in enumerate(spec.get("tls") or []):
        _tls_route(f"spec.tls[{i}]", route, errors)
    check_export_to(spec.get("exportTo") or [], namespace_of(obj), errors)


def _no_claims_in_the_mesh(spec: Obj, gateways: list[str], errors: Errors) -> None:
    """Only a gateway validates JWTs before routing, so only its routes may
    match on claims (Istio's words; Go prints the gateway list as [a b])."""
    shown = "[" + " ".join(gateways) + "]"
    for i, route in enumerate(spec.get("http") or []):
        for j, match in enumerate(route.get("match") or []):
            for field in ("headers", "withoutHeaders"):
                for key in match.get(field) or {}:
                    if str(key).startswith("@request.auth.claims"):
                        errors.add(
                            f"spec.http[{i}].match[{j}].{field}",
                            f"JWT claim based routing (key: {key}) is only supported for "
                            f"gateway, found no gateways: {shown}",
                        )


def _delegate_limits(spec: Obj, errors: Errors) -> None:
    """A VirtualService without hosts is a delegate: only http routes mean anything."""
    if spec.get("gateways"):
        errors.add("spec.gateways", "delegate virtual service must have no gateways specified")
    if spec.get("tls"):
        errors.add("spec.tls", "delegate virtual service must have no tls route specified")
    if spec.get("tcp"):
        errors.add("spec.tcp", "delegate virtual service must have no tcp route specified")


def _gateway_name(path: str, name: str, errors: Errors) -> None:
    if name == "mesh":
        return
    namespace, slash, gateway = name.partition("/")
    if not slash:
        errors.invalid(path, name, *checks.fqdn(name))
        return
    if not namespace or not gateway:
        errors.invalid(path, name, "config namespace and gateway name cannot be empty")
    elif not checks.is_istio_label(namespace):
        errors.invalid(path, name, f'invalid value for namespace: "{namespace}"')
    elif not checks.is_istio_label(gateway):
        errors.invalid(path, name, f'invalid value for gateway name: "{gateway}"')


def _vs_hosts(hosts: list[str], mesh: bool, errors: Errors) -> None:
    valid = True
    for i, host in enumerate(hosts):
        problems = [] if checks.is_ip(host) else checks.wildcard_domain(host)
        if not problems and mesh and host == "*":
            problems = [
                "wildcard host * is not allowed for virtual services bound to the mesh gateway"
            ]
        errors.invalid(f"spec.hosts[{i}]", host, *problems)
        valid = valid and not problems
    if not valid:
        return
    for i, a in enumerate(hosts):
        for b in hosts[i + 1 :]:
            if checks.host_matches(a, b):
                errors.invalid("spec.hosts", b, f"duplicate hosts in virtual service: {a} & {b}")


def _http_route(path: str, route: Obj, delegate: bool, errors: Errors) -> None:
    _route_kind(path, route, delegate, errors)
    for j, match in enumerate(route.get("match") or []):
        _http_match(f"{path}.match[{j}]", match, errors)
    for j, dest in enumerate(route.get("route") or []):
        _destination(f"{path}.route[{j}].destination", dest.get("destination"), errors)
        header_operations(f"{path}.route[{j}].headers", dest.get("headers"), errors)
    header_operations(f"{path}.headers", route.get("headers"), errors)
    _weights(f"{path}.route", route.get("route") or [], errors)
    if "timeout" in route:
        errors.invalid(f"{path}.timeout", route["timeout"], *checks.duration(route["timeout"]))
    _retries(f"{path}.retries", route.get("retries"), errors)
    _fault(f"{path}.fault", route.get("fault"), errors)
    _mirrors(path, route, errors)
    _redirect(f"{path}.redirect", route.get("redirect"), route.get("match") or [], errors)
    _rewrite(f"{path}.rewrite", route.get("rewrite"), errors)
    _direct_response(f"{path}.directResponse", route.get("directResponse"), errors)
    _cors(f"{path}.corsPolicy", route.get("corsPolicy"), errors)


def _route_kind(path: str, route: Obj, delegate: bool, errors: Errors) -> None:
    """A route forwards, redirects or answers; a root route only delegates."""
    if route.get("delegate") is not None:
        if delegate:
            errors.add(f"{path}.delegate", "delegate HTTP route cannot contain delegate")
        for field in ("route", "redirect", "directResponse"):
            if route.get(field) is not None:
                errors.add(f"{path}.{field}", f"root HTTP route must not specify {field}")
        return
    actions = [f for f in ("route", "redirect", "directResponse") if route.get(f)]
    if len(actions) > 1:
        errors.add(path, f"HTTP route cannot contain both {actions[0]} and {actions[1]}")
    elif not actions:
        errors.add(path, "HTTP route, redirect or direct response is required")
    if route.get("redirect") or route.get("directResponse"):
        for field in ("fault", "rewrite"):
            if route.get(field) is not None:
                action = "redirect" if route.get("redirect") else "directResponse"
                errors.add(
                    f"{path}.{field}", f"HTTP route cannot contain both {field} and {action}"
                )


def _http_match(path: str, match: Obj, errors: Errors) -> None:
    for field in _STRING_MATCH_FIELDS:
        _string_match(f"{path}.{field}", match.get(field), errors)
    for field in ("headers", "queryParams", "withoutHeaders"):
        for key, value in (match.get(field) or {}).items():
            if field != "queryParams":
                errors.invalid(f"{path}.{field}", key, *checks.header_name_or_jwt_claim(key))
            if field == "headers" and value is None:
                errors.add(f"{path}.{field}[{key}]", f"header match {key} cannot be null")
            _string_match(f"{path}.{field}[{key}]", value, errors)
    if match.get("port"):
        errors.invalid(f"{path}.port", match["port"], *checks.port(match["port"]))
    labels = match.get("sourceLabels") or {}
    errors.invalid(f"{path}.sourceLabels", labels, *checks.selector_labels(labels))
    namespace = match.get("sourceNamespace")
    if namespace and not checks.is_istio_label(namespace):
        errors.invalid(
            f"{path}.sourceNamespace", namespace, f"sourceNamespace match {namespace} is invalid"
        )
    for i, name in enumerate(match.get("gateways") or []):
        _gateway_name(f"{path}.gateways[{i}]", name, errors)


def header_operations(path: str, headers: Any, errors: Errors) -> None:
    """Istio's rules for `headers.request` and `headers.response`: a request may
    set or add the authority (Host) but never remove it; a response may not
    touch Host at all; no other pseudo-header may be written."""
    if not isinstance(headers, dict):
        return
    for side in ("request", "response"):
        ops = _section(headers, side)
        name_check = (
            checks.request_header_write if side == "request" else checks.header_operation_name
        )
        for op in ("add", "set"):
            for name, value in (ops.get(op) or {}).items():
                at = f"{path}.{side}.{op}"
                errors.invalid(at, name, *name_check(str(name)))
                errors.invalid(f"{at}[{name}]", value, *checks.header_value(str(value)))
        for i, name in enumerate(ops.get("remove") or []):
            errors.invalid(
                f"{path}.{side}.remove[{i}]", name, *checks.header_operation_name(str(name))
            )
    _authority_once(path, headers, errors)


def _section(headers: Obj, side: str) -> Obj:
    found = headers.get(side)
    return found if isinstance(found, dict) else {}


def _authority_once(path: str, headers: Obj, errors: Errors) -> None:
    request = _section(headers, "request")
    current = ""
    for op in ("set", "add"):
        for name, value in (request.get(op) or {}).items():
            if str(name).lower() not in (":authority", "host"):
                continue
            if current:
                errors.add(
                    f"{path}.request.{op}",
                    f'authority header cannot be set multiple times: have "{current}", '
                    f'attempting to set "{value}"',
                )
                return
            current = str(value)


def _string_match(path: str, match: Any, errors: Errors) -> None:
    if not isinstance(match, dict):
        return
    if "prefix" in match and match["prefix"] == "":
        errors.invalid(f"{path}.prefix", "", "prefix string match should not be empty")
    if "regex" in match:
        pattern = match["regex"]
        reasons = (
            ("regex string match should not be empty",) if pattern == "" else checks.regex(pattern)
        )
        errors.invalid(f"{path}.regex", pattern, *reasons)


def _destination(path: str, dest: Any, errors: Errors) -> None:
    if not isinstance(dest, dict):
        errors.add(path, "Required value: destination is required")
        return
    host = str(dest.get("host", ""))
    reasons = [f"invalid destination host {host}"] if host == "*" else checks.wildcard_domain(host)
    errors.invalid(f"{path}.host", host, *reasons)
    subset = dest.get("subset")
    if subset is not None and not checks.is_istio_label(subset):
        errors.invalid(f"{path}.subset", subset, f"subset name is invalid: {subset}")
    number = (dest.get("port") or {}).get("number")
    if number is not None:
        errors.invalid(f"{path}.port.number", number, *checks.port(number))


def _weights(path: str, destinations: list[Obj], errors: Errors) -> None:
    """Istio's rule: no weight below 0, and more than one destination needs a
    positive total (Envoy then splits in proportion; Istio no longer demands 100)."""
    total = 0
    for i, dest in enumerate(destinations):
        weight = int(dest.get("weight", 0))
        if weight < 0:
            errors.invalid(f"{path}[{i}].weight", weight, "must be >= 0")
        total += weight
    if len(destinations) > 1 and total == 0:
        errors.add(path, "total destination weight = 0")


def _retries(path: str, retries: Any, errors: Errors) -> None:
    if not isinstance(retries, dict):
        return
    attempts = int(retries.get("attempts", 0))
    if attempts < 0:
        errors.invalid(f"{path}.attempts", attempts, "attempts cannot be negative")
    if attempts == 0 and any(
        retries.get(f) for f in ("perTryTimeout", "retryOn", "retryRemoteLocalities")
    ):
        errors.add(path, "http retry policy configured when attempts are set to 0 (disabled)")
    for field in ("perTryTimeout", "backoff"):
        if field in retries:
            errors.invalid(f"{path}.{field}", retries[field], *checks.duration(retries[field]))
    for policy in str(retries.get("retryOn", "")).split(","):
        if policy and not policy.isdigit() and policy not in _RETRY_ON:
            errors.invalid(f"{path}.retryOn", policy, f'"{policy}" is not a valid retryOn policy')


def _fault(path: str, fault: Any, errors: Errors) -> None:
    if not isinstance(fault, dict):
        return
    if not fault.get("abort") and not fault.get("delay"):
        errors.add(path, "HTTP fault injection must have an abort and/or a delay")
    abort, delay = fault.get("abort") or {}, fault.get("delay") or {}
    for part, name in ((abort, "abort"), (delay, "delay")):
        _fault_percent(f"{path}.{name}", part, errors)
    if "httpStatus" in abort:
        status = int(abort["httpStatus"])
        if not 200 <= status <= 599:
            errors.invalid(
                f"{path}.abort.httpStatus", status, f"HTTP status {status} is not in range 200-599"
            )
    if "grpcStatus" in abort and abort["grpcStatus"] not in _GRPC_STATUS:
        errors.invalid(
            f"{path}.abort.grpcStatus", abort["grpcStatus"], "gRPC status is not supported"
        )
    if "http2Error" in abort:
        errors.add(f"{path}.abort.http2Error", "HTTP/2 abort fault injection not supported yet")
    if "fixedDelay" in delay:
        errors.invalid(
            f"{path}.delay.fixedDelay", delay["fixedDelay"], *checks.duration(delay["fixedDelay"])
        )
    if "exponentialDelay" in delay:
        errors.add(f"{path}.delay.exponentialDelay", "exponentialDelay not supported yet")


def _fault_percent(path: str, part: Obj, errors: Errors) -> None:
    value = (part.get("percentage") or {}).get("value")
    if value is not None and (value < 0 or value > 100 or 0 < value < 0.0001):
        reason = f"percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"
        errors.invalid(f"{path}.percentage.value", value, reason)
    if "percent" in part:
        errors.invalid(f"{path}.percent", part["percent"], *checks.percent(part["percent"]))


def _mirrors(path: str, route: Obj, errors: Errors) -> None:
    if route.get("mirror") is not None and route.get("mirrors"):
        errors.add(path, "HTTP route cannot contain both mirror and mirrors")
    if "mirror" in route:
        _destination(f"{path}.mirror", route["mirror"], errors)
    percent = route.get("mirrorPercent")
    if isinstance(percent, int) and percent > 100:
        errors.invalid(
            f"{path}.mirrorPercent",
            percent,
            f"mirror_percent must have a max value of 100 (it has {percent})",
        )
    value = (route.get("mirrorPercentage") or {}).get("value")
    errors.invalid(f"{path}.mirrorPercentage.value", value, *_share("mirror_percentage", value))
    for i, mirror in enumerate(route.get("mirrors") or []):
        _destination(f"{path}.mirrors[{i}].destination", mirror.get("destination"), errors)
        share = (mirror.get("percentage") or {}).get("value")
        errors.invalid(
            f"{path}.mirrors[{i}].percentage.value", share, *_share("mirror percentage", share)
        )


def _share(name: str, value: Any) -> list[str]:
    """Istio's words for a mirrored share out of range (Go's %f: six decimals)."""
    if not isinstance(value, (int, float)):
        return []
    if value > 100:
        return [f"{name} must have a max value of 100 (it has {value:f})"]
    if value < 0:
        return [f"{name} must have a min value of 0 (it has {value:f})"]
    return []


def _redirect(path: str, redirect: Any, matches: list[Obj], errors: Errors) -> None:
    if not isinstance(redirect, dict):
        return
    if redirect.get("uri") and redirect.get("prefixRewrite"):
        errors.add(path, "redirect may only specify one of uri or prefix_rewrite")
    if redirect.get("prefixRewrite") and any(
        m.get("uri") and "prefix" not in m["uri"] for m in matches
    ):
        errors.add(
            path, "redirect prefix_rewrite requires all URI matches to use prefix match type"
        )
    targets = ("uri", "prefixRewrite", "authority", "port", "scheme", "derivePort")
    if not any(redirect.get(f) for f in targets):
        errors.add(path, "redirect must specify URI, authority, scheme, or port")
    code = redirect.get("redirectCode")
    if code and not 300 <= int(code) <= 399:
        errors.invalid(
            f"{path}.redirectCode", code, f"{code} is not a valid redirect code, must be 3xx"
        )
    scheme = redirect.get("scheme")
    if scheme and scheme not in ("http", "https"):
        errors.invalid(
            f"{path}.scheme", scheme, 'invalid redirect scheme, must be "http" or "https"'
        )
    if redirect.get("port"):
        errors.invalid(f"{path}.port", redirect["port"], *checks.port(int(redirect["port"])))


def _rewrite(path: str, rewrite: Any, errors: Errors) -> None:
    if not isinstance(rewrite, dict):
        return
    regex_rewrite = rewrite.get("uriRegexRewrite")
    if rewrite.get("uri") and regex_rewrite:
        errors.add(path, "rewrite may only contain one of URI or UriRegexRewrite")
    if not rewrite.get("uri") and not regex_rewrite and not rewrite.get("authority"):
        errors.add(path, "rewrite must specify at least one of URI, UriRegexRewrite, or authority")
    if isinstance(regex_rewrite, dict):
        if not regex_rewrite.get("match") or not regex_rewrite.get("rewrite"):
            errors.add(
                f"{path}.uriRegexRewrite",
                "UriRegexRewrite requires both Rewrite and Match fields to be specified",
            )
        else:
            errors.invalid(
                f"{path}.uriRegexRewrite.match",
                regex_rewrite["match"],
                *checks.regex(regex_rewrite["match"]),
            )


def _direct_response(path: str, response: Any, errors: Errors) -> None:
    if not isinstance(response, dict):
        return
    status = int(response.get("status", 0))
    if not 200 <= status <= 599:
        errors.invalid(f"{path}.status", status, f"HTTP status {status} is not in range 200-599")
    body = response.get("body") or {}
    size = len(str(body.get("string") or body.get("bytes") or ""))
    if size > 1024 * 1024:
        errors.add(
            f"{path}.body",
            "large direct_responses may impact control plane performance, must be less than 1MB",
        )


def _cors(path: str, policy: Any, errors: Errors) -> None:
    if not isinstance(policy, dict):
        return
    for i, origin in enumerate(policy.get("allowOrigins") or []):
        value = next((origin.get(k) for k in ("exact", "prefix", "regex") if k in origin), "")
        if not value:
            errors.invalid(
                f"{path}.allowOrigins[{i}]",
                value,
                f"'{value}' is not a valid match type for CORS allow origins",
            )
        _string_match(f"{path}.allowOrigins[{i}]", origin, errors)
    for i, method in enumerate(policy.get("allowMethods") or []):
        if method not in _CORS_METHODS:
            errors.invalid(
                f"{path}.allowMethods[{i}]", method, f'"{method}" is not a supported HTTP method'
            )
    if "maxAge" in policy:
        errors.invalid(f"{path}.maxAge", policy["maxAge"], *checks.duration(policy["maxAge"]))


def _l4_route(path: str, route: Obj, kind: str, errors: Errors) -> None:
    for j, match in enumerate(route.get("match") or []):
        for k, subnet in enumerate(match.get("destinationSubnets") or []):
            errors.invalid(
                f"{path}.match[{j}].destinationSubnets[{k}]", subnet, *checks.ip_or_cidr(subnet)
            )
        if match.get("port"):
            errors.invalid(f"{path}.match[{j}].port", match["port"], *checks.port(match["port"]))
        labels = match.get("sourceLabels") or {}
        errors.invalid(f"{path}.match[{j}].sourceLabels", labels, *checks.selector_labels(labels))
    destinations = route.get("route") or []
    if not destinations:
        errors.add(f"{path}.route", f"Required value: {kind} route is required")
    for j, dest in enumerate(destinations):
        _destination(f"{path}.route[{j}].destination", dest.get("destination"), errors)
    _weights(f"{path}.route", destinations, errors)


def _tls_route(path: str, route: Obj, errors: Errors) -> None:
    matches = route.get("match") or []
    if not matches:
        errors.add(
            f"{path}.match", "Required value: TLS route must have at least one match condition"
        )
    for j, match in enumerate(matches):
        sni = match.get("sniHosts") or []
        if not sni:
            errors.add(
                f"{path}.match[{j}].sniHosts",
                "Required value: TLS match must have at least one SNI host",
            )
        for k, host in enumerate(sni):
            errors.invalid(f"{path}.match[{j}].sniHosts[{k}]", host, *checks.wildcard_domain(host))
    _l4_route(
        path,
        {**route, "match": [{k: v for k, v in m.items() if k != "sniHosts"} for m in matches]},
        "TLS",
        errors,
    )


RULES: dict[tuple[str, str], Rules] = {(GROUP, "VirtualService"): virtual_service}
