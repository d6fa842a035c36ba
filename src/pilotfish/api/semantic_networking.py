"""Istio's webhook rules for networking.istio.io: VirtualService, DestinationRule,
Gateway, ServiceEntry, WorkloadEntry, Sidecar (pkg/config/validation)."""

from __future__ import annotations

from typing import Any

from pilotfish.api import checks
from pilotfish.api.semantic import Errors, Obj, Rules

GROUP = "networking.istio.io"
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


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _namespace(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


# --- VirtualService -----------------------------------------------------------


def virtual_service(obj: Obj, errors: Errors) -> None:
    spec = _spec(obj)
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
    for i, route in enumerate(spec.get("tcp") or []):
        _l4_route(f"spec.tcp[{i}]", route, "TCP", errors)
    for i, route in enumerate(spec.get("tls") or []):
        _tls_route(f"spec.tls[{i}]", route, errors)
    _export_to(spec.get("exportTo") or [], _namespace(obj), errors)


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
    if "mirror" in route:
        _destination(f"{path}.mirror", route["mirror"], errors)
    if "mirrorPercent" in route:
        errors.invalid(
            f"{path}.mirrorPercent", route["mirrorPercent"], *checks.percent(route["mirrorPercent"])
        )
    value = (route.get("mirrorPercentage") or {}).get("value")
    if value is not None:
        errors.invalid(f"{path}.mirrorPercentage.value", value, *checks.percent(value))
    for i, mirror in enumerate(route.get("mirrors") or []):
        _destination(f"{path}.mirrors[{i}].destination", mirror.get("destination"), errors)
        share = (mirror.get("percentage") or {}).get("value")
        if share is not None:
            errors.invalid(f"{path}.mirrors[{i}].percentage.value", share, *checks.percent(share))


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


def _export_to(export_to: list[str], namespace: str, errors: Errors) -> None:
    seen: set[str] = set()
    for i, entry in enumerate(export_to):
        key = namespace if entry == "." else entry
        if key in seen:
            errors.invalid(
                f"spec.exportTo[{i}]", entry, f"duplicate entries in exportTo for entry {entry}"
            )
        elif entry not in (".", "*", "~") and not checks.is_istio_label(entry):
            errors.invalid(
                f"spec.exportTo[{i}]",
                entry,
                f"only .,*, or a valid DNS 1123 label is allowed as exportTo entry, found {entry}",
            )
        seen.add(key)
    if "*" in seen and len(export_to) > 1:
        errors.add(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        )


# --- DestinationRule ----------------------------------------------------------


def destination_rule(obj: Obj, errors: Errors) -> None:
    spec = _spec(obj)
    host = str(spec.get("host", ""))
    errors.invalid("spec.host", host, *checks.wildcard_domain(host))
    _traffic_policy("spec.trafficPolicy", spec.get("trafficPolicy"), errors)
    names: set[str] = set()
    for i, subset in enumerate(spec.get("subsets") or []):
        path, name = f"spec.subsets[{i}]", str(subset.get("name", ""))
        if name in names:
            errors.invalid(f"{path}.name", name, f"duplicate subset names: {name}")
        names.add(name)
        if not checks.is_istio_label(name):
            errors.invalid(f"{path}.name", name, f"subset name is invalid: {name}")
        labels = subset.get("labels") or {}
        errors.invalid(f"{path}.labels", labels, *checks.selector_labels(labels))
        _traffic_policy(f"{path}.trafficPolicy", subset.get("trafficPolicy"), errors)
    _export_to(spec.get("exportTo") or [], _namespace(obj), errors)


def _traffic_policy(path: str, policy: Any, errors: Errors) -> None:
    if not isinstance(policy, dict):
        return
    if not policy:
        errors.add(path, "traffic policy must have at least one field")
        return
    if policy.get("tunnel") and policy.get("proxyProtocol"):
        errors.add(path, "tunnel and proxyProtocol must not be set together")
    _outlier(f"{path}.outlierDetection", policy.get("outlierDetection"), errors)
    _connection_pool(f"{path}.connectionPool", policy.get("connectionPool"), errors)
    _load_balancer(f"{path}.loadBalancer", policy.get("loadBalancer"), errors)
    _client_tls(f"{path}.tls", policy.get("tls"), errors)
    for i, port_policy in enumerate(policy.get("portLevelSettings") or []):
        port_path = f"{path}.portLevelSettings[{i}]"
        if not port_policy.get("port"):
            errors.add(
                f"{port_path}.port", "Required value: portTrafficPolicy must have valid port"
            )
        rest = {k: v for k, v in port_policy.items() if k != "port"}
        if not rest:
            errors.add(port_path, "port traffic policy must have at least one field")
        else:
            _traffic_policy(port_path, rest, errors)


def _outlier(path: str, outlier: Any, errors: Errors) -> None:
    if not isinstance(outlier, dict):
        return
    for field in ("baseEjectionTime", "interval"):
        if field in outlier:
            errors.invalid(f"{path}.{field}", outlier[field], *checks.duration(outlier[field]))
    if outlier.get("consecutiveLocalOriginFailures") and not outlier.get(
        "splitExternalLocalOriginErrors"
    ):
        errors.add(
            path,
            "outlier detection consecutive local origin failures is specified, "
            "but split external local origin errors is set to false",
        )
    for field in ("maxEjectionPercent", "minHealthPercent"):
        if field in outlier:
            errors.invalid(f"{path}.{field}", outlier[field], *checks.percent(outlier[field]))


def _connection_pool(path: str, pool: Any, errors: Errors) -> None:
    if not isinstance(pool, dict):
        return
    if not pool.get("http") and not pool.get("tcp"):
        errors.add(path, "connection pool must have at least one field")
    http, tcp = pool.get("http") or {}, pool.get("tcp") or {}
    for section, values in (("http", http), ("tcp", tcp)):
        for field, value in values.items():
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                errors.invalid(f"{path}.{section}.{field}", value, "must be non-negative")
    if http.get("h2UpgradePolicy") == "UPGRADE" and http.get("useClientProtocol"):
        errors.add(
            f"{path}.http", "use client protocol must not be true when H2UpgradePolicy is UPGRADE"
        )
    keepalive = http.get("http2KeepAlive")
    if isinstance(keepalive, dict):
        for field in ("interval", "timeout"):
            if field not in keepalive:
                errors.add(
                    f"{path}.http.http2KeepAlive.{field}",
                    f"Required value: http2 keepalive {field} is required",
                )
    for field in ("connectTimeout", "maxConnectionDuration"):
        if field in tcp:
            errors.invalid(f"{path}.tcp.{field}", tcp[field], *checks.duration(tcp[field]))


def _load_balancer(path: str, lb: Any, errors: Errors) -> None:
    if not isinstance(lb, dict):
        return
    hashing = lb.get("consistentHash") or {}
    cookie = hashing.get("httpCookie")
    if isinstance(cookie, dict) and not cookie.get("name"):
        errors.add(
            f"{path}.consistentHash.httpCookie.name", "Required value: name required for HttpCookie"
        )
    if hashing.get("minimumRingSize") and (hashing.get("ringHash") or hashing.get("maglev")):
        errors.add(
            f"{path}.consistentHash",
            "only one of MinimumRingSize or Maglev/Ringhash can be specified",
        )
    maglev = hashing.get("maglev")
    if isinstance(maglev, dict):
        size = int(maglev.get("tableSize", 0))
        if size == 0 or size >= 5000011 or not _is_prime(size):
            errors.invalid(
                f"{path}.consistentHash.maglev.tableSize",
                size,
                "tableSize must be a prime number less than 5000011 for maglev",
            )
    if lb.get("localityLbSetting") and lb.get("zoneAwareLbSetting"):
        errors.add(path, "only one of localityLbSetting and zoneAwareLbSetting can be set")
    warmup = lb.get("warmup")
    if isinstance(warmup, dict) and "duration" in warmup:
        errors.invalid(
            f"{path}.warmup.duration", warmup["duration"], *checks.duration(warmup["duration"])
        )


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % f for f in range(2, int(n**0.5) + 1))


