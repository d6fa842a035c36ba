"""Analyzers of VirtualServices (Istio's analyzers/virtualservice)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pilotfish.analysis.config import (
    MESH_GATEWAY,
    NETWORKING,
    SECURITY,
    Config,
    export_scope,
    full_name,
    hosts_match,
    items,
    iter_routes,
    mapping,
    namespace_of,
    service_export,
    spec,
    to_fqdn,
    visible_from,
)
from pilotfish.analysis.messages import Message, new
from pilotfish.objects import Obj

_CLAIM_PREFIX = "@request.auth.claims."


def conflicting_mesh_gateway_hosts(config: Config) -> list[Message]:
    """IST0109: two VirtualServices bound to the mesh define one host, seen from
    one namespace; which routes a sidecar uses is then undefined."""
    by_host: dict[tuple[str, str], list[Obj]] = {}
    for vs in config.of(NETWORKING, "VirtualService"):
        gateways = items(spec(vs).get("gateways"))
        if gateways and MESH_GATEWAY not in gateways:
            continue
        namespace = namespace_of(vs)
        for scope in sorted(export_scope(items(spec(vs).get("exportTo")), namespace)):
            for host in items(spec(vs).get("hosts")):
                by_host.setdefault((scope, to_fqdn(namespace, str(host))), []).append(vs)
    out, reported = [], set()
    for (scope, host), found in sorted(by_host.items()):
        if scope != "*":
            found = found + [
                vs
                for (other_scope, other), more in sorted(by_host.items())
                if other_scope == "*" and hosts_match(host, other)
                for vs in more
            ]
        if len(found) < 2:
            continue
        names = ",".join(full_name(vs) for vs in found)
        for vs in found:
            if id(vs) not in reported:
                reported.add(id(vs))
                out.append(
                    new("ConflictingMeshGatewayVirtualServiceHosts", vs, names, f"{scope}/{host}")
                )
    return out


def destinations(vs: Obj) -> Iterator[Obj]:
    """Every destination a VirtualService sends to, mirrors included; a route
    entry without one yields {} (Istio reports its empty host)."""
    for _, rule in iter_routes(spec(vs)):
        for weighted in items(rule.get("route")):
            yield mapping(mapping(weighted).get("destination"))
        if isinstance(rule.get("mirror"), dict):
            yield rule["mirror"]
        for mirror in items(rule.get("mirrors")):
            yield mapping(mapping(mirror).get("destination"))


def _checked_namespaces(vs: Obj) -> list[str]:
    """A VirtualService exported to some namespaces must find its hosts from each."""
    scope = export_scope(items(spec(vs).get("exportTo")), namespace_of(vs))
    return [namespace_of(vs)] if "*" in scope else sorted(scope)


def destination_hosts(config: Config) -> list[Message]:
    """IST0101 for a destination host (or host:port) no Service or ServiceEntry
    defines, IST0112 for a multi-port Service named without a port, IST0140
    for a gateway route that skips the subsets the mesh's routes use."""
    out = []
    for vs in config.of(NETWORKING, "VirtualService"):
        for dest in destinations(vs):
            out += _check_destination(config, vs, dest)
    return out + _ingress_subsets(config)


def _ingress_subsets(config: Config) -> list[Message]:
    """A gateway applies only its own VirtualService: the mesh VirtualService's
    subsets for the same host do nothing for requests entering there."""
    mesh_subsets: dict[str, list[Obj]] = {}
    for vs in config.of(NETWORKING, "VirtualService"):
        gateways = items(spec(vs).get("gateways"))
        if gateways and MESH_GATEWAY not in gateways:
            continue
        if any(dest.get("subset") for dest in destinations(vs)):
            for host in items(spec(vs).get("hosts")):
                mesh_subsets.setdefault(to_fqdn(namespace_of(vs), str(host)), []).append(vs)
    out = []
    for vs in config.of(NETWORKING, "VirtualService"):
        gateways = items(spec(vs).get("gateways"))
        if not gateways or MESH_GATEWAY in gateways:
            continue
        for dest in destinations(vs):
            host = to_fqdn(namespace_of(vs), str(dest.get("host") or ""))
            if dest.get("subset") or host not in mesh_subsets:
                continue
            for mesh_vs in mesh_subsets[host]:
                out.append(
                    new("IngressRouteRulesNotAffected", vs, full_name(mesh_vs), full_name(vs))
                )
    return out


