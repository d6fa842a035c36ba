"""The snapshot: config and registry at one moment, indexed once.

    snapshot = build_snapshot(stored_objects, instances)
    snapshot.visible_services(proxy)          # what a proxy may reach
    snapshot.endpoints(service, 9080)         # healthy endpoints of one port
    snapshot.virtual_service_for(proxy, host) # the VirtualService routing a host
    snapshot.destination_rule(proxy, host)    # Istio's lookup order

Building is a pure function of its inputs; lookups are dictionary reads. What
depends on the proxy (exportTo, Sidecar egress) is computed once per
(namespace, Sidecar) and memoised, since every proxy of a namespace without
its own Sidecar sees the same mesh.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from pilotfish.ca.identity import DEFAULT_TRUST_DOMAIN
from pilotfish.model import endpoints as eps
from pilotfish.model.config import (
    DestinationRule,
    Gateway,
    PeerAuthentication,
    Sidecar,
    VirtualService,
    exported,
    labels_match,
    read_destination_rule,
    read_gateway,
    read_peer_authentication,
    read_sidecar,
    read_virtual_service,
)
from pilotfish.model.hosts import MESH_GATEWAY, ROOT_NAMESPACE, covers, is_wildcard, matches
from pilotfish.model.services import service_from_v1, services_from_entry
from pilotfish.model.types import Endpoint, Instance, Labels, Proxy, Service, ServicePort
from pilotfish.objects import Obj

NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"
TELEMETRY = "telemetry.istio.io"
MESH_CONFIG = ("istio-system", "istio")  # Istio's mesh config: ConfigMap istio, key `mesh`
MESH_KINDS = {  # what a snapshot reads; other kinds do not change what proxies get
    ("", "Service"),
    (NETWORKING, "VirtualService"),
    (NETWORKING, "DestinationRule"),
    (NETWORKING, "Gateway"),
    (NETWORKING, "ServiceEntry"),
    (NETWORKING, "WorkloadEntry"),
    (NETWORKING, "Sidecar"),
    (SECURITY, "AuthorizationPolicy"),
    (SECURITY, "PeerAuthentication"),
    (SECURITY, "RequestAuthentication"),
    ("", "ConfigMap"),  # only istio-system/istio is read: the mesh config
    ("", "Secret"),  # served over SDS as `kubernetes://NAME` (translate/secrets.py)
    (TELEMETRY, "Telemetry"),
}
EndpointKey = tuple[str, str, int]  # (hostname, namespace, port)


def is_mesh_object(obj: Obj) -> bool:
    """Whether a snapshot reads `obj`: a mesh kind, and of ConfigMaps only the
    mesh config, so that other ConfigMaps push nothing to the proxies."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    if (group, obj.get("kind")) not in MESH_KINDS:
        return False
    if obj.get("kind") != "ConfigMap":
        return True
    meta = obj.get("metadata") or {}
    return (meta.get("namespace"), meta.get("name")) == MESH_CONFIG


@dataclass(frozen=True)
class ProxyView:
    """What proxies of one namespace under one Sidecar may see."""

    services: tuple[Service, ...]  # one per host name, sorted by host name
    by_host: Mapping[str, Service]
    virtual_services: tuple[VirtualService, ...]  # bound to the mesh, visible, allowed
    vs_by_host: Mapping[str, VirtualService]  # exact hosts, the oldest VirtualService wins
    vs_wildcards: tuple[tuple[str, VirtualService], ...]  # most specific first