def _client_tls(path: str, tls: Any, errors: Errors) -> None:
    if not isinstance(tls, dict):
        return
    mode = tls.get("mode", "DISABLE")
    certs = ("clientCertificate", "privateKey", "caCertificates")
    if mode == "ISTIO_MUTUAL":
        for field in (*certs, "credentialName"):
            if tls.get(field):
                errors.add(f"{path}.{field}", "Forbidden: cannot be set when mode is ISTIO_MUTUAL")
    if mode == "MUTUAL" and not tls.get("credentialName"):
        for field in certs[:2]:
            if not tls.get(field):
                errors.add(f"{path}.{field}", f"Required value: {field} is required for mutual TLS")


# --- Gateway ------------------------------------------------------------------


def gateway(obj: Obj, errors: Errors) -> None:
    name = str((obj.get("metadata") or {}).get("name", ""))
    if not checks.is_istio_label(name):
        errors.invalid("metadata.name", name, f'invalid gateway name: "{name}"')
    servers = _spec(obj).get("servers") or []
    if not servers:
        errors.add("spec.servers", "Required value: gateway must have at least one server")
    port_names: set[str] = set()
    for i, server in enumerate(servers):
        path = f"spec.servers[{i}]"
        _server(path, server, errors)
        port_name = str((server.get("port") or {}).get("name", ""))
        if port_name and port_name in port_names:
            errors.invalid(
                f"{path}.port.name",
                port_name,
                f"port names in servers must be unique: duplicate name {port_name}",
            )
        port_names.add(port_name)