def _check_destination(config: Config, vs: Obj, dest: Obj) -> list[Message]:
    host = str(dest.get("host") or "")
    for namespace in _checked_namespaces(vs):
        ports = _service_ports(config, to_fqdn(namespace_of(vs), host), namespace)
        if ports is None:
            return [new("ReferencedResourceNotFound", vs, "host", host)]
        port = mapping(dest.get("port")).get("number")
        if port is None and len(ports) > 1:
            return [new("VirtualServiceDestinationPortSelectorRequired", vs, host, sorted(ports))]
        if port is not None and ports and port not in ports:
            return [new("ReferencedResourceNotFound", vs, "host:port", f"{host}:{port}")]
    return []


def _service_ports(config: Config, host: str, namespace: str) -> list[int] | None:
    """The ports of the service `host` as seen from `namespace`; None if unseen."""
    for svc in config.services_at(host):
        if visible_from(service_export(svc), namespace):
            return _numbers(spec(svc).get("ports"), "port")
    for entry in config.of(NETWORKING, "ServiceEntry"):
        scope = export_scope(items(spec(entry).get("exportTo")), namespace_of(entry))
        if not visible_from(scope, namespace):
            continue
        for h in items(spec(entry).get("hosts")):
            if hosts_match(to_fqdn(namespace_of(entry), str(h)), host):
                return _numbers(spec(entry).get("ports"), "number")
    return None


def _numbers(ports: Any, field: str) -> list[int]:
    return [p[field] for p in items(ports) if isinstance(mapping(p).get(field), int)]


def destination_rules(config: Config) -> list[Message]:
    """IST0101 for a subset that no DestinationRule for the host defines."""
    out = []
    subsets = _Subsets(config)
    for vs in config.of(NETWORKING, "VirtualService"):
        for dest in destinations(vs):
            subset = dest.get("subset")
            host = str(dest.get("host") or "")
            if subset and not subsets.defined(namespace_of(vs), host, str(subset)):
                ref = f"{dest.get('host')}+{subset}"
                out.append(
                    new("ReferencedResourceNotFound", vs, "host+subset in destinationrule", ref)
                )
    return out


_Rule = tuple[str, set[str], list[Any]]  # host (FQDN), namespaces it is visible in, subset names


class _Subsets:
    """The DestinationRules' subsets, read once and found by host: checking
    each destination against every rule made `apply`'s analysis of a mesh of
    1,000 services quadratic (0.7 s of its 1 s)."""

    def __init__(self, config: Config) -> None:
        self.exact: dict[str, list[_Rule]] = {}
        self.wildcard: list[_Rule] = []
        self.all: list[_Rule] = []
        for rule in config.of(NETWORKING, "DestinationRule"):
            namespace = namespace_of(rule)
            host = to_fqdn(namespace, str(spec(rule).get("host") or ""))
            names = [mapping(s).get("name") for s in items(spec(rule).get("subsets"))]
            entry = (host, export_scope(items(spec(rule).get("exportTo")), namespace), names)
            self.all.append(entry)
            if host.startswith("*"):
                self.wildcard.append(entry)
            else:
                self.exact.setdefault(host, []).append(entry)

    def __repr__(self) -> str:
        return f"_Subsets({len(self.all)} rules)"

    def defined(self, namespace: str, host: str, subset: str) -> bool:
        """Whether a rule visible from `namespace` defines `subset` for `host`."""
        fqdn = to_fqdn(namespace, host)
        if fqdn.startswith("*"):
            candidates = self.all
        else:  # a plain host matches only itself and the wildcards that cover it
            candidates = [*self.exact.get(fqdn, []), *self.wildcard]
        return any(
            visible_from(scope, namespace) and hosts_match(rule_host, fqdn) and subset in names
            for rule_host, scope, names in candidates
        )