@dataclass(frozen=True)
class Snapshot:
    services: tuple[Service, ...] = ()
    instances: tuple[Instance, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()
    authorization_policies: tuple[Obj, ...] = ()  # as stored, oldest first
    mesh_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    peer_authentications: tuple[PeerAuthentication, ...] = ()  # oldest first
    trust_domain: str = DEFAULT_TRUST_DOMAIN  # of the SPIFFE identities clusters expect
    request_authentications: tuple[Obj, ...] = ()  # oldest first
    telemetries: tuple[Obj, ...] = ()  # Telemetry objects as stored, oldest first
    jwks: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # by jwksUri
    # Secrets by (namespace, name), as stored (data base64): what credentialName names.
    secrets: Mapping[tuple[str, str], Obj] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    endpoint_index: Mapping[EndpointKey, tuple[Endpoint, ...]] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    _index: _Index = field(init=False, repr=False, compare=False)
    _views: dict[tuple[str, str], ProxyView] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _Index.of(self))

    def __repr__(self) -> str:
        return (
            f"<Snapshot {len(self.services)} services, {len(self.instances)} instances, "
            f"{len(self.virtual_services)} VirtualServices, "
            f"{len(self.destination_rules)} DestinationRules>"
        )

    # -- what a proxy sees -------------------------------------------------

    def view(self, proxy: Proxy) -> ProxyView:
        sidecar = self.sidecar_for(proxy)
        key = (proxy.namespace, f"{sidecar.namespace}/{sidecar.name}" if sidecar else "")
        found = self._views.get(key)
        if found is None:
            found = self._index.view(proxy.namespace, sidecar)
            self._views[key] = found
        return found

    def visible_services(self, proxy: Proxy) -> tuple[Service, ...]:
        return self.view(proxy).services

    def service_for(self, proxy: Proxy, hostname: str) -> Service | None:
        return self.view(proxy).by_host.get(hostname)

    def sidecar_for(self, proxy: Proxy) -> Sidecar | None:
        """A Sidecar selecting the workload, else its namespace's default, else
        the root namespace's default (Istio's order)."""
        local = self._index.sidecars.get(proxy.namespace, ())
        for sidecar in local:
            if sidecar.selector and labels_match(sidecar.selector, proxy.labels):
                return sidecar
        for sidecar in (*local, *self._index.sidecars.get(ROOT_NAMESPACE, ())):
            if sidecar.selector is None:
                return sidecar
        return None

    def endpoints(self, service: Service, port: int) -> tuple[Endpoint, ...]:
        return self.endpoint_index.get((service.hostname, service.namespace, port), ())

    def own_instances(self, proxy: Proxy) -> tuple[Instance, ...]:
        """The instances a sidecar fronts: by instance name when the proxy has
        one (and then none if that name is not registered: on one host all
        instances of a workload share an address, and a sidecar whose own
        instance is gone must not get the others' inbound ports to bind),
        else by workload and address."""
        name = proxy.instance_name
        if name:
            return self._index.instances_by_name.get((proxy.namespace, name), ())
        local = self._index.instances.get(proxy.namespace, ())
        return tuple(i for i in local if i.workload == proxy.workload and i.address == proxy.ip)

    def services_at(self, namespace: str, address: str, port: int) -> tuple[Service, ...]:
        """The services of `namespace` with `address:port` among their endpoints."""
        return self._index.served.get((namespace, address, port), ())

    # -- routing config ------------------------------------------------------

    def virtual_service_for(self, proxy: Proxy, hostname: str) -> VirtualService | None:
        """The VirtualService routing `hostname` for a sidecar: an exact host
        first, else the most specific wildcard; the oldest wins a tie."""
        view = self.view(proxy)
        exact = view.vs_by_host.get(hostname)
        if exact is not None:
            return exact
        return next((vs for h, vs in view.vs_wildcards if covers(h, hostname)), None)

    def gateway_virtual_services(self, proxy: Proxy, gateway: str) -> tuple[VirtualService, ...]:
        """VirtualServices bound to `gateway` (`ns/name`) and exported to the
        gateway proxy's namespace, oldest first."""
        return tuple(
            vs
            for vs in self._index.by_gateway.get(gateway, ())
            if exported(vs.export_to, proxy.namespace)
        )

    def delegate(self, name: str, namespace: str, root_namespace: str) -> VirtualService | None:
        vs = self._index.by_key.get(f"{namespace}/{name}")
        if vs is None or vs.hosts or not exported(vs.export_to, root_namespace):
            return None
        return vs

    def gateways_for(self, proxy: Proxy) -> tuple[Gateway, ...]:
        """Gateways whose selector picks this proxy, in any namespace."""
        return tuple(
            g for g in self.gateways if g.selector and labels_match(g.selector, proxy.labels)
        )

    @property
    def failover_labels(self) -> tuple[str, ...]:
        """The labels any `failoverPriority` names (the mesh's or a DestinationRule's)."""
        return self._index.failover_labels

    def label_scope(self, labels: Labels) -> tuple[bool, ...]:
        """Which of the config's label selectors (Sidecar and Gateway
        selectors, sourceLabels) pick `labels`: all that translation can learn
        of a proxy's labels, so proxies alike here get the same routes."""
        return tuple(labels_match(s, labels) for s in self._index.label_selectors)

    def destination_rule(self, proxy: Proxy, hostname: str) -> DestinationRule | None:
        service = self.service_for(proxy, hostname)
        return self._index.destination_rule(
            proxy.namespace, hostname, service.namespace if service else ""
        )