def _server(path: str, server: Obj, errors: Errors) -> None:
    hosts = server.get("hosts") or []
    if not hosts:
        errors.add(f"{path}.hosts", "Required value: server config must contain at least one host")
    for j, host in enumerate(hosts):
        errors.invalid(f"{path}.hosts[{j}]", host, *_namespaced_host(host, gateway=True))
    port = server.get("port")
    if not isinstance(port, dict):
        errors.add(f"{path}.port", "Required value: port is required")
        return
    proto = str(port.get("protocol", ""))
    errors.invalid(f"{path}.port.protocol", proto, *checks.protocol(proto))
    bind = str(server.get("bind", ""))
    if not bind.startswith("unix://") or port.get("number"):
        errors.invalid(
            f"{path}.port.number", port.get("number", 0), *checks.port(int(port.get("number", 0)))
        )
    if not port.get("name"):
        errors.add(f"{path}.port.name", "Required value: port name must be set")
    tls, is_tls = server.get("tls"), proto.upper() in ("HTTPS", "TLS")
    if is_tls and not tls:
        errors.add(
            f"{path}.tls", "Required value: server must have TLS settings for HTTPS/TLS protocols"
        )
    elif not is_tls and tls and not (proto.upper() == "HTTP" and set(tls) <= {"httpsRedirect"}):
        errors.add(f"{path}.tls", "server cannot have TLS settings for non HTTPS/TLS ports")
    if isinstance(tls, dict):
        _server_tls(f"{path}.tls", tls, errors)


def _server_tls(path: str, tls: Obj, errors: Errors) -> None:
    mode = tls.get("mode", "PASSTHROUGH")
    sources = sum(
        bool(tls.get(f)) for f in ("credentialName", "credentialNames", "tlsCertificates")
    )
    sources += bool(tls.get("serverCertificate") and tls.get("privateKey"))
    if sources > 1:
        errors.add(
            path,
            "only one of credential_name, credential_names, server_certificate/private_key, "
            "tls_certificates should be specified",
        )
    if mode == "ISTIO_MUTUAL":
        for field in ("serverCertificate", "privateKey", "caCertificates", "credentialName"):
            if tls.get(field):
                errors.add(f"{path}.{field}", f"ISTIO_MUTUAL TLS cannot have associated {field}")
        return
    if (
        mode not in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")
        or tls.get("credentialName")
        or tls.get("credentialNames")
    ):
        return
    label = "SIMPLE TLS" if mode == "SIMPLE" else "MUTUAL TLS"
    if mode != "SIMPLE" and not tls.get("caCertificates"):
        errors.add(f"{path}.caCertificates", f"Required value: {label} requires a client CA bundle")
    if not tls.get("tlsCertificates"):
        if not tls.get("serverCertificate"):
            errors.add(
                f"{path}.serverCertificate",
                f"Required value: {label} requires a server certificate",
            )
        if not tls.get("privateKey"):
            errors.add(f"{path}.privateKey", f"Required value: {label} requires a private key")


