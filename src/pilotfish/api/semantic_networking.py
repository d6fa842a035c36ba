"""Istio's webhook rules for networking.istio.io: DestinationRule, Gateway,
ServiceEntry, WorkloadEntry, Sidecar (pkg/config/validation); VirtualService's
are in semantic_routing, which shares the helpers here."""

from __future__ import annotations

from typing import Any

from pilotfish.api import checks
from pilotfish.api.semantic import Errors, Rules
from pilotfish.api.semantic_locality import locality_lb_setting
from pilotfish.objects import Obj

GROUP = "networking.istio.io"


def spec_of(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def namespace_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def check_export_to(export_to: list[str], namespace: str, errors: Errors) -> None:
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
    spec = spec_of(obj)
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
    check_export_to(spec.get("exportTo") or [], namespace_of(obj), errors)


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
    locality_lb_setting(f"{path}.localityLbSetting", lb.get("localityLbSetting"), errors)
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
    servers = spec_of(obj).get("servers") or []
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
    spec = spec_of(obj)
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
    check_export_to(spec.get("exportTo") or [], namespace_of(obj), errors)


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
    spec = spec_of(obj)
    address = spec.get("address")
    is_host = isinstance(address, str) and address and not address.startswith("unix://")
    if is_host and not checks.is_ip(str(address)):
        errors.invalid("spec.address", address, *checks.fqdn(str(address)))
    labels = spec.get("labels") or {}
    errors.invalid("spec.labels", labels, *checks.selector_labels(labels))
    for name, number in (spec.get("ports") or {}).items():
        errors.invalid(f"spec.ports[{name}]", number, *checks.port(int(number)))


def sidecar(obj: Obj, errors: Errors) -> None:
    spec = spec_of(obj)
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
    (GROUP, "DestinationRule"): destination_rule,
    (GROUP, "Gateway"): gateway,
    (GROUP, "ServiceEntry"): service_entry,
    (GROUP, "WorkloadEntry"): workload_entry,
    (GROUP, "Sidecar"): sidecar,
}