@dataclass(frozen=True)
class _Index:
    by_host: Mapping[str, tuple[Service, ...]]
    hosts_by_namespace: Mapping[str, frozenset[str]]  # the hosts each namespace has services of
    by_key: Mapping[str, VirtualService]
    mesh_vs: tuple[VirtualService, ...]
    by_gateway: Mapping[str, tuple[VirtualService, ...]]
    rules: Mapping[str, Mapping[str, DestinationRule]]  # namespace -> host -> merged rule
    rule_wildcards: Mapping[str, tuple[str, ...]]  # namespace -> its rules' wildcard hosts
    sidecars: Mapping[str, tuple[Sidecar, ...]]
    instances: Mapping[str, tuple[Instance, ...]]
    instances_by_name: Mapping[tuple[str, str], tuple[Instance, ...]]
    served: Mapping[tuple[str, str, int], tuple[Service, ...]]  # (ns, address, port)
    label_selectors: tuple[Labels, ...]  # every non-empty one the config holds
    failover_labels: tuple[str, ...]  # labels any localityLbSetting.failoverPriority names

    @classmethod
    def of(cls, snap: Snapshot) -> _Index:
        by_host: dict[str, list[Service]] = defaultdict(list)
        for s in snap.services:
            by_host[s.hostname].append(s)
        rules = _merge_rules(snap.destination_rules)
        by_gateway: dict[str, list[VirtualService]] = defaultdict(list)
        for vs in snap.virtual_services:
            for gw in _gateway_names(vs):
                by_gateway[gw].append(vs)
        sidecars: dict[str, list[Sidecar]] = defaultdict(list)
        for sc in snap.sidecars:
            sidecars[sc.namespace].append(sc)
        instances: dict[str, list[Instance]] = defaultdict(list)
        by_name: dict[tuple[str, str], list[Instance]] = defaultdict(list)
        for i in snap.instances:
            instances[i.namespace].append(i)
            by_name[(i.namespace, i.name)].append(i)
        return cls(
            by_host={h: tuple(v) for h, v in by_host.items()},
            hosts_by_namespace=_hosts_by_namespace(snap.services),
            by_key={vs.key: vs for vs in snap.virtual_services},
            mesh_vs=tuple(
                vs for vs in snap.virtual_services if vs.hosts and MESH_GATEWAY in vs.gateways
            ),
            by_gateway={g: tuple(v) for g, v in by_gateway.items()},
            rules=rules,
            rule_wildcards={
                ns: tuple(h for h in by_ns if is_wildcard(h)) for ns, by_ns in rules.items()
            },
            sidecars={n: tuple(v) for n, v in sidecars.items()},
            instances={n: tuple(v) for n, v in instances.items()},
            instances_by_name={k: tuple(v) for k, v in by_name.items()},
            served=_served(snap),
            label_selectors=_label_selectors(snap),
            failover_labels=_failover_labels(snap),
        )

    def view(self, namespace: str, sidecar: Sidecar | None) -> ProxyView:
        egress = sidecar.egress if sidecar and sidecar.egress else None
        chosen: dict[str, Service] = {}
        for host in self._candidate_hosts(egress, namespace):
            visible = [
                s
                for s in self.by_host[host]
                if exported(s.export_to, namespace)
                and _allowed(egress, namespace, s.namespace, host)
            ]
            if visible:
                own = [s for s in visible if s.namespace == namespace]
                chosen[host] = (own or visible)[0]
        vses = tuple(
            vs
            for vs in self.mesh_vs
            if exported(vs.export_to, namespace)
            and any(_allowed(egress, namespace, vs.namespace, h) for h in vs.hosts)
        )
        by_host: dict[str, VirtualService] = {}
        for vs in vses:
            for h in vs.hosts:
                if not is_wildcard(h):
                    by_host.setdefault(h, vs)
        wild = [(h, vs) for vs in vses for h in vs.hosts if is_wildcard(h)]
        wild.sort(key=lambda pair: -len(pair[0]))  # stable: the oldest wins a tie
        return ProxyView(
            tuple(chosen.values()),
            MappingProxyType(chosen),
            vses,
            MappingProxyType(by_host),
            tuple(wild),
        )

    def _candidate_hosts(
        self, egress: tuple[tuple[str, str], ...] | None, namespace: str
    ) -> list[str]:
        """The hosts a view must check, sorted: all of them, unless the
        Sidecar's egress names only some namespaces (Istio's `./*`): then only
        theirs, since no other namespace's service can pass `_allowed`. A
        mesh of many namespaces builds each view from its own few services."""
        if egress is None or any(ns == "*" for ns, _ in egress):
            return sorted(self.by_host)
        spaces = {namespace if ns == "." else ns for ns, _ in egress}
        return sorted(set().union(*(self.hosts_by_namespace.get(ns, ()) for ns in spaces)))

    def destination_rule(
        self, proxy_ns: str, hostname: str, service_ns: str
    ) -> DestinationRule | None:
        """Istio's order: the proxy's namespace, the service's, the root's; only
        the first two's rules need not be exported."""
        local = self._most_specific(proxy_ns, hostname)
        if local is not None:
            return local
        for ns in (service_ns, ROOT_NAMESPACE):
            rule = self._most_specific(ns, hostname)
            if rule is not None and exported(rule.export_to, proxy_ns):
                return rule
        return None

    def _most_specific(self, namespace: str, hostname: str) -> DestinationRule | None:
        rules = self.rules.get(namespace, {})
        exact = rules.get(hostname)
        if exact is not None:
            return exact
        wild = [h for h in self.rule_wildcards.get(namespace, ()) if covers(h, hostname)]
        return rules[max(wild, key=len)] if wild else None