def _namespaced_host(host: str, gateway: bool) -> list[str]:
    """`namespace/dnsName` (Sidecar) or optionally so (Gateway); no partial wildcards."""
    namespace, slash, name = host.partition("/")
    if not slash:
        if not gateway:
            return ["host must be of form namespace/dnsName"]
        namespace, name = "*", host
    if not namespace or not name:
        return ["config namespace and dnsName in host entry cannot be empty"]
    bare = namespace.lstrip("~")
    if bare not in ("", "*", ".") and not checks.is_istio_label(bare):
        return [f'invalid namespace value "{namespace}" in {"gateway" if gateway else "sidecar"}']
    if name != "*" and "." not in name:
        return ["short names (non FQDN) are not allowed"]
    problems = [] if gateway and checks.is_ip(name) else checks.wildcard_domain(name)
    if "*" in name and name != "*" and not name.startswith("*."):
        problems.append(f'partial wildcard "{name}" not allowed')
    return problems


# --- ServiceEntry, WorkloadEntry, Sidecar ---------------------------------------


def service_entry(obj: Obj, errors: Errors) -> None:
    spec = _spec(obj)
    resolution = spec.get("resolution", "NONE")
    for i, host in enumerate(spec.get("hosts") or []):
        problems = checks.wildcard_domain(host) if host != "*" else []
        errors.invalid(f"spec.hosts[{i}]", host, *problems)
        if (
            resolution in ("DNS", "DNS_ROUND_ROBIN")
            and not spec.get("endpoints")
            and checks.fqdn(host.lstrip("*."))
        ):
            errors.invalid(
                f"spec.hosts[{i}]",
                host,
                "hosts must be FQDN or contain only prefix wildcards "
                f"if no endpoints are provided for resolution mode {resolution}",
            )
    for i, address in enumerate(spec.get("addresses") or []):
        errors.invalid(f"spec.addresses[{i}]", address, *checks.ip_or_cidr(address))
    for i, port in enumerate(spec.get("ports") or []):
        errors.invalid(
            f"spec.ports[{i}].name",
            port.get("name", ""),
            *checks.port_name(str(port.get("name", ""))),
        )
        if port.get("protocol"):
            errors.invalid(
                f"spec.ports[{i}].protocol", port["protocol"], *checks.protocol(port["protocol"])
            )
    for i, endpoint in enumerate(spec.get("endpoints") or []):
        _endpoint_address(
            f"spec.endpoints[{i}].address", endpoint.get("address"), resolution, errors
        )
    _export_to(spec.get("exportTo") or [], _namespace(obj), errors)


def _endpoint_address(path: str, address: Any, resolution: str, errors: Errors) -> None:
    if not isinstance(address, str) or not address or address.startswith("unix://"):
        return
    if resolution == "STATIC" and not checks.is_ip(address):
        errors.invalid(
            path, address, "endpoint address must be an IP address for STATIC resolution"
        )
    elif resolution != "STATIC" and not checks.is_ip(address):
        errors.invalid(path, address, *checks.fqdn(address))


def workload_entry(obj: Obj, errors: Errors) -> None:
    spec = _spec(obj)
    address = spec.get("address")
    is_host = isinstance(address, str) and address and not address.startswith("unix://")
    if is_host and not checks.is_ip(str(address)):
        errors.invalid("spec.address", address, *checks.fqdn(str(address)))
    labels = spec.get("labels") or {}
    errors.invalid("spec.labels", labels, *checks.selector_labels(labels))
    for name, number in (spec.get("ports") or {}).items():
        errors.invalid(f"spec.ports[{name}]", number, *checks.port(int(number)))