def gateway_ref(vs: Obj, name: str) -> tuple[str, str]:
    """(namespace, name) of a gateway a VirtualService names, `ns/name` or short."""
    namespace, _, short = name.rpartition("/")
    return (namespace if "/" in name else namespace_of(vs)), short


def gateways(config: Config) -> list[Message]:
    """IST0101 for a gateway that does not exist, IST0132 for a VirtualService
    whose hosts no server of its gateway serves (its routes are never used)."""
    out = []
    for vs in config.of(NETWORKING, "VirtualService"):
        hosts = [str(h) for h in items(spec(vs).get("hosts"))]
        for name in items(spec(vs).get("gateways")):
            if name == MESH_GATEWAY:
                continue
            namespace, short = gateway_ref(vs, str(name))
            gateway = config.find(NETWORKING, "Gateway", namespace, short)
            if gateway is None:
                out.append(new("ReferencedResourceNotFound", vs, "gateway", name))
            if not _served(gateway, hosts, namespace_of(vs)):
                ref = f"{namespace}/{short}" if namespace else short
                out.append(
                    new("VirtualServiceHostNotFoundInGateway", vs, hosts, full_name(vs), ref)
                )
    return out


def _served(gateway: Obj | None, vs_hosts: list[str], vs_namespace: str) -> bool:
    for server in items(spec(gateway or {}).get("servers")):
        for raw in items(mapping(server).get("hosts")):
            host = _gateway_host(str(raw), namespace_of(gateway or {}), vs_namespace)
            if host is not None and any(hosts_match(host, h) for h in vs_hosts):
                return True
    return False


def _gateway_host(raw: str, gateway_namespace: str, vs_namespace: str) -> str | None:
    """A server host `ns/host` counts only for VirtualServices of that namespace
    (`.` the gateway's own, `*` any)."""
    if "/" not in raw:
        return raw
    namespace, _, host = raw.partition("/")
    namespace = gateway_namespace if namespace == "." else namespace
    return host if namespace in ("*", vs_namespace) else None


def jwt_claim_routes(config: Config) -> list[Message]:
    """IST0149: routing on a JWT claim needs a RequestAuthentication on the gateway
    workload, or the claim is never there to match."""
    out = []
    for vs in config.of(NETWORKING, "VirtualService"):
        key = _claim_key(vs)
        if key is None:
            continue
        for name in items(spec(vs).get("gateways")):
            if name == MESH_GATEWAY:
                continue
            gateway = config.find(NETWORKING, "Gateway", *gateway_ref(vs, str(name)))
            if gateway is None:
                continue
            selector = mapping(spec(gateway).get("selector"))
            if not _authenticated(config, selector):
                labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
                out.append(
                    new(
                        "JwtClaimBasedRoutingWithoutRequestAuthN",
                        vs,
                        key,
                        full_name(gateway),
                        labels,
                    )
                )
    return out


def _claim_key(vs: Obj) -> str | None:
    for section, rule in iter_routes(spec(vs)):
        if section != "http":
            continue
        for match in items(rule.get("match")):
            for header in mapping(mapping(match).get("headers")):
                if str(header).startswith(_CLAIM_PREFIX):
                    return str(header)
    return None


def _authenticated(config: Config, gateway_selector: dict[str, Any]) -> bool:
    for ra in config.of(SECURITY, "RequestAuthentication"):
        selector = mapping(mapping(spec(ra).get("selector")).get("matchLabels"))
        if all(gateway_selector.get(k) == v for k, v in selector.items()):
            return True
    return False