def _hosts_by_namespace(services: Iterable[Service]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for service in services:
        found[service.namespace].add(service.hostname)
    return {ns: frozenset(hosts) for ns, hosts in found.items()}


def _served(snap: Snapshot) -> dict[tuple[str, str, int], tuple[Service, ...]]:
    found: dict[tuple[str, str, int], dict[str, Service]] = defaultdict(dict)
    for service in snap.services:
        for port in service.ports:
            for e in snap.endpoints(service, port.port):
                found[(service.namespace, e.address, e.port)].setdefault(service.hostname, service)
    return {k: tuple(v.values()) for k, v in found.items()}


def _label_selectors(snap: Snapshot) -> tuple[Labels, ...]:
    found: list[Labels] = [s.selector for s in snap.sidecars if s.selector]
    found += [g.selector for g in snap.gateways if g.selector]
    found += [p.selector for p in snap.peer_authentications if p.selector]
    for vs in snap.virtual_services:
        for http in vs.http:
            for match in http.get("match") or []:
                if isinstance(match, dict) and match.get("sourceLabels"):
                    found.append(MappingProxyType(dict(match["sourceLabels"])))
    for policy in snap.authorization_policies:  # their selectors pick listeners' filters
        selector = ((policy.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if selector:
            found.append(MappingProxyType(dict(selector)))
    unique = {tuple(sorted(s.items())): s for s in found}
    return tuple(unique[k] for k in sorted(unique))


def _failover_labels(snap: Snapshot) -> tuple[str, ...]:
    """What of a caller's labels its endpoints' priorities can depend on."""
    policies: list[Obj | None] = [{"loadBalancer": dict(snap.mesh_config)}]
    for rule in snap.destination_rules:
        for policy in (rule.traffic_policy, *(s.traffic_policy for s in rule.subsets)):
            policies += [policy, *((policy or {}).get("portLevelSettings") or [])]
    names: set[str] = set()
    for policy in policies:
        setting = ((policy or {}).get("loadBalancer") or {}).get("localityLbSetting") or {}
        names.update(str(p).partition("=")[0] for p in setting.get("failoverPriority") or [])
    return tuple(sorted(names))


def _gateway_names(vs: VirtualService) -> list[str]:
    names = [g for g in vs.gateways if g != MESH_GATEWAY]
    for route in vs.http:
        for match in route.get("match") or []:
            names += [g for g in match.get("gateways") or [] if g != MESH_GATEWAY]
    return list(dict.fromkeys(names))


def _allowed(
    egress: tuple[tuple[str, str], ...] | None, proxy_ns: str, namespace: str, host: str
) -> bool:
    """Whether a Sidecar's egress hosts let a proxy of `proxy_ns` see config
    of `namespace` for `host`; no Sidecar (or no egress) allows everything."""
    if egress is None:
        return True
    return any(
        (ns == "*" or ns == namespace or (ns == "." and namespace == proxy_ns))
        and matches(pattern, host)
        for ns, pattern in egress
    )


def _merge_rules(
    rules: Iterable[DestinationRule],
) -> Mapping[str, Mapping[str, DestinationRule]]:
    """Rules for the same host in one namespace merge as Istio merges them: the
    oldest rule's traffic policy, every subset whose name is not yet taken."""
    merged: dict[str, dict[str, DestinationRule]] = defaultdict(dict)
    for rule in rules:
        seen = merged[rule.namespace].get(rule.host)
        if seen is None:
            merged[rule.namespace][rule.host] = rule
            continue
        names = {s.name for s in seen.subsets}
        extra = tuple(s for s in rule.subsets if s.name not in names)
        merged[rule.namespace][rule.host] = DestinationRule(
            seen.name,
            seen.namespace,
            seen.host,
            seen.traffic_policy or rule.traffic_policy,
            seen.subsets + extra,
            seen.export_to | rule.export_to,
            seen.created,
        )
    return {ns: MappingProxyType(by_host) for ns, by_host in merged.items()}


def services_of(obj: Obj) -> tuple[Service, ...]:
    """The services one Service or ServiceEntry declares."""
    if obj.get("kind") == "Service":
        return (service_from_v1(obj),)
    return tuple(services_from_entry(obj))


ServicesOf = Callable[[Obj], tuple[Service, ...]]


def build_snapshot(
    objects: Iterable[Obj],
    instances: Iterable[Instance] = (),
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    jwks: Mapping[str, str] | None = None,
    services: ServicesOf = services_of,
) -> Snapshot:
    """A snapshot from stored objects (any kinds; others are ignored) and the
    registered instances. Config is ordered oldest first, as Istio orders it
    to settle conflicts. `jwks`: the keys fetched for RequestAuthentication
    jwksUris, by URI. `services`: `services_of`, or a memo of it."""
    by_kind: dict[str, list[Obj]] = defaultdict(list)
    for obj in objects:
        if is_mesh_object(obj):
            by_kind[str(obj["kind"])].append(obj)
    for kind in by_kind:
        by_kind[kind].sort(key=_age)
    live = tuple(sorted(instances, key=lambda i: (i.namespace, i.name, i.address)))
    declaring = (*by_kind["Service"], *by_kind["ServiceEntry"])
    found = tuple(service for obj in declaring for service in services(obj))
    return Snapshot(
        services=found,
        instances=live,
        virtual_services=tuple(map(read_virtual_service, by_kind["VirtualService"])),
        destination_rules=tuple(map(read_destination_rule, by_kind["DestinationRule"])),
        gateways=tuple(map(read_gateway, by_kind["Gateway"])),
        sidecars=tuple(map(read_sidecar, by_kind["Sidecar"])),
        authorization_policies=tuple(by_kind["AuthorizationPolicy"]),
        mesh_config=MappingProxyType(_mesh_config(by_kind["ConfigMap"])),
        peer_authentications=tuple(map(read_peer_authentication, by_kind["PeerAuthentication"])),
        trust_domain=trust_domain,
        request_authentications=tuple(by_kind["RequestAuthentication"]),
        telemetries=tuple(by_kind["Telemetry"]),
        jwks=MappingProxyType(dict(jwks or {})),
        secrets=MappingProxyType(
            {(_ns(o), str(o["metadata"]["name"])): o for o in by_kind["Secret"]}
        ),
        endpoint_index=MappingProxyType(_endpoint_index(by_kind, found, live)),
    )


def _mesh_config(config_maps: Iterable[Obj]) -> Obj:
    """The `mesh` key of ConfigMap istio-system/istio, parsed; {} if absent.
    Not YAML, or not a mapping: {} too (the CA reports it when it starts)."""
    for item in config_maps:  # only the mesh config is a mesh object
        try:
            mesh = yaml.safe_load((item.get("data") or {}).get("mesh") or "")
        except yaml.YAMLError:
            return {}
        return mesh if isinstance(mesh, dict) else {}
    return {}


def _age(obj: Obj) -> tuple[str, str, str]:
    metadata = obj.get("metadata") or {}
    return (
        str(metadata.get("creationTimestamp") or ""),
        str(metadata.get("namespace") or "default"),
        str(metadata.get("name") or ""),
    )


def _endpoint_index(
    by_kind: Mapping[str, list[Obj]], services: tuple[Service, ...], live: tuple[Instance, ...]
) -> dict[EndpointKey, tuple[Endpoint, ...]]:
    workloads = [eps.workload_of_instance(i) for i in live if i.healthy]
    workloads += [eps.workload_of_entry(o) for o in by_kind.get("WorkloadEntry", [])]
    pool = eps.Pool(workloads)
    sources = {("Service", o["metadata"]["name"], _ns(o)): o for o in by_kind.get("Service", [])}
    sources |= {
        ("ServiceEntry", o["metadata"]["name"], _ns(o)): o for o in by_kind.get("ServiceEntry", [])
    }
    index: dict[EndpointKey, tuple[Endpoint, ...]] = {}
    for svc in services:
        kind, _, name = svc.source.partition("/")
        spec: dict[str, Any] = sources[(kind, name, svc.namespace)].get("spec") or {}
        for port in svc.ports:
            key = (svc.hostname, svc.namespace, port.port)
            if kind == "Service":
                chosen = list(pool.selected(spec.get("selector"), svc.namespace))
                index[key] = eps.endpoints_for(port, chosen)
            else:
                index[key] = _entry_endpoints(svc, port, spec, pool)
    return index


def _entry_endpoints(
    svc: Service, port: ServicePort, spec: Obj, pool: eps.Pool
) -> tuple[Endpoint, ...]:
    listed = [eps.workload_of_entry(e, svc.namespace) for e in spec.get("endpoints") or []]
    selector = (spec.get("workloadSelector") or {}).get("labels")
    listed += pool.selected(selector, svc.namespace)
    if not listed and not selector and svc.resolution in ("DNS", "DNS_ROUND_ROBIN"):
        return (eps.dns_endpoint(svc.hostname, port),)
    return eps.endpoints_for(port, listed)


def _ns(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")