def sidecar(obj: Obj, errors: Errors) -> None:
    spec = _spec(obj)
    if not any(
        spec.get(f) for f in ("egress", "ingress", "outboundTrafficPolicy", "inboundConnectionPool")
    ):
        errors.add("spec", "sidecar: empty configuration provided")
    selector = (spec.get("workloadSelector") or {}).get("labels") or {}
    for key, value in selector.items():
        if "*" in key or "*" in value:
            errors.invalid(
                "spec.workloadSelector.labels",
                f"{key}={value}",
                "wildcard is not supported in selector",
            )
    _sidecar_ingress(spec.get("ingress") or [], errors)
    _sidecar_egress(spec.get("egress") or [], errors)
    policy = spec.get("outboundTrafficPolicy") or {}
    if policy.get("egressProxy") and policy.get("mode", "REGISTRY_ONLY") != "ALLOW_ANY":
        errors.add(
            "spec.outboundTrafficPolicy.egressProxy",
            "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
        )


def _sidecar_ingress(ingress: list[Obj], errors: Errors) -> None:
    numbers: set[int] = set()
    for i, listener in enumerate(ingress):
        path, port = f"spec.ingress[{i}]", listener.get("port")
        if not isinstance(port, dict):
            errors.add(
                f"{path}.port", "Required value: sidecar: port is required for ingress listeners"
            )
            continue
        _sidecar_port(f"{path}.port", port, errors)
        if port.get("number") in numbers:
            errors.invalid(
                f"{path}.port.number",
                port.get("number"),
                "sidecar: ports on IP bound listeners must be unique",
            )
        numbers.add(int(port.get("number", 0)))
        if listener.get("bind"):
            errors.invalid(
                f"{path}.bind",
                listener["bind"],
                *(
                    []
                    if checks.is_ip(listener["bind"])
                    else [f"{listener['bind']} is not a valid IP"]
                ),
            )


def _sidecar_egress(egress: list[Obj], errors: Errors) -> None:
    numbers: set[int] = set()
    for i, listener in enumerate(egress):
        path, port = f"spec.egress[{i}]", listener.get("port")
        if port is None and i != len(egress) - 1:
            errors.add(
                path,
                "sidecar: the egress listener with empty port should be the last listener "
                "in the list",
            )
        if isinstance(port, dict) and port.get("number"):
            _sidecar_port(f"{path}.port", port, errors)
            if port["number"] in numbers:
                errors.invalid(
                    f"{path}.port.number",
                    port["number"],
                    "sidecar: ports on IP bound listeners must be unique",
                )
            numbers.add(int(port["number"]))
        hosts = listener.get("hosts") or []
        if not hosts:
            errors.add(
                f"{path}.hosts",
                "Required value: sidecar: egress listener must contain at least one host",
            )
        for j, host in enumerate(hosts):
            errors.invalid(f"{path}.hosts[{j}]", host, *_namespaced_host(host, gateway=False))


def _sidecar_port(path: str, port: Obj, errors: Errors) -> None:
    if port.get("name"):
        errors.invalid(f"{path}.name", port["name"], *checks.port_name(str(port["name"])))
    if port.get("protocol"):
        errors.invalid(
            f"{path}.protocol", port["protocol"], *checks.protocol(str(port["protocol"]))
        )
    errors.invalid(
        f"{path}.number", port.get("number", 0), *checks.port(int(port.get("number", 0)))
    )


RULES: dict[tuple[str, str], Rules] = {
    (GROUP, "VirtualService"): virtual_service,
    (GROUP, "DestinationRule"): destination_rule,
    (GROUP, "Gateway"): gateway,
    (GROUP, "ServiceEntry"): service_entry,
    (GROUP, "WorkloadEntry"): workload_entry,
    (GROUP, "Sidecar"): sidecar,
}
